"""Explain a dataset: predictions, heat maps, the gallery and, on the phantom, scores.

:func:`explain_dataset` is what ``python -m pipeline explain`` and the final report
run: it predicts every crop, sorts the crops into true / false positives / negatives
(by the model's decision threshold on P(fracture)), draws heat maps for the ``n``
most telling of each group (the most confident hits and mistakes), and, where the
data folder is a phantom set, scores the heat maps of every fractured crop against
the true fracture region (:mod:`pipeline.explain.score`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.explain.cams import ExplainOptions, heatmaps
from pipeline.explain.gallery import GROUPS, GalleryFiles, GalleryItem, group_of, write_gallery
from pipeline.explain.inputs import images, infer
from pipeline.explain.score import (
    POINTING_TOLERANCE,
    crop_geometry,
    load_regions,
    regions_of,
    score_heatmap,
    summarize,
)
from pipeline.io import atomic_write_json, atomic_write_text

METHOD_NAMES = {"gradcam": "GradCAM", "lrp": "LRP"}
SCORE_COLUMNS = (
    "image_key",
    "laterality",
    "label",
    "p_fracture",
    "explained_class",
    "mass_inside",
    "pointing_hit",
    "region_share",
    "empty_map",
)


@dataclass
class ExplainResult:
    """What :func:`explain_dataset` wrote and measured."""

    gallery: GalleryFiles
    summary: dict[str, Any]  # method, layer, counts, heat-map score means
    scores: list[dict[str, Any]] = field(default_factory=list)  # one row per scored crop
    scores_csv: Path | None = None


def _order(group: str, p_fracture: np.ndarray, idx: list[int]) -> list[int]:
    """Most telling first: confident hits and confident mistakes."""
    descending = group in ("true positive", "false positive", "unlabeled")
    return sorted(idx, key=lambda i: (-p_fracture[i] if descending else p_fracture[i], i))


def explain_dataset(
    model: Any,
    dataset: Any,
    out_dir: str | Path,
    *,
    threshold: float,
    method: str = "gradcam",
    target: str | int = "fracture",
    n: int = 6,
    data_dir: str | Path | None = None,
    preprocess: Any = None,
    options: ExplainOptions | None = None,
    title: str | None = None,
    salt: str | bytes | None = None,
    score: bool = True,
    tolerance: float | None = None,
) -> ExplainResult:
    """Gallery (and phantom scores) of ``model`` on ``dataset`` into ``out_dir``.

    ``threshold``: the decision threshold on P(fracture) (the model's). ``data_dir`` and
    ``preprocess`` (the model's preprocessing keys or config) locate the source files
    for scoring; without them, or when the folder is not a phantom set, nothing is
    scored. ``n``: crops shown per group. ``tolerance``: the pointing game's, in crop
    pixels (default :data:`~pipeline.explain.score.POINTING_TOLERANCE` of the side).
    """
    from pipeline.deid import pseudonym, resolve_salt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = options or ExplainOptions()
    salt_bytes = resolve_salt(salt)
    task = model.task
    probs, _ = infer(model, dataset)
    p_fracture = 1.0 - probs[:, 0] if len(probs) else np.zeros(0)
    raw = np.asarray(dataset.labels, dtype=np.int64)
    items = list(dataset.items)
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for i, label in enumerate(raw):
        known = None if label < 0 else bool(label > 0)
        groups[group_of(known, bool(p_fracture[i] >= threshold))].append(i)
    shown = {g: _order(g, p_fracture, idx)[: max(0, n)] for g, idx in groups.items()}

    regions = load_regions(data_dir) if (score and data_dir is not None) else {}
    scored = [
        i
        for i, label in enumerate(raw)
        if regions and label > 0 and regions_of(regions, items[i].file, items[i].laterality)
    ]
    if scored and preprocess is None:
        raise ValueError("scoring heat maps needs the preprocessing configuration (preprocess=)")
    needed = sorted({i for idx in shown.values() for i in idx} | set(scored))
    x = images(dataset, needed)  # (M, C, H, W)
    maps = heatmaps(model, x, method=method, target=target, options=options) if needed else None
    at = {i: k for k, i in enumerate(needed)}

    rows: list[dict[str, Any]] = []
    score_of: dict[int, Any] = {}
    for i in scored:
        item = items[i]
        geometry = crop_geometry(
            Path(data_dir) / item.file, preprocess, int(getattr(item.entry, "crop", 0))
        )
        s = score_heatmap(
            maps.maps[at[i]],
            geometry,
            regions_of(regions, item.file, item.laterality),
            tolerance=tolerance,
        )
        score_of[i] = s
        rows.append(
            {
                "image_key": pseudonym("image", item.file, salt_bytes),
                "laterality": item.laterality or "",
                "label": task.classes[task.encode(int(raw[i]))],
                "p_fracture": round(float(p_fracture[i]), 6),
                "explained_class": task.classes[int(maps.classes[at[i]])],
                "mass_inside": round(s.mass_inside, 6),
                "pointing_hit": int(s.pointing_hit),
                "region_share": round(s.region_share, 6),
                "empty_map": int(s.empty),
            }
        )

    gallery_items = []
    for g, idx in shown.items():
        for i in idx:
            item, k = items[i], at[i]
            pred = int(np.argmax(probs[i]))
            s = score_of.get(i)
            lat = f" {item.laterality}" if item.laterality else ""
            gallery_items.append(
                GalleryItem(
                    key=pseudonym("image", item.file, salt_bytes) + lat,
                    image=x[k, 0].numpy(),
                    heat=maps.maps[k],
                    predicted=task.classes[pred],
                    probability=float(probs[i, pred]),
                    p_fracture=float(p_fracture[i]),
                    label=task.classes[task.encode(int(raw[i]))] if raw[i] >= 0 else None,
                    group=g,
                    mass_inside=s.mass_inside if s is not None else None,
                    pointing_hit=s.pointing_hit if s is not None else None,
                )
            )

    name = METHOD_NAMES.get(method, method)
    layer = maps.layer if maps is not None else None
    stats = summarize(list(score_of.values()))
    side = int(x.shape[-1]) if len(x) else 0
    tol = tolerance if tolerance is not None else POINTING_TOLERANCE * side
    summary: dict[str, Any] = {
        "method": method,
        "layer": layer,
        "target": target,
        "threshold": float(threshold),
        "crops": len(items),
        "groups": {g: len(idx) for g, idx in groups.items() if idx},
        "scored": stats["n"],
        "empty_maps": stats["empty"],
        "mass_inside": stats["mass_inside"],
        "pointing_game": stats["pointing_game"],
        "region_share": stats["region_share"],
        "pointing_tolerance_crop_px": tol,
    }
    where = f" on layer {layer!r}" if layer else ""
    notes = [
        f"{name}{where} of {getattr(model, 'backbone_name', 'the model')} ({task.name} task), "
        f"explaining the {'fracture' if target == 'fracture' else target} class; decision "
        f"threshold {threshold:.3f} on P(fracture).",
    ]
    if stats["n"]:
        notes.append(
            f"On {stats['n']} fractured crops with known regions: share of heat-map mass "
            f"inside the fracture region {stats['mass_inside']:.3f} (a uniform map: "
            f"{stats['region_share']:.3f}); pointing game {stats['pointing_game']:.3f} "
            f"(tolerance {tol:.1f} crop pixels)."
            + (f" {stats['empty']} maps were empty (scored 0)." if stats["empty"] else "")
        )
    gallery = write_gallery(
        gallery_items,
        out,
        title=title or f"{name} heat maps",
        notes=notes,
        totals={g: len(idx) for g, idx in groups.items()},
    )
    scores_csv = None
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(SCORE_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        scores_csv = atomic_write_text(out / "heatmap_scores.csv", buf.getvalue())
    atomic_write_json(
        out / "explain.json",
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()},
    )
    return ExplainResult(gallery=gallery, summary=summary, scores=rows, scores_csv=scores_csv)


def final_gallery(
    model: Any,
    prepared: Any,
    out_dir: str | Path,
    *,
    threshold: float,
    method: str = "gradcam",
    n: int = 6,
) -> str:
    """The final report's gallery of the test set (TP, FP, FN, TN), as an HTML fragment.

    Writes ``gallery.png``, ``gallery.html``, ``gallery/`` and, on the phantom,
    ``heatmap_scores.csv`` and ``explain.json`` into ``out_dir`` (the model folder).
    """
    result = explain_dataset(
        model,
        prepared.test,
        out_dir,
        threshold=threshold,
        method=method,
        n=n,
        data_dir=prepared.data_dir,
        preprocess=getattr(prepared.index, "config", None),
        title=f"{METHOD_NAMES.get(method, method)} heat maps on the test set",
    )
    return result.gallery.fragment
