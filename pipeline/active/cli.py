"""``python -m pipeline rank-unlabeled MODEL_DIR --k N``: what to annotate next.

Scores the unlabeled pool of the model's data (rebuilt from the ``config.yaml`` saved
with the model, or from ``--data DIR``) with an acquisition strategy
(:data:`pipeline.active.ACQUISITIONS`, ``entropy`` by default; ``class_balanced``
counts the classes of the model's labeled training and validation crops) and writes,
into ``--out`` (default ``MODEL_DIR/rank-unlabeled``):

- ``to_label.csv``: the N crops most worth annotating, best first, with
  de-identified keys (the image's salted pseudonym and the patient's), laterality,
  the strategy's score, the predicted class and P(fracture). File paths are left out
  (they can carry names) unless ``--show-paths`` is given.
- ``contact_sheet.png``: those crops in rank order, captioned with rank and key.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pipeline.active.strategies import ACQUISITIONS, Pool, acquire, list_strategies
from pipeline.deid import pseudonym, resolve_salt
from pipeline.explain.inputs import ModelFolderError, infer, model_data
from pipeline.io import atomic_write_bytes, atomic_write_text
from pipeline.registry import UnknownNameError
from pipeline.train.batches import dataset_labels
from pipeline.train.runtime import using_threads

COLUMNS = (
    "rank",
    "image_key",
    "patient_key",
    "laterality",
    "strategy",
    "score",
    "predicted",
    "p_predicted",
    "p_fracture",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a final model folder")
    parser.add_argument("--k", type=int, required=True, help="how many images to propose")
    parser.add_argument(
        "--strategy",
        default="entropy",
        help=f"acquisition strategy: {', '.join(list_strategies())} (default entropy)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default MODEL_DIR/rank-unlabeled)")
    parser.add_argument(
        "--data",
        type=Path,
        help="the model's data folder (a model folder does not record where its data is; "
        "not needed for a model trained on the phantom)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random draws (default 0)")
    parser.add_argument(
        "--show-paths",
        action="store_true",
        help="add the file path to the CSV (paths can carry patient names)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")


def main(args: argparse.Namespace) -> int:
    try:
        ACQUISITIONS.get(args.strategy)
    except UnknownNameError as e:
        print(f"--strategy: {e}", file=sys.stderr)
        return 2
    if args.k < 1:
        print("--k must be >= 1", file=sys.stderr)
        return 2
    try:
        with using_threads(args.threads):
            md = model_data(args.model_dir, data_dir=args.data, threads=args.threads)
            ranked = rank_unlabeled(md, k=args.k, strategy=args.strategy, seed=args.seed)
    except (ModelFolderError, FileNotFoundError) as e:
        print(f"rank-unlabeled: {e}", file=sys.stderr)
        return 2
    pool = md.prepared.unlabeled
    if not len(pool):
        print("rank-unlabeled: the data has no unlabeled images", file=sys.stderr)
        return 2
    out = args.out or args.model_dir / "rank-unlabeled"
    csv_path, sheet = write_ranking(ranked, pool, out, show_paths=args.show_paths)
    if len(ranked) < args.k:
        print(f"the pool holds only {len(ranked)} unlabeled crops")
    print(f"{len(ranked)} of {len(pool)} unlabeled crops ranked by {args.strategy}")
    print(f"wrote {csv_path} and {sheet}")
    return 0


def rank_unlabeled(md: Any, *, k: int, strategy: str, seed: int = 0) -> list[dict[str, Any]]:
    """The ``k`` unlabeled crops ``strategy`` ranks highest, as rows (best first).

    Each row holds the pool index (``index``) besides the CSV columns.
    """
    pool_set = md.prepared.unlabeled
    if not len(pool_set):
        return []
    needs = ACQUISITIONS.get(strategy).needs_embeddings
    probs, feats = infer(md.model, pool_set, features=needs)
    seen = [s for s in (md.prepared.train, md.prepared.val) if len(s)]  # the labeled crops
    labeled = classes_known = None
    if seen:
        if needs:
            labeled = np.concatenate([infer(md.model, s, features=True)[1] for s in seen])
        classes_known = md.model.task.encode_many(np.concatenate([dataset_labels(s) for s in seen]))
        classes_known = classes_known[classes_known >= 0]  # (M,)
    pool = Pool(
        probs=probs, embeddings=feats, labeled_embeddings=labeled, labeled_classes=classes_known
    )
    chosen = acquire(strategy, pool, k, np.random.default_rng(seed))
    salt = resolve_salt()
    classes = md.model.task.classes
    rows = []
    for rank, (i, score) in enumerate(zip(chosen.indices.tolist(), chosen.scores.tolist()), 1):
        item = pool_set.items[i]
        pred = int(np.argmax(probs[i]))
        rows.append(
            {
                "index": i,
                "rank": rank,
                "image_key": pseudonym("image", item.file, salt),
                "patient_key": item.patient,
                "laterality": item.laterality or "",
                "strategy": strategy,
                "score": round(float(score), 6),
                "predicted": classes[pred],
                "p_predicted": round(float(probs[i, pred]), 6),
                "p_fracture": round(float(1.0 - probs[i, 0]), 6),
            }
        )
    return rows


def write_ranking(
    rows: list[dict[str, Any]], pool: Any, out_dir: str | Path, *, show_paths: bool = False
) -> tuple[Path, Path]:
    """``to_label.csv`` and ``contact_sheet.png`` of ranked rows (module docstring)."""
    out = Path(out_dir)
    columns = [*COLUMNS, "file"] if show_paths else list(COLUMNS)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        extra = {"file": pool.items[row["index"]].file} if show_paths else {}
        writer.writerow({**row, **extra})
    csv_path = atomic_write_text(out / "to_label.csv", buf.getvalue())
    sheet = atomic_write_bytes(out / "contact_sheet.png", contact_sheet(rows, pool))
    return csv_path, sheet


def contact_sheet(rows: list[dict[str, Any]], pool: Any, *, columns: int = 8) -> bytes:
    """PNG of the ranked crops (frontal view), captioned with rank, key and prediction."""
    n = max(1, len(rows))
    cols = min(columns, n)
    grid_rows = (n + cols - 1) // cols
    fig = Figure(figsize=(cols * 1.5, grid_rows * 1.75))  # (no pyplot: no backend, no close)
    axes = fig.subplots(grid_rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        image = pool[row["index"]]["image"][0].numpy()  # (H, W) frontal channel
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        lat = f" {row['laterality']}" if row["laterality"] else ""
        ax.set_title(
            f"#{row['rank']} {row['image_key']}{lat}\n{row['predicted']} "
            f"{row['p_predicted']:.2f} | score {row['score']:.3g}",
            fontsize=5.5,
        )
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no unlabeled images", ha="center", fontsize=8)
    fig.suptitle(f"To label next ({rows[0]['strategy'] if rows else 'none'})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()
