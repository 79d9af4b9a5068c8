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
    python benchmarks/search_quality.py --pipeline spaces/fixmatch.yaml --trials 8 --seeds 1

``--pipeline SPACE`` runs :func:`compare` with ``pipeline.run_trial`` on the phantom
instead: the best validation AUROC after N trials for Ax vs random search.
"""

from __future__ import annotations

import argparse
import json
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
    from search.searcher import build_client, quiet_ax

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


def pipeline_table(records: list[dict[str, Any]], trials: int) -> str:
    lines = [
        f"| algorithm | seeds | median best val/auroc after {trials} trials |",
        "|---|---|---|",
    ]
    for a in dict.fromkeys(r["algorithm"] for r in records):
        best = [
            best_after(r["values"], trials, minimize=False) for r in records if r["algorithm"] == a
        ]
        best = [b for b in best if b is not None]
        lines.append(
            f"| {a} | {len(best)} | {statistics.median(best):.3f} |" if best else f"| {a} | 0 | - |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--trials", type=int, default=40)
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
        "--epochs", type=int, help="with --pipeline: epochs per trial (default: the space's)"
    )
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
    if args.pipeline or not all(a.endswith("-direct") for a in args.algorithms):
        ray.init(num_cpus=max(args.concurrency), include_dashboard=False, log_to_driver=False)
    ray_start = time.time() - t0
    try:
        if args.pipeline:
            from pipeline import run_trial
            from search.space import load_space

            base = load_space(args.pipeline)

            def spaces(algorithm: str, concurrency: int, seed: int) -> Any:
                return base.with_overrides(
                    trials=args.trials,
                    concurrency=concurrency,
                    algorithm=algorithm,
                    epochs=args.epochs,
                    wandb="disabled",
                    name=f"{base.name}-{algorithm}-s{seed}",
                )

            algorithms = [a for a in args.algorithms if a in ("botorch", "random")] or [
                "botorch",
                "random",
            ]
            records = compare(
                run_trial,
                spaces,
                algorithms=algorithms,
                seeds=seeds,
                concurrencies=args.concurrency[:1],
                root=root,
                save=args.json,
                done=done,
            )
            table = pipeline_table(records, args.trials)
        else:

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
    what = f"pipeline ({args.pipeline})" if args.pipeline else "Hartmann6 (optimum -3.32237)"
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
