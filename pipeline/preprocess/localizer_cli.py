"""``python -m pipeline train-localizer``: train the HOG + linear SVM knee localizer.

    python -m pipeline train-localizer --data DIR [--data DIR ...] --out PATH [--evaluate DIR]

Each ``--data`` folder holds DICOM files and a ``truth.jsonl`` with one box per
knee, as the synthetic phantom writes them. One detector learns from the frontal
(AP) knee views and one from the lateral views, written together to one file (the
procedure: :mod:`pipeline.preprocess.localizer_train`). ``--evaluate DIR`` reports the mean IoU and failure rate on another folder.

The weights shipped in ``pipeline/preprocess/weights/knee_hog_svm.npz`` were made
with::

    python -m pipeline synth --out /tmp/knee-train-512 --n 600 --seed 100 --size 512
    python -m pipeline synth --out /tmp/knee-train-256 --n 300 --seed 101 --size 256
    python -m pipeline train-localizer --data /tmp/knee-train-512 --data /tmp/knee-train-256 \\
        --out pipeline/preprocess/weights/knee_hog_svm.npz

(about three minutes on two cores). Changing the weights changes the key of every
preprocessing configuration that localizes, so caches rebuild on their own.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.preprocess.cache import single_threaded
from pipeline.preprocess.localizer_train import evaluate_localizer, train_localizers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="folder with truth.jsonl (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the weights (.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="hard-negative mining rounds (default 2)"
    )
    parser.add_argument("--c", type=float, default=0.01, help="SVM regularisation C (default 0.01)")
    parser.add_argument(
        "--limit", type=int, default=None, help="use at most this many images per folder"
    )
    parser.add_argument("--evaluate", type=Path, help="a held-out folder to report IoU on")


def lacks_truth(args: argparse.Namespace) -> bool:
    """Whether a ``--data`` or ``--evaluate`` folder has no ``truth.jsonl`` (said on stderr)."""
    for d in args.data + ([args.evaluate] if args.evaluate else []):
        if not (d / "truth.jsonl").exists():
            print(
                f"{d}: no truth.jsonl (generate one with `python -m pipeline synth --out {d}`)",
                file=sys.stderr,
            )
            return True
    return False


def timed_printer() -> Callable[[str], None]:
    """``say(message)``: print with the seconds since this call."""
    start = time.perf_counter()
    return lambda message: print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)


def main(args: argparse.Namespace) -> int:
    if lacks_truth(args):
        return 2
    say = timed_printer()
    with single_threaded():
        models = train_localizers(
            args.data,
            args.out,
            seed=args.seed,
            rounds=args.rounds,
            c=args.c,
            limit=args.limit,
            progress=say,
        )
        images = {v: m.info.get("images") for v, m in models.items()}
        say(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} kB; images per view {images})")
        if args.evaluate is not None:
            for v, m in models.items():
                r = evaluate_localizer(args.evaluate, m, view=v)
                say(
                    f"{args.evaluate} {v.upper()}: mean IoU {r['mean_iou']:.3f}, failures "
                    f"{100 * r['failure_rate']:.1f}% of {r['knees']} knees, "
                    f"bilateral {r['bilateral_correct']}/{r['bilateral_images']}"
                )
    return 0
