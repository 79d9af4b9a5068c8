"""Active learning on the phantom: does choosing what to label beat choosing at random?

    python benchmarks/active_learning.py --workers 2   # 2 seeds, 6 strategies
    python benchmarks/active_learning.py --seeds 2 --first-seed 2 --strategies random,class_balanced
    python benchmarks/active_learning.py --data DIR    # a fully labeled data folder
    python benchmarks/active_learning.py --tables-from a.csv b.csv --strategies random,class_balanced

The training split of a fully labeled set (default: a 3000-image phantom with every
image labeled, 1284 knee crops in the pool, 268 of them fractured) is the pool; its
labels are hidden. Every strategy starts from the same seeded ``--initial`` crops,
reveals ``--batch`` crops per round by its own choice, and retrains from scratch each
round (``pipeline.active.simulate``); random choice is one of the strategies, trained
exactly like every other. The default budget, 20 + 8 x 20 = 180 labels, ends where
random choice's curve still rises. With 40 + 8 x 40 and the training below (one model
per round, seeds 0-1) random choice's mean test AUROC was 0.902 at 200 labels and
0.896 at 360: its "final AUROC" would be a plateau it reaches itself with ~55% of its
labels, and the target would say little. The per-seed table prints random choice's
own share as that check. Each round trains a fixed number of optimisation steps
(``--epochs`` x ``--steps-per-epoch``, default 8 x 25 = 200 steps of 32), whatever
the number of labels: epochs over a growing set would leave the early rounds
undertrained (40 labels: 40 steps) and make them look worse than they are.
``--ensemble E`` trains E models per round and averages their probabilities, for
the test AUROC and for the acquisition, which shrinks the retraining noise. The
first run also generates and preprocesses the phantom (~2-4 min, cached; ``--cache
DIR`` keeps one cache across runs). Margin sampling ranks exactly like entropy on
the binary task (both order by |P(fracture) - 0.5|), so it is left out unless asked
for. ``--workers N`` runs N seeds side by side in separate processes (one training
thread each).

The crossing point, defined before any run: on the learning curve averaged over
seeds (mean test AUROC and mean labels per round), the labels at which a strategy
first reaches random choice's mean test AUROC after its last round, interpolated
linearly between the two rounds around it (``labels_to_reach``); its share is those
labels over random's last-round labels. Target (issue 6): a strategy with a share
of at most 60%. The same figure is printed per seed (each seed's curve against that
seed's own random run), and so is each curve's AUROC at exactly 60% of random's
labels (interpolated), which must reach random's final AUROC for the target to hold.

Prints markdown tables:

1. test AUROC (mean over seeds) after each round, one column per strategy;
2. per strategy: final test and validation AUROC, AUROC at 60% of random's labels,
   the labels it needs to reach random choice's final AUROC and their share;
3. the share per seed.

``--out FILE.csv`` keeps every round of every seed; ``--tables-from`` prints the
tables of several such CSVs pooled (runs of other seeds with the same settings),
over the seeds all shown strategies share. A seed fixes everything, so a seed run
twice with the same settings repeats to the digit on one machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

TARGET_SHARE = 0.60


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def progress(r) -> None:
    """One line per round on stderr (module level: worker processes print it too)."""
    print(
        f"  seed {r.seed} {r.strategy:>14} round {r.round}: {r.labels} labels "
        f"({r.positives} fractured), test AUROC {r.test_auroc:.3f}, {r.seconds:.1f}s",
        file=sys.stderr,
        flush=True,
    )


def _one_seed(config):
    from pipeline.active.simulate import simulate

    return simulate(config, progress=progress)


def run_seeds(config, workers: int) -> list:
    """Every seed of ``config``, ``workers`` seeds at a time in spawned processes; the
    rows come back in seed order, as one process would give them."""
    import dataclasses

    from pipeline.active.simulate import prepare_simulation, simulate

    if workers <= 1 or len(config.seeds) == 1:
        return simulate(config, progress=progress)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    prepare_simulation(config)  # generate and preprocess once, before the workers start
    parts = [dataclasses.replace(config, seeds=(s,)) for s in config.seeds]
    with ProcessPoolExecutor(min(workers, len(parts)), mp_context=get_context("spawn")) as ex:
        return [row for rows in ex.map(_one_seed, parts) for row in rows]


def parse(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.active.simulate import DEFAULT_STRATEGIES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="a fully labeled data folder (default: phantom)")
    p.add_argument("--phantom-n", type=int, default=3000, help="phantom images (default 3000)")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument(
        "--fracture-rate", type=float, default=0.25, help="phantom patients with a fracture (0.25)"
    )
    p.add_argument(
        "--strategies",
        default="random,entropy,badge,coreset,entropy_kmeans,class_balanced",
        help=f"comma-separated, of {', '.join(DEFAULT_STRATEGIES)} (margin ranks like entropy "
        "on the binary task, so it is left out by default)",
    )
    p.add_argument("--initial", type=int, default=20, help="labeled crops at start (20)")
    p.add_argument("--batch", type=int, default=20, help="crops revealed per round (20)")
    p.add_argument("--rounds", type=int, default=8, help="acquisition rounds (8)")
    p.add_argument("--seeds", type=int, default=2, help="repeats with other seeds (2)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here (0)")
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8, help="epochs per round (8)")
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        default=25,
        help="steps per epoch (25; 0: one pass over the labeled crops)",
    )
    p.add_argument(
        "--ensemble", type=int, default=2, help="models per round, probabilities averaged (2)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--method", default="supervised")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadiest here)")
    p.add_argument(
        "--workers", type=int, default=1, help="processes running seeds side by side (1)"
    )
    p.add_argument("--cache", type=Path, help="cache folder (default $RADSEARCH_CACHE)")
    p.add_argument("--out", type=Path, help="CSV of every round")
    p.add_argument(
        "--tables-from",
        type=Path,
        nargs="+",
        metavar="CSV",
        help="print the tables of earlier --out CSVs (runs of other seeds pooled) and exit",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse(argv)
    from pipeline.active.simulate import SimulationConfig, read_rows, write_rows

    if args.tables_from:
        rows = list(  # a round found in two files counts once
            {
                (r.strategy, r.seed, r.round): r for p in args.tables_from for r in read_rows(p)
            }.values()
        )
        asked = [s.strip() for s in args.strategies.split(",") if s.strip()]
        names = [s for s in asked if any(r.strategy == s for r in rows)]
        # only the seeds every shown strategy ran, so each mean is over the same seeds
        seeds = sorted(
            set.intersection(*({r.seed for r in rows if r.strategy == s} for s in names))
        )
        rows = [r for r in rows if r.strategy in names and r.seed in seeds]
        print(
            f"Phantom active learning: {len(seeds)} seed(s) {seeds} from "
            f"{', '.join(str(p) for p in args.tables_from)}\n"
        )
        print_tables(rows, names)
        return 0

    trial = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "localize": True,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch or None,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "method": args.method,
        "pretrained": "none",
        "val_fraction": 0.2,
        "test_fraction": 0.25,
        "threads": args.threads,
    }
    if args.data is not None:
        trial["data_dir"] = str(args.data)
    if args.cache is not None:
        trial["cache_dir"] = str(args.cache)
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    config = SimulationConfig(
        strategies=strategies,
        initial=args.initial,
        batch=args.batch,
        rounds=args.rounds,
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        trial=trial,
        phantom_n=args.phantom_n,
        phantom_seed=args.phantom_seed,
        phantom_fracture_rate=args.fracture_rate,
        ensemble=args.ensemble,
    )
    t0 = time.perf_counter()
    rows = run_seeds(config, args.workers)
    seconds = time.perf_counter() - t0
    if args.out is not None:
        write_rows(rows, args.out)

    print(
        f"Phantom active learning: {args.backbone} at {args.image_size} px, "
        f"{args.epochs} epochs per round"
        + (f" x {args.steps_per_epoch} steps" if args.steps_per_epoch else "")
        + (f", ensemble of {args.ensemble}" if args.ensemble > 1 else "")
        + f", {args.initial} + {args.rounds} x {args.batch} labels, "
        f"{args.seeds} seed(s) from {args.first_seed}, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s) x "
        f"{max(1, min(args.workers, args.seeds))} worker(s), {seconds / 60:.1f} min in all\n"
    )
    print_tables(rows, strategies)
    return 0


def share_at(
    curve: list[tuple[float, float]], reference: list[tuple[float, float]]
) -> float | None:
    """The crossing point of the module docstring: labels at which ``curve`` first
    reaches ``reference``'s last AUROC, over ``reference``'s last labels."""
    from pipeline.active.simulate import labels_to_reach

    need = labels_to_reach(curve, reference[-1][1])
    return None if need is None else need / reference[-1][0]


def value_at(curve: list[tuple[float, float]], labels: float) -> float:
    """A learning curve's AUROC at ``labels``, interpolated linearly between rounds."""
    import numpy as np

    xs, ys = zip(*curve, strict=True)
    return float(np.interp(labels, xs, ys))


def print_tables(rows: list, strategies: list[str] | tuple[str, ...]) -> None:
    """The three markdown tables of the module docstring and the verdict on the target."""
    from pipeline.active.simulate import labels_to_reach, learning_curves

    curves = learning_curves(rows)
    val_curves = learning_curves(rows, "val_auroc")
    names = [s for s in strategies if s in curves]
    rounds = max(len(c) for c in curves.values())
    body = []
    for k in range(rounds):
        labels = next(int(c[k][0]) for c in curves.values() if len(c) > k)
        body.append(
            [str(k), str(labels)]
            + [f"{curves[s][k][1]:.3f}" if len(curves[s]) > k else "" for s in names]
        )
    print(table("Test AUROC after each round (mean over seeds)", ["round", "labels", *names], body))

    reference = curves.get("random")
    summary = []
    met = []
    for s in names:
        final = curves[s][-1]
        row = [s, f"{final[1]:.3f}", f"{val_curves[s][-1][1]:.3f}"]
        if reference is not None:
            need = labels_to_reach(curves[s], reference[-1][1])
            share = share_at(curves[s], reference)
            if share is not None and share <= TARGET_SHARE and s != "random":
                met.append(s)
            row += [
                f"{value_at(curves[s], TARGET_SHARE * reference[-1][0]):.3f}",
                f"{need:.0f}" if need is not None else "not reached",
                f"{share:.0%}" if share is not None else "-",
            ]
        summary.append(row)
    header = ["strategy", "final test AUROC", "final val AUROC"]
    if reference is not None:
        header += [
            f"AUROC at {TARGET_SHARE * reference[-1][0]:.0f} labels",
            f"labels to reach random's {reference[-1][1]:.3f}",
            f"share of random's {reference[-1][0]:.0f}",
        ]
    print(table("Labels needed (mean curves)", header, summary))
    if reference is None:
        return

    seeds = sorted({r.seed for r in rows})
    per_seed = []
    for s in names:
        cells = []
        for seed in seeds:
            mine = [r for r in rows if r.seed == seed]
            own, ref = learning_curves(mine).get(s), learning_curves(mine).get("random")
            share = share_at(own, ref) if own and ref else None
            cells.append(
                f"{own[-1][1]:.3f} / " + (f"{share:.0%}" if share is not None else "not reached")
                if own
                else ""
            )
        per_seed.append([s, *cells])
    print(
        table(
            "Per seed: final test AUROC / share of random's labels to reach random's final",
            ["strategy", *(f"seed {x}" for x in seeds)],
            per_seed,
        )
    )
    verdict = ", ".join(met) if met else "none"
    print(
        f"Target (a strategy reaches random's final AUROC with <= {TARGET_SHARE:.0%} of "
        f"its labels, mean curves): {'met by ' + verdict if met else 'not met'}"
    )


if __name__ == "__main__":
    sys.exit(main())
