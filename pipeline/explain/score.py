"""Heat-map quality where the truth is known: mass inside the fracture region, pointing game.

A heat map lives on the model's input crop (say 64 x 64); the phantom's fracture
regions are polygons in source-image pixels. :class:`CropGeometry` is the map between
the two: the preprocessing chain cuts a box out of the source image (cleaning,
knee localisation), pads it to a square and resizes it, and records the result as one
axis-aligned affine map ``x_src = u * sx + tx``, ``y_src = v * sy + ty`` in *edge*
coordinates (crop pixel ``u`` covers source columns ``[u*sx + tx, (u+1)*sx + tx)``).
:func:`crop_geometry` recovers that map exactly by running the saved preprocessing
chain on the source file again.

Two numbers per heat map (both in source-image space, so a map that puts its mass on
the padding around an image is not rewarded):

- **mass inside** (``mass_inside``): the share of the map's total mass that falls
  inside the true region. Each crop pixel spreads its value evenly over the source
  pixels it covers, and mass over padding or outside the image counts as outside.
  A uniform map scores the region's share of the crop footprint (``region_share``),
  the chance level to compare with.
- **pointing game** (Zhang et al., "Top-down neural attention by excitation
  backprop", ECCV 2016): a hit when the map's maximum lies inside the region, or
  within ``tolerance`` crop pixels of it. The default is the paper's 15 pixels at a
  224 px input, scaled to the crop (:data:`POINTING_TOLERANCE` of the crop's side:
  4.3 crop pixels at 64 px). Ties for the maximum go to the first pixel in row order.

Polygon vertices follow the phantom's convention (``pipeline.synth``): pixel
``(x, y)`` has its centre at integer coordinates; they are rasterised with
``cv2.fillPoly`` at 1/16 pixel precision, exactly as the phantom draws its masks.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.dicom import read_radiograph
from pipeline.preprocess import PreprocessConfig, PreprocessWarning, run_steps

Polygon = Sequence[Sequence[float]]  # [[x, y], ...] in source pixels

#: Default pointing-game tolerance as a share of the crop's side: 15 px at 224 px
#: (Zhang et al. 2016), see the module docstring.
POINTING_TOLERANCE = 15 / 224


@dataclass(frozen=True, kw_only=True)
class CropGeometry:
    """Where a crop's pixels come from in its source image (module docstring)."""

    to_source: tuple[float, float, float, float]  # (sx, tx, sy, ty), edge coordinates
    crop_shape: tuple[int, int]  # (h, w) of the crop the model sees
    source_shape: tuple[int, int]  # (H, W) of the decoded source image

    def crop_to_source(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[Any, Any]:
        """Crop pixel centres (u = column, v = row) -> source coordinates (pixel-centre
        convention, like the polygons)."""
        sx, tx, sy, ty = self.to_source
        return (np.asarray(u) + 0.5) * sx + tx - 0.5, (np.asarray(v) + 0.5) * sy + ty - 0.5

    def footprint(self) -> tuple[int, int, int, int]:
        """Source pixels (x0, y0, x1, y1), end exclusive, that the crop covers (may
        reach outside the image where the crop was padded)."""
        sx, tx, sy, ty = self.to_source
        h, w = self.crop_shape
        return math.floor(tx), math.floor(ty), math.ceil(tx + w * sx), math.ceil(ty + h * sy)


@dataclass(frozen=True, kw_only=True)
class Canvas:
    """A source-space grid covering both the image and the crop's footprint."""

    x0: int  # source column of canvas column 0 (negative where the crop was padded)
    y0: int
    shape: tuple[int, int]  # (rows, columns)


def canvas_for(geometry: CropGeometry) -> Canvas:
    """The smallest grid holding the source image and everything the crop covers."""
    fx0, fy0, fx1, fy1 = geometry.footprint()
    h, w = geometry.source_shape
    x0, y0 = min(0, fx0), min(0, fy0)
    x1, y1 = max(w, fx1), max(h, fy1)
    return Canvas(x0=x0, y0=y0, shape=(y1 - y0, x1 - x0))


def heatmap_to_source(
    heat: np.ndarray, geometry: CropGeometry, canvas: Canvas | None = None
) -> tuple[np.ndarray, Canvas]:
    """A crop-space map (h, w) as a source-space map on ``canvas`` (rows, columns).

    Each source pixel takes the value of the crop pixel its centre falls in (the crop
    pixel's value spread evenly over its footprint); pixels the crop does not cover
    get 0. Returns the map and the canvas it is drawn on.
    """
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != tuple(geometry.crop_shape):
        raise ValueError(f"heat map has shape {heat.shape}, the crop is {geometry.crop_shape}")
    canvas = canvas or canvas_for(geometry)
    sx, tx, sy, ty = geometry.to_source
    rows, cols = canvas.shape
    # crop pixel of each source pixel centre (edge coordinates: centre = index + 0.5)
    u = np.floor((np.arange(cols) + canvas.x0 + 0.5 - tx) / sx).astype(np.int64)  # (cols,)
    v = np.floor((np.arange(rows) + canvas.y0 + 0.5 - ty) / sy).astype(np.int64)  # (rows,)
    h, w = heat.shape
    ok_u, ok_v = (u >= 0) & (u < w), (v >= 0) & (v < h)
    out = np.zeros((rows, cols), dtype=np.float64)
    out[np.ix_(ok_v, ok_u)] = heat[np.ix_(v[ok_v], u[ok_u])]
    return out, canvas


def region_mask(polygons: Iterable[Polygon], canvas: Canvas) -> np.ndarray:
    """Boolean mask (rows, columns) of the polygons drawn on ``canvas``."""
    mask = np.zeros(canvas.shape, dtype=np.uint8)
    pts = [
        np.round((np.asarray(p, dtype=np.float64) - (canvas.x0, canvas.y0)) * 16).astype(np.int32)
        for p in polygons
        if len(p) >= 3
    ]
    if pts:
        cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map's mass inside ``mask``; NaN for an empty map."""
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
    total = float(heat.sum())
    if total <= 0.0:
        return math.nan
    return float(heat[mask].sum() / total)


def pointing_hit(
    heat: np.ndarray,
    geometry: CropGeometry,
    mask: np.ndarray,
    canvas: Canvas,
    *,
    tolerance: float | None = None,
) -> bool:
    """Whether the crop-space map's maximum lies within ``tolerance`` crop pixels of the
    region (``mask`` on ``canvas``); ``None``: :data:`POINTING_TOLERANCE` of the side."""
    heat = np.asarray(heat)
    if tolerance is None:
        tolerance = POINTING_TOLERANCE * max(geometry.crop_shape)
    if not mask.any():
        return False
    v, u = np.unravel_index(int(np.argmax(heat)), heat.shape)
    x, y = geometry.crop_to_source(float(u), float(v))
    col, row = round(float(x)) - canvas.x0, round(float(y)) - canvas.y0
    rows, cols = mask.shape
    if not (0 <= row < rows and 0 <= col < cols):
        return False
    if mask[row, col]:
        return True
    # distance (source pixels) from every pixel to the nearest region pixel
    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    sx, _, sy, _ = geometry.to_source
    return bool(dist[row, col] <= tolerance * max(sx, sy))


@dataclass(frozen=True, kw_only=True)
class HeatmapScore:
    """Scores of one heat map against the true region."""

    mass_inside: float  # share of the map's mass inside the region (0..1)
    pointing_hit: bool  # the map's maximum is inside the region (within the tolerance)
    region_share: float  # share of the crop's footprint the region covers: chance level
    empty: bool = False  # the map has no positive value: scored 0 and a miss


def score_heatmap(
    heat: np.ndarray,
    geometry: CropGeometry,
    polygons: Iterable[Polygon],
    *,
    tolerance: float | None = None,
) -> HeatmapScore:
    """Mass inside and pointing-game hit of a crop-space map against source polygons.

    A map with no positive value (no evidence anywhere) scores 0 and a miss: it does
    not point at the fracture.
    """
    source_heat, canvas = heatmap_to_source(heat, geometry)
    mask = region_mask(polygons, canvas)
    covered, _ = heatmap_to_source(np.ones(geometry.crop_shape), geometry, canvas)
    area = float(covered.sum())
    share = mass_inside(source_heat, mask)
    empty = math.isnan(share)
    return HeatmapScore(
        mass_inside=0.0 if empty else share,
        pointing_hit=False
        if empty
        else pointing_hit(heat, geometry, mask, canvas, tolerance=tolerance),
        region_share=float(covered[mask].sum() / area) if area > 0 else math.nan,
        empty=empty,
    )


# ----------------------------------------------------------------------------- phantom truth


def load_regions(data_dir: str | Path) -> dict[tuple[str, str | None], list[list[list[float]]]]:
    """Fracture polygons of a phantom set by ``(file, laterality)``; ``{}`` elsewhere.

    ``(file, None)`` holds every knee's polygons of the file (for crops made without
    localisation, which show the whole image).
    """
    data_dir = Path(data_dir)
    path = data_dir / "truth.jsonl"
    if not (data_dir / "synth.json").exists() or not path.exists():
        return {}
    regions: dict[tuple[str, str | None], list[list[list[float]]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            every: list[list[list[float]]] = []
            for knee in rec.get("knees") or []:
                polys = [p for p in knee.get("fracture_polygons") or [] if len(p) >= 3]
                regions[(rec["file"], knee.get("laterality"))] = polys
                every += polys
            regions[(rec["file"], None)] = every
    return regions


def regions_of(
    regions: Mapping[tuple[str, str | None], list[Any]], file: str, laterality: str | None
) -> list[Any]:
    """The polygons a crop of ``file`` with ``laterality`` shows (all knees' when the
    crop's laterality is unknown or names no knee of the file)."""
    if (file, laterality) in regions:
        return list(regions[(file, laterality)])
    return list(regions.get((file, None)) or [])


def crop_geometry(path: str | Path, preprocess: Any, crop: int = 0) -> CropGeometry:
    """The exact geometry of crop number ``crop`` of ``path`` under a preprocessing config.

    Runs the chain again (``pipeline.preprocess.run_steps``; deterministic, so the
    crop is the cached one) and reads the map it recorded. ``preprocess`` is a
    ``PreprocessConfig`` or a trial's preprocessing keys.
    """
    config = (
        preprocess
        if isinstance(preprocess, PreprocessConfig)
        else PreprocessConfig.from_trial(preprocess)
    )
    with warnings.catch_warnings():  # fallbacks were reported when the cache was built
        warnings.simplefilter("ignore", PreprocessWarning)
        works = run_steps(read_radiograph(path), config)
    if not 0 <= crop < len(works):
        raise ValueError(f"{path}: the preprocessing gives {len(works)} crops, not crop {crop}")
    work = works[crop]
    return CropGeometry(
        to_source=tuple(float(v) for v in work.to_source),  # type: ignore[arg-type]
        crop_shape=(int(work.image.shape[0]), int(work.image.shape[1])),
        source_shape=(int(work.source_shape[0]), int(work.source_shape[1])),
    )


def summarize(scores: Sequence[HeatmapScore]) -> dict[str, float]:
    """Means over maps: ``mass_inside``, ``pointing_game`` (hit rate), ``region_share``;
    ``n`` maps, of which ``empty`` had no positive value."""
    if not scores:
        nan = math.nan
        return {"n": 0, "empty": 0, "mass_inside": nan, "pointing_game": nan, "region_share": nan}
    return {
        "n": len(scores),
        "empty": int(sum(s.empty for s in scores)),
        "mass_inside": float(np.mean([s.mass_inside for s in scores])),
        "pointing_game": float(np.mean([s.pointing_hit for s in scores])),
        "region_share": float(np.nanmean([s.region_share for s in scores])),
    }
