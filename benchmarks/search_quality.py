"""Search quality and platform overhead, measured through the real platform.

Hartmann6 (BoTorch's test function, minimum -3.32237 on [0, 1]^6) is the trainable:
every trial goes through Ray Tune and our searcher exactly like a training trial, with
the proposal algorithm switched by the space's ``budget.algorithm``:

- ``botorch``: our Ax client with the platform's generation strategy
  (``search.searcher.generation_strategy``): the centre of the space, seeded Sobol
  points up to ``budget.initial_trials`` (default 5, the centre included), then
  BoTorch on a single-task GP with a Matern-5/2 kernel and the dimension-scaled
  lengthscale prior, proposing with qLogNEI (20 restarts from 1024 raw samples); batch
  proposals with pending trials when several slots are free;
- ``random``: uniform random search;
- ``tpe``: Optuna's TPE sampler (ask/tell through the same runner);
- ``botorch-direct`` (optional): the same Ax client in a plain loop without Ray, the
  baseline that shows what going through the platform changes (one at a time only);
- ``ax-fast-direct`` (optional): the plain loop with Ax's stock strategy instead
  (``configure_generation_strategy(method="fast")``, an RBF-kernel GP; the platform's
  strategy before the Matern kernel), to compare the two on the same seeds.

Why Matern-5/2: with the RBF kernel, several seeds stopped in one of Hartmann6's local
minima (regret 0.12-0.6) after 40 trials; the rougher Matern-5/2 kernel leaves fewer
stuck at the same proposal cost. A larger Sobol initialization (12 = 2d) was worse
(fewer model-based trials), input warping cost several times more per proposal, and
Ax's ``method="quality"`` (fully Bayesian SAAS) needs JAX/NumPyro, not installed.
BoTorch's numerics depend on the thread count, so one seed can end in a different
basin on another machine: read the medians, not single seeds, and compare seeds
0-4 with ``--first-seed 5``.

For each algorithm, concurrency (1 and 4 trials at a time) and seed, it prints the
median simple regret (best value found minus the optimum) after 20 and 40 trials, and
the platform overhead per trial: wall time of the search minus the trainable's own time
and the proposals' time, per trial, from the 1-at-a-time runs (Ray's start excluded).

    python benchmarks/search_quality.py                    # 5 seeds, 40 trials (~20-40 min on 2 cores)
    python benchmarks/search_quality.py --first-seed 5 --concurrency 1 \
        --algorithms botorch-direct ax-fast-direct        # seeds 5-9, no Ray
    python benchmarks/search_quality.py --seeds 2 --trials 12 --algorithms botorch random
    python benchmarks/search_quality.py --pipeline spaces/fixmatch.yaml --seeds 3

``--pipeline SPACE`` compares, on the real pipeline at the space's own budget and for
each seed (the seed of the search and of every trial; the data stay the same): Ax
(the space's generation strategy), uniform random search, and the space's hand-set
``baseline`` configuration run alone (the searches run without it, so the comparison
is the algorithms'). For each it prints the best validation AUROC with its standard
error, and the AUROC on an external phantom (another seed, every study labeled, never
trained on) of the model the chosen configuration trained in the search: the gap
between what validation promised and what holds elsewhere. Beside it, the best external
AUROC of any trial of the search (what a perfect choice among its trials was worth), and
the row a shipped search gives (its baseline trial runs first: the better on validation
of the baseline and Ax's best). With ``--resume`` and ``--keep``, records of an earlier
run get their trials' external AUROCs from the kept folders. Targets: Ax's choice at
least 0.03 above random's on the external phantom (mean over seeds), and not below the
hand-set baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HARTMANN6_MIN = -3.32237


def hartmann6(config: dict, report: Callable[[dict], None]) -> dict:
    """The trainable: Hartmann6 at (x1..x6), reported once like a one-epoch trial."""
    import torch
    from botorch.test_functions import Hartmann

    x = torch.tensor([[float(config[f"x{i}"]) for i in range(1, 7)]], dtype=torch.double)
    y = float(Hartmann(dim=6)(x).item())
    report({"epoch": 1, "hartmann": y})
    return {"hartmann": y}


def hartmann_space(*, algorithm: str, trials: int, concurrency: int, seed: int) -> Any:
    from search.space import SpaceConfig

    return SpaceConfig.from_dict(
        {
            "name": f"hartmann6-{algorithm}-c{concurrency}-s{seed}",
            "seed": seed,
            "objective": {"metric": "hartmann", "direction": "minimize"},
            "parameters": {f"x{i}": {"type": "range", "bounds": [0.0, 1.0]} for i in range(1, 7)},
            "budget": {
                "trials": trials,
                "concurrency": concurrency,
                "scheduler": "none",
                "algorithm": algorithm,
                "max_failures": 0,
            },
            "tracking": {"mode": "disabled"},
        },
        source="hartmann6",
        check_names=False,
    )


def run_once(space: Any, trainable: Callable, root: Path) -> dict[str, Any]:
    """One search through the platform; per-trial values, timings and the folder."""
    from search.experiment import ExperimentFolder
    from search.runner import run_search

    result = run_search(
        space, name=space.name, results_dir=root, trainable=trainable, progress=False
    )
    folder = ExperimentFolder.open(result.path)
    metric = space.objective.metric
    trials = folder.trials
    values = [trials[i].get("metrics", {}).get(metric) for i in sorted(trials)]
    return {
        "values": values,
        "wall_s": result.seconds,
        "trainable_s": sum(float(t.get("trainable_s") or 0.0) for t in trials.values()),
        "proposal_s": sum(float(t.get("proposal_s") or 0.0) for t in trials.values()),
        "n": len(trials),
        "path": str(result.path),
    }


def run_direct(space: Any, trainable: Callable, *, ax_fast: bool = False) -> dict[str, Any]:
    """The same Ax client driven in a plain loop, without Ray or the platform (a baseline
    showing what the platform adds or loses; sequential only). ``ax_fast``: with Ax's
    stock ``method="fast"`` strategy instead of the platform's."""
    from search.axclient import build_client, quiet_ax

    client = build_client(space)
    if ax_fast:
        with quiet_ax():
            client.configure_generation_strategy(
                method="fast",
                initialization_budget=space.budget.initialization_trials(),
                initialization_random_seed=space.seed,
                allow_exceeding_initialization_budget=True,
            )
    metric = space.objective.metric
    values: list[float | None] = []
    t0 = time.perf_counter()
    proposal_s = trainable_s = 0.0
    with quiet_ax():
        for _ in range(space.budget.trials):
            t = time.perf_counter()
            trials = client.get_next_trials(max_trials=1)
            proposal_s += time.perf_counter() - t
            for index, params in trials.items():
                t = time.perf_counter()
                y = trainable(dict(params), lambda _row: None)[metric]
                trainable_s += time.perf_counter() - t
                client.complete_trial(index, raw_data={metric: y})
                values.append(y)
    return {
        "values": values,
        "wall_s": time.perf_counter() - t0,
        "trainable_s": trainable_s,
        "proposal_s": proposal_s,
        "n": len(values),
        "path": "",
    }


def best_after(values: Sequence[float | None], n: int, *, minimize: bool) -> float | None:
    seen = [v for v in values[:n] if v is not None]
    if not seen:
        return None
    return min(seen) if minimize else max(seen)


def compare(
    trainable: Callable,
    spaces: Callable[[str, int, int], Any],
    *,
    algorithms: Sequence[str],
    seeds: Sequence[int],
    concurrencies: Sequence[int],
    root: Path,
    echo: Callable[[str], None] = print,
    save: Path | None = None,
    done: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Run every (algorithm, concurrency, seed) through the platform; one record each.

    ``spaces(algorithm, concurrency, seed)`` builds the space; this is the hook for the
    real-pipeline comparison (``pipeline.run_trial`` on the phantom). ``done``: records
    of an interrupted earlier run (``--resume``), kept and not run again.
    """
    records = list(done)
    have = {(r["algorithm"], r["concurrency"], r["seed"]) for r in records}
    for concurrency in concurrencies:
        for algorithm in algorithms:
            for seed in seeds:
                direct = algorithm.endswith("-direct")
                if direct and concurrency != 1:
                    continue
                if (algorithm, concurrency, seed) in have:
                    continue
                space = spaces("botorch" if direct else algorithm, concurrency, seed)
                t0 = time.time()
                if direct:
                    rec = run_direct(space, trainable, ax_fast=algorithm == "ax-fast-direct")
                else:
                    rec = run_once(space, trainable, root)
                rec.update(
                    algorithm=algorithm,
                    concurrency=concurrency,
                    seed=seed,
                    minimize=space.objective.minimize,
                )
                records.append(rec)
                if (
                    save is not None
                ):  # after every run, so an interrupted benchmark keeps its results
                    save.write_text(json.dumps(records, indent=1, default=str))
                best = best_after(rec["values"], len(rec["values"]), minimize=rec["minimize"])
                echo(
                    f"  {algorithm:<8} c={concurrency} seed={seed}: best {best} in {time.time() - t0:.0f}s "
                    f"(proposals {rec['proposal_s']:.0f}s)"
                )
    return records


def hartmann_table(records: list[dict[str, Any]], checkpoints: Sequence[int]) -> str:
    algorithms = list(dict.fromkeys(r["algorithm"] for r in records))
    concurrencies = list(dict.fromkeys(r["concurrency"] for r in records))
    head = (
        ["algorithm", "concurrent", "seeds"]
        + [f"median regret @{n}" for n in checkpoints]
        + ["median s/proposal", "overhead s/trial", "wall s/trial"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in concurrencies:
        for a in algorithms:
            rs = [r for r in records if r["algorithm"] == a and r["concurrency"] == c]
            if not rs:
                continue
            cells = [a, str(c), str(len(rs))]
            for n in checkpoints:
                regrets = [best_after(r["values"], n, minimize=True) for r in rs]
                regrets = [v - HARTMANN6_MIN for v in regrets if v is not None]
                cells.append(f"{statistics.median(regrets):.3f}" if regrets else "-")
            cells.append(f"{statistics.median(r['proposal_s'] / r['n'] for r in rs):.2f}")
            overhead = [(r["wall_s"] - r["trainable_s"] - r["proposal_s"]) / r["n"] for r in rs]
            cells.append(f"{statistics.median(overhead):.2f}" if c == 1 else "(see c=1)")
            cells.append(f"{statistics.median(r['wall_s'] / r['n'] for r in rs):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# The real pipeline: Ax vs random vs the hand-set baseline, judged on an external phantom
# ------------------------------------------------------------------------------------------
def seeded_space(base: Any, seed: int, algorithm: str, trials: int | None) -> Any:
    """The space with this seed and algorithm, without its baseline trial."""
    from search.space import SpaceConfig

    d = base.to_dict()
    d.update(seed=seed, name=f"{base.name}-{algorithm}-s{seed}")
    d.pop("baseline", None)
    d["budget"].update(algorithm=algorithm, **({"trials": trials} if trials else {}))
    d["tracking"]["mode"] = "disabled"
    return SpaceConfig.from_dict(d, source=base.source)


def external_set(base: Any, n: int, seed: int, cache: Path) -> tuple[Path, Any]:
    """A second phantom (another seed, every study labeled), generated once, and its
    labeled crops preprocessed as the space's trials are."""
    from pipeline.trial import TrialConfig, ensure_phantom, labeled_set

    data = base.data.trial_settings()
    folder = ensure_phantom(
        n,
        seed,
        int(data.get("phantom_size", 256)),
        cache,
        labeled_fraction=1.0,
        workers=os.cpu_count() or 1,
    )
    cfg = TrialConfig.from_dict({**base.trial_base(), "cache_dir": str(cache)})
    return folder, labeled_set(cfg, folder, None, workers=os.cpu_count() or 1)


def external_auroc(model_dir: Path, dataset: Any) -> float:
    """The AUROC of a trial's model of record on the external crops."""
    from pipeline.train import evaluate, load_model

    model, info = load_model(model_dir)
    return float(evaluate(model, dataset, threshold=info["threshold"]).metrics["auroc"])


def trial_externals(folder_path: Path, external: Any) -> dict[str, float]:
    """The external AUROC of every trial's model of record in a finished search (stopped
    trials included): what the best choice the search could have made was worth."""
    from search.experiment import ExperimentFolder
    from search.promote import trial_model_dir

    folder = ExperimentFolder.open(folder_path)
    out: dict[str, float] = {}
    for i in sorted(folder.trials):
        model_dir = trial_model_dir(folder, int(i))
        if model_dir is not None:
            out[str(i)] = external_auroc(model_dir, external)
    return out


def pipeline_search(space: Any, root: Path, external: Any) -> dict[str, Any]:
    """One search; its best trial's validation score and external AUROC, and every
    trial's external AUROC."""
    from search.experiment import ExperimentFolder
    from search.runner import run_search

    result = run_search(space, name=space.name, results_dir=root, progress=False)
    folder = ExperimentFolder.open(result.path)
    best = folder.best() or {}
    metric = space.objective.metric
    values = [folder.trials[i].get("metrics", {}).get(metric) for i in sorted(folder.trials)]
    externals = trial_externals(result.path, external)
    return {
        "values": values,
        "best_trial": best.get("trial"),
        "best_val": best.get("objective", {}).get("value"),
        "best_sem": best.get("objective", {}).get("sem"),
        "external": externals.get(str(best["trial"])) if best else None,
        "trial_externals": externals,
        "wall_s": result.seconds,
        "config": best.get("parameters"),
    }


def pipeline_baseline(
    space: Any, baseline: dict[str, Any], root: Path, external: Any
) -> dict[str, Any]:
    """The hand-set ``baseline`` configuration, one trial with the search's settings."""
    from pipeline import run_trial

    ckpt = root / f"{space.name}-baseline" / "checkpoint"
    config = {
        **space.trial_base(),
        **baseline,
        "threads": space.budget.threads,
        "checkpoint_dir": str(ckpt),
        "cache_dir": str(Path(os.environ["RADSEARCH_CACHE"]).resolve()),
    }
    t0 = time.time()
    metrics = run_trial(config, None)
    metric = space.objective.metric
    return {
        "values": [metrics.get(metric)],
        "best_trial": 0,
        "best_val": metrics.get(metric),
        "best_sem": metrics.get(f"{metric}_sem"),
        "external": external_auroc(ckpt, external),
        "wall_s": time.time() - t0,
        "config": baseline,
    }


def pipeline_table(records: list[dict[str, Any]]) -> str:
    """Per seed and method, then the mean over seeds, with the targets."""
    lines = [
        "| seed | method | best validation AUROC (± SE) | chosen trial | external AUROC "
        "| best external of any trial | search s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        sem = f" ± {r['best_sem']:.3f}" if r.get("best_sem") is not None else ""
        ext = f"{r['external']:.3f}" if r.get("external") is not None else "-"
        val = f"{r['best_val']:.3f}{sem}" if r.get("best_val") is not None else "-"
        oracle = _oracle(r)
        lines.append(
            f"| {r['seed']} | {r['method']} | {val} | {r['best_trial']} | {ext} "
            f"| {'-' if oracle is None else f'{oracle:.3f}'} | {r['wall_s']:.0f} |"
        )
    means: dict[str, float] = {}
    lines += [
        "",
        "| method | seeds | mean best validation AUROC | mean external AUROC "
        "| mean best external of any trial |",
        "|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in records):
        rs = [r for r in records if r["method"] == method and r.get("external") is not None]
        if not rs:
            continue
        means[method] = statistics.mean(r["external"] for r in rs)
        val = statistics.mean(r["best_val"] for r in rs)
        oracles = [o for o in map(_oracle, rs) if o is not None]
        oracle = f"{statistics.mean(oracles):.3f}" if len(oracles) == len(rs) else "-"
        lines.append(f"| {method} | {len(rs)} | {val:.3f} | {means[method]:.3f} | {oracle} |")
    shipped = _as_shipped(records)
    if shipped:
        lines.append(
            f"| botorch after the baseline trial (as shipped) | {len(shipped)} | "
            f"{statistics.mean(v for v, _ in shipped):.3f} | "
            f"{statistics.mean(e for _, e in shipped):.3f} | - |"
        )
    if {"botorch", "random", "baseline"} <= means.keys():
        gap = means["botorch"] - means["random"]
        lines += [
            "",
            f"target: Ax's choice >= random's + 0.03 on the external phantom: {gap:+.3f} "
            f"({'met' if gap >= 0.03 else 'NOT met'})",
            f"target: Ax's choice not below the hand-set baseline: "
            f"{means['botorch']:.3f} vs {means['baseline']:.3f} "
            f"({'met' if means['botorch'] >= means['baseline'] else 'NOT met'})",
        ]
    return "\n".join(lines)


def _oracle(record: dict[str, Any]) -> float | None:
    """The best external AUROC of any trial of the record's search (the baseline: its own)."""
    if record["method"] == "baseline":
        return record.get("external")
    ext = record.get("trial_externals") or {}
    return max(ext.values()) if ext else None


def _as_shipped(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Per seed, (validation, external) of what a shipped search returns: the space runs its
    baseline first, so the better on validation of the baseline and Ax's best trial."""
    by = {(r["method"], r["seed"]): r for r in records if r.get("external") is not None}
    out = []
    for (method, seed), r in by.items():
        base = by.get(("baseline", seed))
        if method == "botorch" and base is not None:
            pick = r if r["best_val"] >= base["best_val"] else base
            out.append((pick["best_val"], pick["external"]))
    return out


def pipeline_benchmark(args: argparse.Namespace) -> int:
    """``--pipeline SPACE``: see the module docstring."""
    from search.space import load_space

    base = load_space(args.pipeline)
    if not base.baseline:
        print(f"{args.pipeline}: no baseline section to compare with", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="search-pipeline-"))
    os.environ.setdefault("RADSEARCH_CACHE", str(root / "cache"))
    cache = Path(os.environ["RADSEARCH_CACHE"])
    t0 = time.time()
    _, external = external_set(base, args.external_n, args.external_seed, cache)
    print(f"external phantom: {len(external)} labeled crops ({time.time() - t0:.0f}s)")
    records: list[dict[str, Any]] = (
        json.loads(args.json.read_text())
        if args.resume and args.json and args.json.exists()
        else []
    )
    for r in records:  # records of an earlier run: every trial's external AUROC, if kept
        kept = root / f"{base.name}-{r['method']}-s{r['seed']}"
        if r["method"] != "baseline" and "trial_externals" not in r and kept.is_dir():
            r["trial_externals"] = trial_externals(kept, external)
            if args.json:
                args.json.write_text(json.dumps(records, indent=1, default=str))
    have = {(r["method"], r["seed"]) for r in records}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for method in ("baseline", "botorch", "random"):
            if (method, seed) in have:
                continue
            space = seeded_space(
                base, seed, "botorch" if method == "baseline" else method, args.trials
            )
            if method == "baseline":
                rec = pipeline_baseline(space, dict(base.baseline), root, external)
            else:
                rec = pipeline_search(space, root, external)
            rec.update(method=method, seed=seed)
            records.append(rec)
            print(
                f"  seed {seed} {method:<8}: best val {rec['best_val']}, external "
                f"{rec['external']}, {rec['wall_s']:.0f}s",
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps(records, indent=1, default=str))
    print()
    print(
        f"pipeline ({args.pipeline}) at its own budget; external = a phantom of seed "
        f"{args.external_seed} ({len(external)} labeled crops); total {time.time() - t0:.0f}s"
    )
    print()
    print(pipeline_table(records))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument(
        "--trials", type=int, help="trials per search (default 40; --pipeline: the space's)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["botorch", "random", "tpe"],
        choices=["botorch", "botorch-direct", "ax-fast-direct", "sobol", "random", "tpe"],
        help="botorch-direct: the same Ax client in a plain loop, no Ray (a baseline); "
        "ax-fast-direct: that loop with Ax's stock 'fast' strategy",
    )
    parser.add_argument(
        "--pipeline", metavar="SPACE", help="compare on the real pipeline with this space"
    )
    parser.add_argument(
        "--external-n", type=int, default=1000, help="with --pipeline: external phantom images"
    )
    parser.add_argument("--external-seed", type=int, default=1000, help="with --pipeline: its seed")
    parser.add_argument("--keep", type=Path, help="keep the experiment folders here")
    parser.add_argument("--json", type=Path, help="write the raw records as JSON (after every run)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in --json (same settings) and run only the missing ones",
    )
    parser.add_argument(
        "--table-from",
        type=Path,
        metavar="JSON",
        help="print the table of records saved by an earlier --json run, and exit",
    )
    args = parser.parse_args(argv)
    if args.pipeline:
        return pipeline_benchmark(args)
    args.trials = args.trials or 40
    if args.table_from:
        records = json.loads(args.table_from.read_text())
        trials = max(r["n"] for r in records)
        print(hartmann_table(records, sorted({min(20, trials), trials})))
        return 0

    done: list[dict[str, Any]] = []
    if args.resume and args.json and args.json.exists():
        done = [r for r in json.loads(args.json.read_text()) if r.get("n") == args.trials]
        print(f"resuming: {len(done)} runs kept from {args.json}")

    import ray

    root = args.keep or Path(tempfile.mkdtemp(prefix="search-quality-"))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    t0 = time.time()
    if not all(a.endswith("-direct") for a in args.algorithms):
        ray.init(num_cpus=max(args.concurrency), include_dashboard=False, log_to_driver=False)
    ray_start = time.time() - t0
    try:

        def spaces(algorithm: str, concurrency: int, seed: int) -> Any:
            return hartmann_space(
                algorithm=algorithm, trials=args.trials, concurrency=concurrency, seed=seed
            )

        records = compare(
            hartmann6,
            spaces,
            algorithms=args.algorithms,
            seeds=seeds,
            concurrencies=args.concurrency,
            root=root,
            save=args.json,
            done=done,
        )
        checkpoints = sorted({min(20, args.trials), args.trials})
        table = hartmann_table(records, checkpoints)
    finally:
        ray.shutdown()
    print()
    what = "Hartmann6 (optimum -3.32237)"
    print(
        f"{what}, through Ray Tune + the search platform; {len(seeds)} seeds "
        f"({seeds[0]}-{seeds[-1]}); Ray start {ray_start:.1f}s "
        f"(not counted); total {time.time() - t0:.0f}s"
    )
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
