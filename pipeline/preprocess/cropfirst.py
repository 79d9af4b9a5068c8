"""Crop-first preprocessing of a file: decode once, analyse small, grey-level the crops only.

``preprocess_file(path, config)`` gives the crops :func:`pipeline.preprocess.preprocess`
gives for ``read_radiograph(path)``, at a fraction of the cost, for the chains that
start with ``clean`` (optionally followed by ``localize``) and continue with the
built-in pixel steps (``window``, ``clahe``, ``pad_square``, ``resize``), as every
trial's chain does. Instead of running the grey-level chain on every pixel and
cleaning, masking and localising at full resolution, it

1. decodes the stored values once (:func:`pipeline.dicom.read_raw`);
2. area-averages them to ``clean``'s analysis size and runs the grey-level chain on
   that small copy only: the analysis image is ``chain(downsample(raw))`` where
   the full-resolution chain had ``downsample(chain(raw))`` (the same for an affine
   chain except where the window clips, and within a few grey levels for a table);
3. runs ``clean``'s analysis (borders, marks, anatomy mask) on it, and the
   localizer on the cleaned analysis copy when it is detailed enough (the localizer
   scans at a fixed scale anyway), else on the cleaned region area-averaged from
   the stored values to the scan scale;
4. maps the knee box(es) back to source pixels, cuts them out of the stored values,
   area-averages each cut to the largest size a later step keeps (``clahe``'s
   working size or the ``resize`` size), runs the grey-level chain, blanks it
   outside the anatomy (the analysis mask, nearest) and fills the marks;
5. runs the remaining steps (``window``, ``clahe``, ...) on the small crops as usual.

Outputs differ from the full-resolution chain by rounding: the windowing
percentiles come from the averaged crop rather than the full-resolution one, the
uint16 stored values are averaged before the chain, and the anatomy mask edge is
sampled on the output grid. Other chains, or stored values the grey-level chain
must mask (bits above Bits Stored) or cannot average (more than 16 bits), take
the full-resolution path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.dicom import RawRadiograph, parse_spacing, read_raw
from pipeline.preprocess.arrays import area_resize, scaled_size, shrink
from pipeline.preprocess.background import (
    BackgroundAnalysis,
    BackgroundOptions,
    analyse_background,
)
from pipeline.preprocess.chain import Crop, preprocess, to_crops
from pipeline.preprocess.config import PreprocessConfig, StepConfig
from pipeline.preprocess.localizer import KneeBox, KneeLocalizer
from pipeline.preprocess.scope import ScopeDecision, decide_preview, decide_small
from pipeline.preprocess.steps import (
    STEPS,
    CleanParams,
    LocalizeParams,
    Work,
    clip_box,
    knee_crop_box,
    warn_unsure,
)

#: Steps that may follow ``clean`` / ``localize`` on the crop-first path.
PIXEL_STEPS = frozenset({"window", "clahe", "pad_square", "resize"})


@dataclass(frozen=True)
class CropFirstPlan:
    """How a configuration runs crop-first (from :func:`plan`)."""

    clean: CleanParams
    localize: LocalizeParams | None
    rest: tuple[StepConfig, ...]  # the pixel steps after them
    long_side: int | None  # crops are delivered at most this long (None: full resolution)


@functools.lru_cache(maxsize=16)
def plan(config: PreprocessConfig) -> CropFirstPlan | None:
    """The crop-first plan of ``config``, or None when it needs the full-resolution chain."""
    steps = config.steps
    if not steps or steps[0].name != "clean" or not steps[0].params.crop:
        return None
    i = 1
    localize = None
    if len(steps) > 1 and steps[1].name == "localize":
        localize, i = steps[1].params, 2
    rest = steps[i:]
    if any(s.name not in PIXEL_STEPS for s in rest):
        return None
    caps = [s.params.working_size for s in rest if s.name == "clahe"]
    caps += [s.params.size for s in rest if s.name == "resize"]
    return CropFirstPlan(steps[0].params, localize, tuple(rest), max(caps) if caps else None)


def _averageable(r: RawRadiograph) -> bool:
    """Stored values that can be area-averaged before the grey-level chain."""
    raw = r.raw
    if raw.ndim != 2 or raw.dtype.kind not in "ui" or raw.dtype.itemsize > 2:
        return False
    # Bits above Bits Stored must be masked per pixel, before any averaging.
    return not r.mask_unused_bits or r.chain.fits_bits_stored(raw)


def _grey_region(
    r: RawRadiograph,
    a: BackgroundAnalysis,
    box: tuple[int, int, int, int],
    out_size: tuple[int, int],
) -> np.ndarray:
    """The source region ``box`` = (x0, y0, x1, y1) at ``out_size`` = (w, h), cleaned.

    float32 (h, w): stored values area-averaged to the size, grey-level chain, blanked
    outside the anatomy, marks filled.
    """
    x0, y0, x1, y1 = box
    cut = r.raw[y0:y1, x0:x1]
    if out_size != (x1 - x0, y1 - y0):
        cut = area_resize(cut, out_size)
    out = r.grey(cut)  # (h, w) float32
    if not out.flags.writeable:
        out = out.copy()
    h, w = r.raw.shape
    return a.paint(out, (w, h), (x0, y0, x1, y1))


def _detect(
    r: RawRadiograph,
    a: BackgroundAnalysis,
    region: tuple[int, int, int, int],
    p: LocalizeParams,
    spacing: tuple[float, float] | None,
) -> list[tuple[KneeBox, tuple[float, float, float, float]]]:
    """The localizer on the cleaned region: [(KneeBox, box in source pixels)]."""
    meta = r.meta
    loc = KneeLocalizer.load(p.weights, view=KneeLocalizer.view_of(meta.get("view")))
    H, W = r.raw.shape
    x0, y0, x1, y1 = region
    cw, ch = x1 - x0, y1 - y0
    f = loc.scan_scale((ch, cw), spacing)
    bw, bh = scaled_size((cw, ch), f)
    preview = a.preview((W, H))
    if f < 1.0 and preview.shape[0] >= ch * f and preview.shape[1] >= cw * f:
        # the cleaned analysis copy is detailed enough (as detect() would use it)
        image = cv2.resize(preview, (bw, bh), interpolation=cv2.INTER_AREA)
    else:
        image = _grey_region(r, a, region, (bw, bh))
    kx, ky = cw / bw, ch / bh  # source pixels per scanned pixel
    s = None if spacing is None else (spacing[0] * ky, spacing[1] * kx)
    knees = loc.detect(
        image,
        spacing_mm=s,
        mode=p.mode,
        laterality=meta.get("laterality"),
        orientation=meta.get("patient_orientation"),
        min_confidence=p.min_confidence,
        reach=p.reach,
    )
    out = []
    for k in knees:
        bx0, by0, bx1, by1 = k.box
        out.append((k, (x0 + bx0 * kx, y0 + by0 * ky, x0 + bx1 * kx, y0 + by1 * ky)))
    return out


def _item(
    r: RawRadiograph,
    a: BackgroundAnalysis,
    region: tuple[int, int, int, int],
    crop: tuple[int, int, int, int],
    long_side: int | None,
    spacing: tuple[float, float] | None,
    laterality: str | None,
    **fields: Any,
) -> Work:
    """A :class:`Work` showing source pixels ``crop`` (0 outside ``region``), scaled down."""
    H, W = r.raw.shape
    X0, Y0, X1, Y1 = crop
    cw, ch = X1 - X0, Y1 - Y0
    f = 1.0 if long_side is None else min(1.0, long_side / max(cw, ch))
    ow, oh = scaled_size((cw, ch), f)
    kx, ky = cw / ow, ch / oh  # source pixels per output pixel
    ix0, iy0 = max(X0, region[0]), max(Y0, region[1])
    ix1, iy1 = min(X1, region[2]), min(Y1, region[3])
    if (ix0, iy0, ix1, iy1) == (X0, Y0, X1, Y1):
        image = _grey_region(r, a, crop, (ow, oh))
    else:
        image = np.zeros((oh, ow), np.float32)
        if ix1 > ix0 and iy1 > iy0:
            ox0, oy0 = round((ix0 - X0) / kx), round((iy0 - Y0) / ky)
            ox1, oy1 = round((ix1 - X0) / kx), round((iy1 - Y0) / ky)
            if ox1 > ox0 and oy1 > oy0:
                image[oy0:oy1, ox0:ox1] = _grey_region(
                    r, a, (ix0, iy0, ix1, iy1), (ox1 - ox0, oy1 - oy0)
                )
    return Work(
        image=image,
        meta=r.meta,
        source_shape=(H, W),
        to_source=(kx, float(X0), ky, float(Y0)),
        spacing_mm=None if spacing is None else (spacing[0] * ky, spacing[1] * kx),
        laterality=laterality,
        source=str(r.path),
        **fields,
    )


def run_crop_first(
    r: RawRadiograph, p: CropFirstPlan, analysis: BackgroundAnalysis | None = None
) -> list[Work]:
    """The chain's final items for a :class:`pipeline.dicom.RawRadiograph`, crop-first.

    ``analysis``: ``clean``'s analysis of the file, when the caller has made it.
    """
    raw = r.raw
    H, W = raw.shape
    a = (
        analysis
        if analysis is not None
        else analyse_background(_analysis_copy(r, p.clean.analysis_size), p.clean)
    )
    region = a.region((W, H))
    spacing = parse_spacing(r.meta.get("pixel_spacing_mm"))
    x0, y0 = region[:2]
    if p.localize is None:
        lat = r.meta.get("laterality")
        lat = lat if lat in ("L", "R") else None
        items = [_item(r, a, region, region, p.long_side, spacing, lat, box=region)]
    else:
        items = []
        for k, src_box in _detect(r, a, region, p.localize, spacing):
            if k.fallback:
                warn_unsure(r.path, k, p.localize.min_confidence, stacklevel=3)
            # the cut, rounded in the cleaned region's pixels as the localize step does
            bx = knee_crop_box(tuple(v - o for v, o in zip(src_box, (x0, y0, x0, y0))), p.localize)
            cx0, cy0, cx1, cy1 = (round(v) for v in bx)
            cx1, cy1 = max(cx1, cx0 + 1), max(cy1, cy0 + 1)
            crop = (x0 + cx0, y0 + cy0, x0 + cx1, y0 + cy1)
            items.append(
                _item(
                    r,
                    a,
                    region,
                    crop,
                    p.long_side,
                    spacing,
                    k.laterality,
                    box=clip_box(src_box, (H, W)),
                    confidence=float(k.confidence),
                    fallback=bool(k.fallback),
                )
            )
    for step in p.rest:
        spec = STEPS.get(step.name)
        items = [out for item in items for out in spec.apply(item, step.params)]
    return items


def preprocess_raw(r: RawRadiograph, config: PreprocessConfig) -> list[Crop]:
    """:func:`pipeline.preprocess.preprocess` for a decoded :class:`~pipeline.dicom.RawRadiograph`.

    Crop-first when :func:`plan` allows it, else the full-resolution chain.
    """
    p = plan(config)
    if p is None or not _averageable(r):
        return preprocess(_FullImage(r.grey(r.raw), r.meta, r.path), config)
    return to_crops(run_crop_first(r, p))


@dataclass(frozen=True)
class _FullImage:
    image: np.ndarray
    meta: Mapping[str, Any]
    path: Path


def preprocess_file(
    path: str | os.PathLike[str], config: PreprocessConfig, *, salt: str | bytes | None = None
) -> tuple[list[Crop], dict[str, Any]]:
    """Decode and preprocess one file crop-first: (crops, de-identified meta).

    Raises what :func:`pipeline.dicom.read_radiograph` raises.
    """
    r = read_raw(path, salt=salt)
    return preprocess_raw(r, config), r.meta


def process_file(
    path: str | os.PathLike[str], config: PreprocessConfig, *, salt: str | bytes | None = None
) -> tuple[list[Crop], dict[str, Any], ScopeDecision]:
    """:func:`preprocess_file`, and the out-of-scope decision from the same decode (and,
    when the chain cleans with the default settings, from the same analysis)."""
    r = read_raw(path, salt=salt)
    p = plan(config)
    if p is None or not _averageable(r) or not _default_clean(p.clean):
        return preprocess_raw(r, config), r.meta, scope_of_raw(r)
    small = _analysis_copy(r, p.clean.analysis_size)
    a = analyse_background(small, p.clean)
    sh, sw = small.shape
    return to_crops(run_crop_first(r, p, a)), r.meta, decide_preview(a.preview((sw, sh)))


def _analysis_copy(r: RawRadiograph, size: int) -> np.ndarray:
    """chain(downsample(raw)): the stored values area-averaged to ``size`` (``clean``'s
    analysis size), then the grey-level chain (float32, (sh, sw))."""
    return r.grey(shrink(r.raw, size)[0])


def _default_clean(c: CleanParams) -> bool:
    """Whether ``clean`` analyses as the out-of-scope decision does (its default settings)."""
    return all(getattr(c, f.name) == f.default for f in dataclasses.fields(BackgroundOptions))


def scope_of_raw(r: RawRadiograph) -> ScopeDecision:
    """The out-of-scope decision of a decoded file, on its analysis copy (the stored
    values area-averaged, then the grey-level chain, as the crop-first route makes it)."""
    size = BackgroundOptions().analysis_size
    if _averageable(r):
        return decide_small(_analysis_copy(r, size))
    return decide_small(shrink(r.grey(r.raw), size)[0])


__all__ = [
    "PIXEL_STEPS",
    "CropFirstPlan",
    "plan",
    "preprocess_file",
    "preprocess_raw",
    "process_file",
    "scope_of_raw",
]
