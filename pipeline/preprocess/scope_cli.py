"""Train the out-of-scope decision: ``python -m pipeline.preprocess.scope_cli``.

    python -m pipeline.preprocess.scope_cli --data DIR [--data DIR ...] --out PATH [--evaluate DIR]

Each ``--data`` folder is a phantom with ``truth.jsonl`` made with every body part
(``python -m pipeline synth ... --other-parts all --other-share 0.4``); see
:mod:`pipeline.preprocess.scope_train` for the procedure. ``--evaluate DIR`` reports
the accuracy and confusion matrix on a held-out phantom folder.

The weights shipped in ``pipeline/preprocess/weights/scope_hog_logreg.npz`` were made
from a phantom in the clinical style and one in the default style, both with every body
part (about four minutes on two cores)::

    python -m pipeline synth --out /tmp/scope-clinical --n 1200 --seed 310 --size 512 \\
        --other-parts all --other-share 0.4 --style clinical
    python -m pipeline synth --out /tmp/scope-phantom --n 1000 --seed 300 --size 512 \\
        --other-parts all --other-share 0.4
    python -m pipeline synth --out /tmp/scope-held --n 500 --seed 311 --size 512 \\
        --other-parts all --other-share 0.4 --style clinical
    python -m pipeline.preprocess.scope_cli --data /tmp/scope-clinical --data /tmp/scope-phantom \\
        --out pipeline/preprocess/weights/scope_hog_logreg.npz --evaluate /tmp/scope-held

Changing the weights changes the key of every preprocessing configuration, so caches
rebuild on their own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.preprocess.cache import single_threaded
from pipeline.preprocess.localizer_cli import lacks_truth, timed_printer
from pipeline.preprocess.scope import SCOPES
from pipeline.preprocess.scope_train import evaluate_scope, train_scope


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, action="append", required=True, help="phantom folder (repeatable)"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the weights (.npz)")
    parser.add_argument(
        "--c", type=float, default=0.03, help="inverse regularisation (default 0.03)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many images a folder")
    parser.add_argument("--evaluate", type=Path, help="a held-out phantom folder to report on")


def main(args: argparse.Namespace) -> int:
    if lacks_truth(args):
        return 2
    say = timed_printer()
    with single_threaded():
        model = train_scope(args.data, args.out, c=args.c, limit=args.limit, progress=say)
        say(f"wrote {args.out} (images per class {dict(model.info['images'])})")
        if args.evaluate is not None:
            r = evaluate_scope(args.evaluate, model)
            say(f"{args.evaluate}: accuracy {r['accuracy']:.3f} on {r['images']} images")
            print("confusion (rows: truth, columns: decision): " + ", ".join(SCOPES))
            for name, row in zip(SCOPES, r["confusion"], strict=True):
                print(f"  {name:16s} {row}")
            for w in r["wrong"]:
                print(f"  wrong: {w['file']}: {w['truth']} decided {w['decision']}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.preprocess.scope_cli")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
