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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.deid import pseudonym, resolve_salt
from pipeline.explain.cams import ExplainOptions, Heatmaps, heatmaps
from pipeline.explain.gallery import GROUPS, GalleryFiles, GalleryItem, group_of, write_gallery
from pipeline.explain.inputs import images, infer
from pipeline.explain.score import (
    POINTING_TOLERANCE,
    HeatmapScore,
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


@dataclass(frozen=True)
class _Predictions:
    """The model's outputs on a dataset, beside what the dataset says of its crops."""

    items: list[Any]
    labels: np.ndarray  # (N,) raw Schatzker grades, -1 = unlabeled
    probs: np.ndarray  # (N, C)
    p_fracture: np.ndarray  # (N,)
    task: Any

    @classmethod
    def of(cls, model: Any, dataset: Any) -> _Predictions:
        probs, _ = infer(model, dataset)
        return cls(
            items=list(dataset.items),
            labels=np.asarray(dataset.labels, dtype=np.int64),
            probs=probs,
            p_fracture=1.0 - probs[:, 0] if len(probs) else np.zeros(0),
            task=model.task,
        )

    def label_name(self, i: int) -> str:
        return self.task.classes[self.task.encode(int(self.labels[i]))]


def _order(group: str, p_fracture: np.ndarray, idx: list[int]) -> list[int]:
    """Most telling first: confident hits and confident mistakes."""
    descending = group in ("true positive", "false positive", "unlabeled")
    return sorted(idx, key=lambda i: (-p_fracture[i] if descending else p_fracture[i], i))


def _groups(pred: _Predictions, threshold: float) -> dict[str, list[int]]:
    """Crop indices per gallery group (true / false positive / negative, unlabeled)."""
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for i, label in enumerate(pred.labels):
        known = None if label < 0 else bool(label > 0)
        groups[group_of(known, bool(pred.p_fracture[i] >= threshold))].append(i)
    return groups


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = _Predictions.of(model, dataset)
    groups = _groups(pred, threshold)
    shown = {g: _order(g, pred.p_fracture, idx)[: max(0, n)] for g, idx in groups.items()}
    regions = load_regions(data_dir) if (score and data_dir is not None) else {}
    scored = [
        i
        for i, (item, label) in enumerate(zip(pred.items, pred.labels))
        if regions and label > 0 and regions_of(regions, item.file, item.laterality)
    ]
    if scored and preprocess is None:
        raise ValueError("scoring heat maps needs the preprocessing configuration (preprocess=)")
    needed = sorted({i for idx in shown.values() for i in idx} | set(scored))
    x = images(dataset, needed)  # (M, C, H, W)
    maps = heatmaps(model, x, method=method, target=target, options=options) if needed else None
    at = {i: k for k, i in enumerate(needed)}
    score_of = {
        i: _score(pred.items[i], maps.maps[at[i]], data_dir, preprocess, regions, tolerance)
        for i in scored
    }
    salt_bytes = resolve_salt(salt)
    rows = [
        _score_row(pred, i, s, pseudonym("image", pred.items[i].file, salt_bytes), maps, at[i])
        for i, s in score_of.items()
    ]
    gallery_items = [
        _gallery_item(
            pred, i, g, x[at[i], 0].numpy(), maps.maps[at[i]], score_of.get(i), salt_bytes
        )
        for g, idx in shown.items()
        for i in idx
    ]
    side = int(x.shape[-1]) if len(x) else 0
    tol = tolerance if tolerance is not None else POINTING_TOLERANCE * side
    layer = maps.layer if maps is not None else None
    summary = _summary(pred, groups, list(score_of.values()), layer, method, target, threshold, tol)
    gallery = write_gallery(
        gallery_items,
        out,
        title=title or f"{METHOD_NAMES.get(method, method)} heat maps",
        notes=_notes(summary, getattr(model, "backbone_name", "the model"), pred.task.name),
        totals={g: len(idx) for g, idx in groups.items()},
    )
    scores_csv = _write_scores(rows, out / "heatmap_scores.csv") if rows else None
    atomic_write_json(
        out / "explain.json",
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()},
    )
    return ExplainResult(gallery=gallery, summary=summary, scores=rows, scores_csv=scores_csv)


def _score(
    item: Any,
    heat: np.ndarray,
    data_dir: str | Path,
    preprocess: Any,
    regions: Mapping[tuple[str, str | None], list[Any]],
    tolerance: float | None,
) -> HeatmapScore:
    """The heat map (H, W) of a crop scored against its source file's fracture regions."""
    crop = int(getattr(item.entry, "crop", 0))
    geometry = crop_geometry(Path(data_dir) / item.file, preprocess, crop)
    polygons = regions_of(regions, item.file, item.laterality)
    return score_heatmap(heat, geometry, polygons, tolerance=tolerance)


def _score_row(
    pred: _Predictions, i: int, s: HeatmapScore, key: str, maps: Heatmaps, k: int
) -> dict[str, Any]:
    """One row of ``heatmap_scores.csv`` (:data:`SCORE_COLUMNS`): crop ``i``, map ``k``."""
    return {
        "image_key": key,
        "laterality": pred.items[i].laterality or "",
        "label": pred.label_name(i),
        "p_fracture": round(float(pred.p_fracture[i]), 6),
        "explained_class": pred.task.classes[int(maps.classes[k])],
        "mass_inside": round(s.mass_inside, 6),
        "pointing_hit": int(s.pointing_hit),
        "region_share": round(s.region_share, 6),
        "empty_map": int(s.empty),
    }


def _gallery_item(
    pred: _Predictions,
    i: int,
    group: str,
    image: np.ndarray,
    heat: np.ndarray,
    s: HeatmapScore | None,
    salt: bytes,
) -> GalleryItem:
    """Crop ``i`` of ``group`` as the gallery shows it: its image (H, W) and heat map."""
    item = pred.items[i]
    predicted = int(np.argmax(pred.probs[i]))
    lat = f" {item.laterality}" if item.laterality else ""
    return GalleryItem(
        key=pseudonym("image", item.file, salt) + lat,
        image=image,
        heat=heat,
        predicted=pred.task.classes[predicted],
        probability=float(pred.probs[i, predicted]),
        p_fracture=float(pred.p_fracture[i]),
        label=pred.label_name(i) if pred.labels[i] >= 0 else None,
        group=group,
        mass_inside=s.mass_inside if s is not None else None,
        pointing_hit=s.pointing_hit if s is not None else None,
    )


def _summary(
    pred: _Predictions,
    groups: Mapping[str, list[int]],
    scores: list[HeatmapScore],
    layer: str | None,
    method: str,
    target: str | int,
    threshold: float,
    tolerance: float,
) -> dict[str, Any]:
    """``explain.json``: what was explained, the group sizes and the heat-map score means."""
    stats = summarize(scores)
    return {
        "method": method,
        "layer": layer,
        "target": target,
        "threshold": float(threshold),
        "crops": len(pred.items),
        "groups": {g: len(idx) for g, idx in groups.items() if idx},
        "scored": stats["n"],
        "empty_maps": stats["empty"],
        **{key: stats[key] for key in ("mass_inside", "pointing_game", "region_share")},
        "pointing_tolerance_crop_px": tolerance,
    }


def _notes(summary: Mapping[str, Any], backbone: str, task: str) -> list[str]:
    """The gallery's notes: what was explained, then the scores when there are any."""
    s = summary
    name = METHOD_NAMES.get(s["method"], s["method"])
    where = f" on layer {s['layer']!r}" if s["layer"] else ""
    target = "fracture" if s["target"] == "fracture" else s["target"]
    notes = [
        f"{name}{where} of {backbone} ({task} task), explaining the {target} class; decision "
        f"threshold {s['threshold']:.3f} on P(fracture).",
    ]
    if s["scored"]:
        notes.append(
            f"On {s['scored']} fractured crops with known regions: share of heat-map mass "
            f"inside the fracture region {s['mass_inside']:.3f} (a uniform map: "
            f"{s['region_share']:.3f}); pointing game {s['pointing_game']:.3f} "
            f"(tolerance {s['pointing_tolerance_crop_px']:.1f} crop pixels)."
            + (f" {s['empty_maps']} maps were empty (scored 0)." if s["empty_maps"] else "")
        )
    return notes


def _write_scores(rows: list[dict[str, Any]], path: Path) -> Path:
    """The heat-map scores as CSV (:data:`SCORE_COLUMNS`), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SCORE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


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
