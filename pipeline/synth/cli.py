"""``python -m pipeline synth``: write the synthetic knee-radiograph phantom set."""

from __future__ import annotations

import argparse
import json
import sys

from .clinical import STYLES
from .dataset import DEFAULT_FRACTURE_RATE, generate
from .dicom_writer import TRANSFER_SYNTAXES
from .parts import ALL_OTHER_PARTS
from .plan import DEFAULT_OTHER_SHARE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (dicom/, labels.csv, ...)")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True, help="seed: same seed, same bytes")
    parser.add_argument(
        "--size", type=int, default=512, help="long side of each image in pixels (default 512)"
    )
    parser.add_argument(
        "--labeled-fraction",
        type=float,
        default=0.3,
        help="share of knee studies that carry a label (default 0.3)",
    )
    parser.add_argument(
        "--fracture-rate",
        type=float,
        default=DEFAULT_FRACTURE_RATE,
        help=f"share of patients with a fracture (default {DEFAULT_FRACTURE_RATE})",
    )
    parser.add_argument(
        "--transfer-syntax",
        action="append",
        choices=list(TRANSFER_SYNTAXES),
        dest="transfer_syntaxes",
        help="restrict to this transfer syntax (repeatable; default: all four)",
    )
    parser.add_argument(
        "--other-parts",
        type=_parts,
        default=None,
        help="what the studies that are not a knee study show: comma-separated names from "
        f"{','.join(ALL_OTHER_PARTS)}, or 'all' (default HAND,ANKLE)",
    )
    parser.add_argument(
        "--other-share",
        type=float,
        default=DEFAULT_OTHER_SHARE,
        help=f"share of studies that show one of them (default {DEFAULT_OTHER_SHARE})",
    )
    parser.add_argument(
        "--style",
        choices=list(STYLES),
        default="phantom",
        help="'clinical': framed and marked as real archives are (default 'phantom')",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")


def _parts(text: str) -> list[str]:
    return list(ALL_OTHER_PARTS) if text.strip().lower() == "all" else text.upper().split(",")


def main(args: argparse.Namespace) -> int:
    try:
        summary = generate(
            args.out,
            args.n,
            args.seed,
            size=args.size,
            labeled_fraction=args.labeled_fraction,
            fracture_rate=args.fracture_rate,
            transfer_syntaxes=args.transfer_syntaxes,
            other_parts=args.other_parts,
            other_share=args.other_share,
            style=args.style,
            workers=args.workers,
        )
    except ValueError as e:
        print(f"python -m pipeline synth: {e}", file=sys.stderr)
        return 2
    counts = summary["counts"]
    print(
        f"wrote {counts['images']} DICOM files ({counts['patients']} patients, "
        f"{counts['studies']} studies, {counts['fractured_images']} with a fracture) "
        f"to {summary['out_dir']} in {summary['seconds']:.1f} s"
    )
    print(json.dumps(counts, indent=2))
    return 0
