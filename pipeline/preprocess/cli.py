"""``python -m pipeline preprocess``: build the 16-bit preprocessing cache of a folder.

    python -m pipeline preprocess --data DIR [--config YAML] [--cache DIR] [--workers N] [--sheet PNG]

Every file under ``DIR`` (sidecar files such as ``labels.csv`` are skipped, see
:data:`pipeline.dicom.NOT_DICOM_SUFFIXES`) is decoded, preprocessed with the
configured chain and stored under ``CACHE/<config key>/``; files already there are
not decoded again. Without
``--config`` the chain is that of a trial with default settings (``--image-size``
sets its output size). ``--sheet PNG`` also draws every step of a few images.
Unreadable files are listed at the end (and in ``--errors CSV``); they never stop
the build. Every file is also decided from its pixels (frontal knee, other knee view,
not a knee: :mod:`pipeline.preprocess.scope`); the files that are not a frontal knee
are counted and listed with the decision and its score. The exit status is 0 when every file was preprocessed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from pipeline.dicom import candidate_files
from pipeline.io import atomic_write_text
from pipeline.preprocess.cache import build_cache
from pipeline.preprocess.config import PreprocessConfig, PreprocessConfigError
from pipeline.preprocess.sheet import contact_sheet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="folder of DICOM files (searched recursively)"
    )
    parser.add_argument(
        "--config", type=Path, help="YAML with the preprocessing steps (default: a trial's chain)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="output size of the default chain (64)"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="cache root (default: $RADSEARCH_CACHE/preprocess)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--sheet", type=Path, help="also write a contact sheet of every step (PNG)")
    parser.add_argument(
        "--sheet-count", type=int, default=4, help="radiographs on the sheet (default 4)"
    )
    parser.add_argument("--errors", type=Path, help="write the unreadable files to this CSV")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        print(f"--data {args.data}: not a folder", file=sys.stderr)
        return 2
    try:
        if args.config is not None:
            config = PreprocessConfig.from_yaml(args.config)
        else:
            trial = {} if args.image_size is None else {"image_size": args.image_size}
            config = PreprocessConfig.from_trial(trial)
    except (PreprocessConfigError, OSError) as e:
        print(f"python -m pipeline preprocess: {e}", file=sys.stderr)
        return 2
    files = candidate_files(args.data)
    if not files:
        print(f"{args.data}: no files to preprocess", file=sys.stderr)
        return 2
    if args.sheet is not None:
        path = contact_sheet(files, config, args.sheet, count=args.sheet_count)
        print(f"contact sheet: {path}")
    index = build_cache(
        files,
        config,
        args.cache,
        workers=max(1, args.workers),
        progress=not args.no_progress,
        data_dir=args.data,
    )
    print(index.summary())
    out = index.out_of_scope()
    for file, reason in out[:20]:
        print(f"  out of scope: {file}: {reason}")
    if len(out) > 20:
        print(f"  ... and {len(out) - 20} more out of scope")
    for err in index.errors[:20]:
        print(f"  skipped {err.file}: {err.reason}", file=sys.stderr)
    if len(index.errors) > 20:
        print(f"  ... and {len(index.errors) - 20} more", file=sys.stderr)
    if args.errors is not None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "error", "reason"])
        for err in index.errors:
            w.writerow([err.file, err.error, err.reason])
        atomic_write_text(args.errors, buf.getvalue())
    return 0 if not index.errors else 1


__all__ = ["add_arguments", "main"]
