"""Registered preprocessing steps and the pure array functions behind them.

A radiograph travels through the chain as :class:`Work` items: a float32 image in
[0, 1] (bone bright) plus what the later steps and the cache need to know about it
(the map back to source pixels, the pixel spacing, the knee's laterality, the
localizer's confidence). Most steps turn one item into one item; ``localize`` turns
a bilateral radiograph into one item per knee.

Every step is registered in :data:`STEPS` under the name a YAML configuration uses,
with a frozen, keyword-only parameter dataclass, and is deterministic: the same
input gives the same bytes. The array functions (:func:`pad_to_square`,
:func:`~pipeline.preprocess.background.clean_background`, :func:`percentile_window`,
:func:`clahe`, :func:`resize_square`) take and return numpy arrays only, so they can
be tested and reused without the chain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from pipeline.preprocess.arrays import U16_MAX, shrink, to_uint16
from pipeline.preprocess.background import BackgroundOptions, clean_background
from pipeline.preprocess.localizer import KneeBox, KneeLocalizer
from pipeline.registry import Registry, check_choice

P = TypeVar("P")


class PreprocessWarning(UserWarning):
    """A step could not do its job as configured and fell back (centre crop, ...)."""


# --------------------------------------------------------------------------- chain state


@dataclass(frozen=True, kw_only=True)
class Work:
    """One image in the chain.

    ``to_source`` maps current pixel coordinates to source pixel coordinates:
    ``x_src = x * sx + tx`` and ``y_src = y * sy + ty`` with ``(sx, tx, sy, ty)``.
    ``spacing_mm`` is the (row, col) physical size of a current pixel, or None.
    ``box`` is the source region (x0, y0, x1, y1) this item shows, once known.
    """

    image: np.ndarray  # float32 (H, W) in [0, 1], bone bright
    meta: Mapping[str, Any]
    source_shape: tuple[int, int]  # (H, W) of the decoded radiograph
    to_source: tuple[float, float, float, float] = (1.0, 0.0, 1.0, 0.0)
    spacing_mm: tuple[float, float] | None = None
    laterality: str | None = None
    box: tuple[int, int, int, int] | None = None
    confidence: float = 1.0
    fallback: bool = False
    # float32, a small copy of `image` (same field of view) that the localizer can
    # scan instead of resizing the full image; None once the field of view changes
    preview: np.ndarray | None = None
    source: str | None = None  # the file, for messages

    def source_box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        """A box in current coordinates, mapped to (rounded) source coordinates."""
        sx, tx, sy, ty = self.to_source
        return round(x0 * sx + tx), round(y0 * sy + ty), round(x1 * sx + tx), round(y1 * sy + ty)

    def shifted(self, image: np.ndarray, x0: float, y0: float) -> Work:
        """This item showing ``image``, whose first pixel is current pixel (x0, y0)."""
        sx, tx, sy, ty = self.to_source
        return replace(
            self, image=image, to_source=(sx, tx + x0 * sx, sy, ty + y0 * sy), preview=None
        )

    def resized(self, image: np.ndarray) -> Work:
        """This item with ``image`` (same field of view, another size)."""
        h, w = self.image.shape
        nh, nw = image.shape
        fy, fx = h / nh, w / nw  # old pixels per new pixel
        sx, tx, sy, ty = self.to_source
        mm = self.spacing_mm
        spacing = None if mm is None else (mm[0] * fy, mm[1] * fx)
        return replace(self, image=image, to_source=(sx * fx, tx, sy * fy, ty), spacing_mm=spacing)


@dataclass(frozen=True)
class StepSpec(Generic[P]):
    """A registered step: its name, parameter dataclass and function."""

    name: str
    params: type[P]
    apply: Callable[[Work, P], list[Work]]


#: name -> :class:`StepSpec`; the names a preprocessing YAML uses.
STEPS: Registry[StepSpec[Any]] = Registry("preprocessing step")


def register_step(
    name: str, params: type[P]
) -> Callable[[Callable[[Work, P], list[Work]]], Callable]:
    """Decorator: ``@register_step("clahe", ClaheParams)`` on ``fn(work, params) -> [Work]``."""

    def decorator(fn: Callable[[Work, P], list[Work]]) -> Callable[[Work, P], list[Work]]:
        STEPS.register(name, doc=fn.__doc__ or "")(StepSpec(name, params, fn))
        return fn

    return decorator


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


# --------------------------------------------------------------------------- pad_square


def pad_to_square(image: np.ndarray, value: float = 0.0) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the shorter side so the image is square, centred; returns (image, (top, left)).

    An odd difference puts the extra row or column after the image, so the output is
    always exactly ``max(H, W)`` on both sides and the aspect ratio is unchanged.
    """
    h, w = image.shape[:2]
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    if h == w:
        return image, (0, 0)
    out = np.full((n, n, *image.shape[2:]), value, dtype=image.dtype)
    out[top : top + h, left : left + w] = image
    return out, (top, left)


@dataclass(frozen=True, kw_only=True)
class PadSquareParams:
    value: float = 0.0  # grey level of the padding (0 = background black)

    def __post_init__(self) -> None:
        _check(0.0 <= self.value <= 1.0, f"pad_square.value must be in [0, 1], got {self.value}")


@register_step("pad_square", PadSquareParams)
def pad_square_step(work: Work, p: PadSquareParams) -> list[Work]:
    """Pad to a square, centred, keeping the aspect ratio."""
    image, (top, left) = pad_to_square(work.image, p.value)
    return [work.shifted(image, -left, -top)]


# --------------------------------------------------------------------------- clean


@dataclass(frozen=True, kw_only=True)
class CleanParams(BackgroundOptions):
    """:class:`~pipeline.preprocess.background.BackgroundOptions`, checked, and ``crop``."""

    crop: bool = True  # cut to the anatomy's bounding box (False: only blank)

    def __post_init__(self) -> None:
        _check(
            0.0 < self.flat_tol < 0.5, f"clean.flat_tol must be in (0, 0.5), got {self.flat_tol}"
        )
        _check(
            0.0 < self.edge_step < 1.0, f"clean.edge_step must be in (0, 1), got {self.edge_step}"
        )
        _check(0.0 < self.mark_contrast <= 1.0, "clean.mark_contrast must be in (0, 1]")
        _check(
            self.background is None or 0.0 <= self.background < 1.0,
            "clean.background must be in [0, 1)",
        )
        _check(0.0 <= self.keep_fraction <= 1.0, "clean.keep_fraction must be in [0, 1]")
        _check(0.0 <= self.margin < 0.5, "clean.margin must be in [0, 0.5)")
        _check(self.analysis_size >= 32, "clean.analysis_size must be >= 32")


@register_step("clean", CleanParams)
def clean_step(work: Work, p: CleanParams) -> list[Work]:
    """Blank collimation, blank areas and marks outside the anatomy; cut to the anatomy."""
    r = clean_background(work.image, p)
    x0, y0, x1, y1 = r.region
    if p.crop:
        box = work.box if work.box is not None else work.source_box(x0, y0, x1, y1)
        return [replace(work.shifted(r.image, x0, y0), box=box, preview=r.preview)]
    image = np.zeros_like(work.image)
    image[y0:y1, x0:x1] = r.image
    return [replace(work, image=image)]


# --------------------------------------------------------------------------- window


def percentiles(
    image: np.ndarray, qs: tuple[float, ...], *, ignore_zero: bool = False
) -> list[float]:
    """Percentiles (0..100) of a [0, 1] image, from a 16-bit histogram (exact to 1/65535).

    Images over 256 x 256 pixels are sampled on a regular grid of about 65536 pixels
    (deterministic), which moves a percentile by far less than a grey level of the
    output while keeping the cost flat.
    """
    step = max(1, math.isqrt(image.size // 65536))
    sample = image[::step, ::step] if step > 1 else image
    q = to_uint16(sample).ravel()
    hist = np.bincount(q, minlength=U16_MAX + 1)
    if ignore_zero and hist[1:].sum() > 0:
        hist[0] = 0
    cdf = np.cumsum(hist)
    levels = np.searchsorted(cdf, np.asarray(qs) / 100.0 * cdf[-1], side="left")
    return [min(int(level), U16_MAX) / U16_MAX for level in levels]


def percentile_window(
    image: np.ndarray, low: float = 0.5, high: float = 99.5, *, ignore_zero: bool = True
) -> np.ndarray:
    """Map the [low, high] percentile range of the image to [0, 1], clipping outside.

    ``ignore_zero`` leaves exact-0 pixels (the background blanked by ``clean``) out
    of the percentiles, so a crop that is mostly background is windowed on its
    anatomy.
    """
    lo, hi = percentiles(image, (low, high), ignore_zero=ignore_zero)
    if hi <= lo:  # flat image: nothing to stretch
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    out = (image.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass(frozen=True, kw_only=True)
class WindowParams:
    low: float = 0.5  # lower percentile -> 0
    high: float = 99.5  # upper percentile -> 1
    ignore_zero: bool = True  # leave the blanked background out of the percentiles

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.low < self.high <= 100.0,
            f"window needs 0 <= low < high <= 100, got low={self.low}, high={self.high}",
        )


@register_step("window", WindowParams)
def window_step(work: Work, p: WindowParams) -> list[Work]:
    """Percentile windowing: the [low, high] percentiles become [0, 1]."""
    return [
        replace(work, image=percentile_window(work.image, p.low, p.high, ignore_zero=p.ignore_zero))
    ]


# --------------------------------------------------------------------------- clahe


def clahe_levels(shape: tuple[int, int], grid: int) -> int:
    """Histogram bins for CLAHE on an image of ``shape`` with a ``grid`` of tiles.

    About 8 pixels of a tile per bin, between 256 and 4096 bins: enough pixels per
    bin for the clip limit to act as it does in the usual 8-bit CLAHE, and no
    fewer than 256 bins.
    """
    h, w = shape
    tile_area = math.ceil(h / grid) * math.ceil(w / grid)
    bits = int(np.clip(math.floor(math.log2(max(tile_area, 1))) - 3, 8, 12))
    return 1 << bits


def clahe(
    image: np.ndarray,
    clip: float = 2.0,
    grid: int = 8,
    *,
    levels: int | None = None,
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image, without 8-bit loss.

    The algorithm is OpenCV's (Zuiderveld's CLAHE as in ``cv2.createCLAHE``): a
    ``levels``-bin histogram per tile of a ``grid`` x ``grid`` grid (the image
    reflected to a multiple of the grid), each bin clipped at
    ``max(int(clip * tile_area / levels), 1)`` with the excess spread evenly, the
    cumulative histogram as the tile's mapping, and a bilinear blend of the four
    nearest tiles' mappings per pixel. With 256 levels and grey values on the 8-bit
    grid it matches ``cv2.createCLAHE(clip, (grid, grid))`` on uint8 to within
    rounding (tested). Unlike it, the mappings are evaluated between bins too
    (linearly) and the output is float32, so a 16-bit input keeps its grey levels. ``clip <= 0`` equalises without a limit.

    OpenCV's own 16-bit CLAHE uses 65536 bins per tile whatever the data: at a few
    hundred pixels per side its clip limit rounds to one count per bin (the limit
    stops acting), and building 65536-entry mappings for 64 tiles costs about 7 ms
    per image whatever its size (see ``backend="opencv"`` of the ``clahe`` step).
    """
    if levels is None:
        levels = clahe_levels(image.shape, grid)
    h, w = image.shape
    v = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False) * np.float32(levels - 1)
    coarse = (v + np.float32(0.5)).astype(np.int32)  # the histogram bin (nearest level)
    padded = coarse
    if h % grid or w % grid:  # OpenCV pads both sides by (grid - size % grid), reflected
        padded = cv2.copyMakeBorder(
            coarse, 0, grid - h % grid, 0, grid - w % grid, cv2.BORDER_REFLECT_101
        )
    ph, pw = padded.shape
    th, tw = ph // grid, pw // grid
    area = th * tw
    tile = (np.arange(th * grid) // th)[:, None] * grid + (np.arange(tw * grid) // tw)[None, :]
    bins = tile * levels + padded[: th * grid, : tw * grid]
    hist = np.bincount(bins.ravel(), minlength=grid * grid * levels).reshape(grid * grid, levels)
    if clip > 0:
        limit = max(int(clip * area / levels), 1)
        excess = np.maximum(hist - limit, 0).sum(axis=1)
        hist = np.minimum(hist, limit) + (excess // levels)[:, None]
        residual = excess % levels  # one more count every `step` bins, as OpenCV does
        step = np.maximum(levels // np.maximum(residual, 1), 1)[:, None]
        k = np.arange(levels)[None, :]
        hist += (k % step == 0) & (k // step < residual[:, None])
    cdf = np.cumsum(hist, axis=1).astype(np.float32) * np.float32(1.0 / area)  # (tiles, levels)
    # Between bins the mapping is linear: value at the lower level + slope * fraction.
    # Each entry holds both (complex64: cdf + 1j * slope), so one gather fetches the two.
    table = np.empty((grid * grid * levels, 2), np.float32)
    table[:, 0] = cdf.ravel()
    table[:, 1] = np.diff(cdf, axis=1, append=cdf[:, -1:]).ravel()
    table = table.view(np.complex64).ravel()
    low = v.astype(np.int32)  # (H, W) lower level (v >= 0)
    frac = v - low

    def neighbours(n_px: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = np.arange(n_px) / size - 0.5
        t1 = np.floor(f).astype(np.int32)
        a = (f - t1).astype(np.float32)
        return np.maximum(t1, 0), np.minimum(t1 + 1, grid - 1), a

    ty1, ty2, ya = neighbours(h, th)
    tx1, tx2, xa = neighbours(w, tw)
    r1, r2 = (ty1 * grid * levels)[:, None], (ty2 * grid * levels)[:, None]
    c1, c2 = (tx1 * levels)[None, :], (tx2 * levels)[None, :]
    xa, ya = xa[None, :], ya[:, None]

    def mapped(offset: np.ndarray) -> np.ndarray:  # one tile's mapping at every pixel
        g = np.take(table, offset + low, mode="wrap")  # (H, W) complex64; indices in range
        return g.real + frac * g.imag

    top = mapped(r1 + c1) * (1 - xa) + mapped(r1 + c2) * xa
    bottom = mapped(r2 + c1) * (1 - xa) + mapped(r2 + c2) * xa
    return (top * (1 - ya) + bottom * ya).astype(np.float32, copy=False)


def clahe_opencv(image: np.ndarray, clip: float = 2.0, grid: int = 8) -> np.ndarray:
    """OpenCV's CLAHE on the image as uint16 (65536 bins per tile; see :func:`clahe`)."""
    u16 = to_uint16(image)
    out = cv2.createCLAHE(clipLimit=max(clip, 0.0), tileGridSize=(grid, grid)).apply(u16)
    return out.astype(np.float32) * np.float32(1.0 / U16_MAX)


@dataclass(frozen=True, kw_only=True)
class ClaheParams:
    clip: float = 2.0  # clip limit (slope limit relative to plain equalisation); 0 = none
    grid: int = 8  # tiles per side
    working_size: int = 512  # equalise at most at this size (longest side), for speed
    levels: int | None = None  # histogram bins; None = chosen from the tile size
    backend: str = "numpy"  # "numpy" (clahe) or "opencv" (cv2 on uint16, 65536 bins)

    def __post_init__(self) -> None:
        _check(self.clip >= 0.0, f"clahe.clip must be >= 0, got {self.clip}")
        _check(1 <= self.grid <= 64, f"clahe.grid must be in 1..64, got {self.grid}")
        _check(
            self.working_size >= 16, f"clahe.working_size must be >= 16, got {self.working_size}"
        )
        _check(
            self.levels is None or 16 <= self.levels <= 4096,
            f"clahe.levels must be in 16..4096, got {self.levels}",
        )
        check_choice("clahe backend", self.backend, ("numpy", "opencv"))


@register_step("clahe", ClaheParams)
def clahe_step(work: Work, p: ClaheParams) -> list[Work]:
    """CLAHE with a configurable clip limit and tile grid, at working resolution."""
    small, f = shrink(work.image, p.working_size)
    if f < 1.0:
        work = work.resized(small)
    if p.backend == "opencv":
        return [replace(work, image=clahe_opencv(work.image, p.clip, p.grid))]
    return [replace(work, image=clahe(work.image, p.clip, p.grid, levels=p.levels))]


# --------------------------------------------------------------------------- resize

INTERPOLATIONS = ("auto", "area", "linear", "cubic", "nearest")
_CV_INTER = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


def resize_square(image: np.ndarray, size: int, interpolation: str = "auto") -> np.ndarray:
    """Resize to ``size x size``; ``auto`` = area averaging down, bilinear up.

    Pad to a square first (``pad_square``) to keep the aspect ratio.
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    if interpolation == "auto":
        interpolation = "area" if size < max(h, w) else "linear"
    out = cv2.resize(image, (size, size), interpolation=_CV_INTER[interpolation])
    if interpolation == "cubic":  # cubic overshoots
        out = np.clip(out, 0.0, 1.0)
    return out


@dataclass(frozen=True, kw_only=True)
class ResizeParams:
    size: int = 64  # output side in pixels (the trial's image_size)
    interpolation: str = "auto"

    def __post_init__(self) -> None:
        _check(8 <= self.size <= 8192, f"resize.size must be in 8..8192, got {self.size}")
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)


@register_step("resize", ResizeParams)
def resize_step(work: Work, p: ResizeParams) -> list[Work]:
    """Resize to the trial's image size (square)."""
    return [work.resized(resize_square(work.image, p.size, p.interpolation))]


# --------------------------------------------------------------------------- localize


@dataclass(frozen=True, kw_only=True)
class LocalizeParams:
    weights: str | None = None  # .npz of a trained localizer; None = the shipped weights
    mode: str = "auto"  # "auto" | "single" | "bilateral"
    min_confidence: float = 0.5  # below this, fall back to a centre crop (with a warning)
    context: float = 1.0  # crop = detected knee box scaled by this factor
    square: bool = True  # crop a square around the box centre (side = the longer side)
    reach: bool = True  # when unsure, also try windows reaching past the frame (tight crops)

    def __post_init__(self) -> None:
        check_choice("localize mode", self.mode, ("auto", "single", "bilateral"))
        _check(0.0 <= self.min_confidence <= 1.0, "localize.min_confidence must be in [0, 1]")
        _check(
            0.5 <= self.context <= 4.0, f"localize.context must be in [0.5, 4], got {self.context}"
        )


def knee_crop_box(
    box: tuple[float, float, float, float], p: LocalizeParams
) -> tuple[float, float, float, float]:
    """The region cut around a detected knee box: scaled by ``context``, squared if asked."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw, bh = (x1 - x0) * p.context, (y1 - y0) * p.context
    if p.square:
        bw = bh = max(bw, bh)
    return (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)


def _crop_with_fill(work: Work, box: tuple[float, float, float, float]) -> Work:
    """Crop the current-pixel box, filling the part outside the image with 0."""
    h, w = work.image.shape
    x0, y0, x1, y1 = (round(v) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    cx0, cy0, cx1, cy1 = clip_box((x0, y0, x1, y1), (h, w))
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = work.image[cy0:cy1, cx0:cx1]
    return work.shifted(out, x0, y0)


def clip_box(box: tuple[float, ...], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1) rounded to whole pixels and clipped to an image of ``shape``."""
    h, w = shape
    x0, y0, x1, y1 = (round(v) for v in box)
    return (max(0, x0), max(0, y0), min(w, x1), min(h, y1))


def warn_unsure(source: object, knee: KneeBox, min_confidence: float, stacklevel: int) -> None:
    """The :class:`PreprocessWarning` of a knee the localizer was unsure of."""
    warnings.warn(
        f"{source}: knee localisation unsure "
        f"(confidence {knee.confidence:.2f} < {min_confidence}); using a centre crop",
        PreprocessWarning,
        stacklevel=stacklevel + 1,
    )


def detect_knees(loc: KneeLocalizer, work: Work, p: LocalizeParams) -> list[KneeBox]:
    """The knees ``loc`` finds in a chain item, as the ``localize`` step looks for them."""
    return loc.detect(
        work.image,
        preview=work.preview,
        spacing_mm=work.spacing_mm,
        mode=p.mode,
        laterality=work.meta.get("laterality"),
        orientation=work.meta.get("patient_orientation"),
        min_confidence=p.min_confidence,
        reach=p.reach,
    )


@register_step("localize", LocalizeParams)
def localize_step(work: Work, p: LocalizeParams) -> list[Work]:
    """Knee localisation (HOG + linear SVM): one crop per knee, with its laterality."""
    loc = KneeLocalizer.load(p.weights, view=KneeLocalizer.view_of(work.meta.get("view")))
    out = []
    for k in detect_knees(loc, work, p):
        if k.fallback:
            warn_unsure(work.source or "radiograph", k, p.min_confidence, stacklevel=2)
        item = _crop_with_fill(work, knee_crop_box(k.box, p))
        out.append(
            replace(
                item,
                laterality=k.laterality,
                box=clip_box(work.source_box(*k.box), work.source_shape),
                confidence=float(k.confidence),
                fallback=bool(k.fallback),
            )
        )
    return out


__all__ = [
    "STEPS",
    "ClaheParams",
    "CleanParams",
    "LocalizeParams",
    "PadSquareParams",
    "PreprocessWarning",
    "ResizeParams",
    "StepSpec",
    "WindowParams",
    "Work",
    "clahe",
    "clahe_levels",
    "clahe_opencv",
    "clip_box",
    "knee_crop_box",
    "pad_to_square",
    "percentile_window",
    "percentiles",
    "register_step",
    "resize_square",
]
