"""``python -m pipeline explain MODEL_DIR --images test``: a heat-map gallery of a model.

``--images`` is a split of the model's own data (``test``, ``val``, ``train``,
``unlabeled``; rebuilt from the ``config.yaml`` saved with the model, or from
``--data DIR``), or DICOM files and folders. Writes ``gallery.png`` and
``gallery.html`` (image, heat-map overlay, prediction with probability, label; grouped
into true positives, false positives, false negatives and true negatives when labels
are known) into ``--out`` (default ``MODEL_DIR/explain-<images>-<method>``), plus
``heatmap_scores.csv`` on the phantom, where the fracture regions are known.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pipeline.explain.cams import EXPLAINERS, ExplainError, ExplainOptions
from pipeline.explain.inputs import (
    SPLITS,
    ModelFolderError,
    expand_files,
    files_dataset,
    model_data,
)
from pipeline.explain.runner import explain_dataset
from pipeline.registry import UnknownNameError
from pipeline.train import load_model
from pipeline.train.runtime import using_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a final model folder")
    parser.add_argument(
        "--images",
        nargs="+",
        default=["test"],
        metavar="SPLIT|FILE",
        help=f"one of {', '.join(SPLITS)} (default test), or DICOM files / folders",
    )
    parser.add_argument("--method", default="gradcam", help="gradcam (default) or lrp")
    parser.add_argument("--n", type=int, default=6, help="images shown per group (default 6)")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument(
        "--data",
        type=Path,
        help="the model's data folder (a model folder does not record where its data is; "
        "not needed for a model trained on the phantom)",
    )
    parser.add_argument(
        "--target",
        default="fracture",
        help="class to explain: fracture (default), predicted, or a class index",
    )
    parser.add_argument(
        "--layer",
        default="auto",
        help="GradCAM layer: auto (default), last, or a backbone module name",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")


def main(args: argparse.Namespace) -> int:
    try:
        EXPLAINERS.get(args.method)
    except UnknownNameError as e:
        print(f"--method: {e}", file=sys.stderr)
        return 2
    if args.n < 0:
        print("--n must be >= 0", file=sys.stderr)
        return 2
    target: str | int = int(args.target) if args.target.isdigit() else args.target
    split = args.images[0] if len(args.images) == 1 and args.images[0] in SPLITS else None
    try:
        with using_threads(args.threads):
            if split is not None:
                md = model_data(args.model_dir, data_dir=args.data, threads=args.threads)
                model, info = md.model, md.info
                dataset = md.split(split)
                data_dir, preprocess = md.prepared.data_dir, md.prepared.index.config
            else:
                model, info = load_model(args.model_dir)
                dataset = files_dataset(expand_files(args.images), info)
                for err in getattr(dataset, "errors", []):
                    print(f"skipped {err.reason}", file=sys.stderr)
                data_dir, preprocess = None, None
            name = split or "files"
            out = args.out or args.model_dir / f"explain-{name}-{args.method}"
            result = explain_dataset(
                model,
                dataset,
                out,
                threshold=float(info.get("threshold", 0.5)),
                method=args.method,
                target=target,
                n=args.n,
                data_dir=data_dir,
                preprocess=preprocess,
                options=ExplainOptions(layer=args.layer),
                title=f"{args.method} heat maps: {name}",
            )
    except (ModelFolderError, FileNotFoundError, ExplainError, UnknownNameError) as e:
        print(f"explain: {e}", file=sys.stderr)
        return 2
    s = result.summary
    print(f"{s['crops']} crops; groups: {s['groups']}")
    if s["scored"]:
        print(
            f"heat-map scores on {s['scored']} fractured crops: mass inside region "
            f"{_f(s['mass_inside'])} (uniform map {_f(s['region_share'])}), "
            f"pointing game {_f(s['pointing_game'])}"
        )
    print(f"wrote {result.gallery.png} and {result.gallery.html}")
    if result.scores_csv is not None:
        print(f"wrote {result.scores_csv}")
    return 0


def _f(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"
