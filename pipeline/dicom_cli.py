"""``python -m pipeline scan FOLDER [--report CSV]``: read every file, list what was skipped and why.

A scan never stops on a bad file. It prints how many radiographs were readable, how
many files were skipped per error class, and writes one CSV row per skipped file
(``file,error,reason``) when ``--report`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.dicom import scan_folder

_SHOWN = 20  # skipped files printed when no report is written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", type=Path, help="folder to scan (recursively; hidden files are ignored)"
    )
    parser.add_argument(
        "--report", type=Path, metavar="CSV", help="write every skipped file and its reason to CSV"
    )
    parser.add_argument(
        "--header-only",
        action="store_true",
        help="check headers only, without decoding pixels (fast, but misses undecodable pixel data)",
    )


def main(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        print(f"python -m pipeline scan: {folder}: not a folder", file=sys.stderr)
        return 2
    result = scan_folder(folder, report_csv=args.report, decode=not args.header_only)
    total = len(result.files) + len(result.skipped)
    print(
        f"{folder}: {total} files in {result.seconds:.1f} s: {len(result.files)} readable radiographs, "
        f"{len(result.skipped)} skipped"
    )
    for error, count in result.error_counts().items():
        print(f"  {count:6d}  {error}")
    if args.report is not None:
        print(f"skipped files and reasons: {args.report}")
    elif result.skipped:
        for s in result.skipped[:_SHOWN]:
            print(f"  {s.path}: {s.error}: {s.reason}")
        if len(result.skipped) > _SHOWN:
            print(f"  ... {len(result.skipped) - _SHOWN} more (use --report CSV for the full list)")
    return 0
