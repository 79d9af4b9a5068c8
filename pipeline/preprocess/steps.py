"""Registered preprocessing steps and the pure array functions behind them.

A radiograph travels through the chain as :class:`Work` items: a float32 image in
[0, 1] (bone bright) plus what the later steps and the cache need to know about it
(the map back to source pixels, the pixel spacing, the knee's laterality, the
localizer's confidence). Most steps turn one item into one item; ``localize`` turns
a bilateral radiograph into one item per knee.

Every step is registered in :data:`STEPS` under the name a YAML configuration uses,
with a frozen, keyword-only parameter dataclass, and is deterministic: the same
input gives the same bytes. The array functions (:func:`pad_to_square`,
:func:`clean_background`, :func:`percentile_window`, :func:`clahe`,
:func:`resize_square`) take and return numpy arrays only, so they can be tested and
reused without the chain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from pipeline.registry import Registry, check_choice

P = TypeVar("P")

#: Grey levels of the 16-bit output.
U16_MAX = 65535


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
        return (
            round(x0 * sx + tx),
            round(y0 * sy + ty),
            round(x1 * sx + tx),
            round(y1 * sy + ty),
        )

    def cropped(self, x0: int, y0: int, x1: int, y1: int, image: np.ndarray | None = None) -> Work:
        """This item restricted to the current-pixel region [y0:y1, x0:x1].

        ``image``: the region's pixels when the caller has them already (no copy).
        """
        sx, tx, sy, ty = self.to_source
        if image is None:
            image = np.ascontiguousarray(self.image[y0:y1, x0:x1])
        return replace(
            self, image=image, to_source=(sx, tx + x0 * sx, sy, ty + y0 * sy), preview=None
        )

    def resized(self, image: np.ndarray) -> Work:
        """This item with ``image`` (same field of view, another size)."""
        h, w = self.image.shape
        nh, nw = image.shape
        fy, fx = h / nh, w / nw  # old pixels per new pixel
        sx, tx, sy, ty = self.to_source
        spacing = None
        if self.spacing_mm is not None:
            spacing = (self.spacing_mm[0] * fy, self.spacing_mm[1] * fx)
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
    sx, tx, sy, ty = work.to_source
    return [
        replace(work, image=image, to_source=(sx, tx - left * sx, sy, ty - top * sy), preview=None)
    ]


# --------------------------------------------------------------------------- clean


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean_background` found, in input pixel coordinates."""

    image: np.ndarray  # float32 (h, w): the kept region, everything but the anatomy set to 0
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1): the anatomy's bounding box (+ margin)
    anatomy: np.ndarray  # bool (h, w): pixels kept as anatomy
    markers: int  # burned-in marks / debris removed
    preview: np.ndarray | None = None  # float32: ``image`` at the analysis resolution


#: Images with at least this many pixels are shrunk in two stages by :func:`area_resize`
#: (more than a 512 x 512 image: the phantom's images keep the one-stage average).
TWO_STAGE_PIXELS = 300_000
#: ... when they shrink by at least this factor.
TWO_STAGE_FACTOR = 3


def area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``image`` down to ``size`` = (width, height), fast on large images.

    OpenCV's ``INTER_AREA`` costs about 4 ns per source pixel for a fractional scale
    (11 ms for a 2500 x 2000 radiograph) but a fifth of that for an integer one. An
    image of :data:`TWO_STAGE_PIXELS` or more that shrinks by
    :data:`TWO_STAGE_FACTOR` or more is first averaged over k x k blocks (k = the
    largest integer with the intermediate still at least twice ``size``, and at
    least 2; the last ``h % k`` rows and ``w % k`` columns, under half an output
    pixel, are left out), then area-resized to ``size``: a 900-pixel knee crop to
    256 pixels in under half the time. Smaller images and smaller factors take the
    one-stage resize.
    """
    h, w = image.shape[:2]
    dw, dh = size
    factor = min(w / dw, h / dh)
    if image.shape[0] * image.shape[1] >= TWO_STAGE_PIXELS and factor >= TWO_STAGE_FACTOR:
        k = max(2, int(factor // 2))
        hk, wk = h // k, w // k
        image = cv2.resize(image[: hk * k, : wk * k], (wk, hk), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (dw, dh), interpolation=cv2.INTER_AREA)


def _analysis_copy(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    h, w = image.shape
    f = min(1.0, size / max(h, w))
    if f >= 1.0:
        return image, 1.0
    return area_resize(image, (max(1, round(w * f)), max(1, round(h * f)))), f


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1] (256 bins)."""
    u8 = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(u8.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / 255.0


def _odd(n: float) -> int:
    return max(3, round(n) | 1)


def blank_border_regions(small: np.ndarray, *, tol: float = 0.04, step: float = 0.1) -> np.ndarray:
    """Flat regions reaching the image edge behind a sharp step: collimation, shutters.

    Border pixels seed flood fills (fixed range: every connected pixel within ``tol``
    of the seed value, on a slightly blurred copy, so a smooth ramp cannot leak far).
    A filled region is a collimation blade or exposure border when it is not thin
    (it survives an opening), runs along most of one side of the image, and the
    pixels a little way around it differ from it by at least ``step`` (the blade's
    edge). A band of smooth soft tissue or a strip of bone reaching the edge has no
    such step, and a pocket of soft tissue between two bones does not run along a
    side. The field may be rotated: nothing assumes straight rows or columns.
    Returns a bool mask.
    """
    h, w = small.shape
    blurred = cv2.GaussianBlur(small, (0, 0), 1.0)
    labels = np.zeros((h + 2, w + 2), np.uint8)  # floodFill's mask has a 1-pixel frame
    stride = max(1, min(h, w) // 64)
    edge = [(x, 0) for x in range(0, w, stride)] + [(x, h - 1) for x in range(0, w, stride)]
    edge += [(0, y) for y in range(0, h, stride)] + [(w - 1, y) for y in range(0, h, stride)]
    seeds = []
    label = 0
    for x, y in edge:
        if labels[y + 1, x + 1] or label == 255:
            continue
        label += 1
        flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (label << 8)
        area, *_, (_rx, _ry, rw, rh) = cv2.floodFill(blurred, labels, (x, y), 0, tol, tol, flags)
        if area >= 0.005 * h * w and (rw >= 0.6 * w or rh >= 0.6 * h):
            seeds.append(label)
    labels = labels[1:-1, 1:-1]
    blank = np.zeros((h, w), bool)
    n = max(h, w)
    k_open = np.ones((_odd(0.03 * n),) * 2, np.uint8)
    k_near = np.ones((5, 5), np.uint8)  # skip the blurred edge itself ...
    k_far = np.ones((_odd(0.015 * n) + 4,) * 2, np.uint8)  # ... and look a few pixels out
    for label in seeds:
        filled = (labels == label).astype(np.uint8)
        region = cv2.morphologyEx(filled, cv2.MORPH_OPEN, k_open)  # judged without thin parts
        if region.sum() < 0.005 * h * w:
            continue
        sides = (region[0].mean(), region[-1].mean(), region[:, 0].mean(), region[:, -1].mean())
        if max(sides) < 0.6:  # a blade runs along a whole side; a pocket of tissue does not
            continue
        ring = (cv2.dilate(region, k_far) > 0) & (cv2.dilate(region, k_near) == 0)
        if not ring.any():  # the whole image is one flat region
            continue
        inside = float(np.median(blurred[region > 0]))
        if float(np.median(np.abs(blurred[ring] - inside))) >= step:
            blank |= cv2.dilate(filled, k_near) > 0  # all of it, and its blurred edge
    return blank


def find_marks(
    small: np.ndarray, *, contrast: float = 0.3, max_size: float = 0.08
) -> list[tuple[np.ndarray, float]]:
    """Burned-in letters and similar marks: small, thin, bright strokes on dark ground.

    A white top-hat (the image minus its opening by a kernel wider than a stroke)
    keeps thin bright structures. A mark is a group of strokes whose top-hat peak is
    at least ``2 * contrast``, whose peak is ``contrast + 0.2`` above the median of
    the ground around it, no larger than ``max_size`` of the image and clear of the
    image edge. A cortex, a trabecula or a fracture line is neither that bright over
    its surroundings nor that small and detached, so anatomy is left alone. Returns
    (bool mask, fill value: the median of the ground around the mark) per mark.
    """
    h, w = small.shape
    n = max(h, w)
    tophat = cv2.morphologyEx(small, cv2.MORPH_TOPHAT, np.ones((_odd(0.03 * n),) * 2, np.uint8))
    strokes = (tophat >= contrast).astype(np.uint8)
    if not strokes.any():
        return []
    grouped = cv2.dilate(strokes, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    marks = []
    for i in range(1, count):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < 4 or max(bw, bh) > max_size * n or x == 0 or y == 0 or x + bw >= w or y + bh >= h:
            continue
        x0, y0, x1, y1 = max(0, x - 3), max(0, y - 3), min(w, x + bw + 3), min(h, y + bh + 3)
        mask = np.zeros((h, w), np.uint8)
        mask[y0:y1, x0:x1] = labels[y0:y1, x0:x1] == i
        sub = mask[y0:y1, x0:x1]
        if tophat[y0:y1, x0:x1][sub > 0].max() < 2 * contrast:
            continue
        ring = (cv2.dilate(sub, np.ones((5, 5), np.uint8)) > 0) & (sub == 0)
        ground = float(np.median(small[y0:y1, x0:x1][ring])) if ring.any() else 0.0
        if float(small[y0:y1, x0:x1][sub > 0].max()) - ground < contrast + 0.2:
            continue
        marks.append((mask.astype(bool), ground))
    return marks


def clean_background(
    image: np.ndarray,
    *,
    flat_tol: float = 0.04,
    edge_step: float = 0.1,
    mark_contrast: float = 0.3,
    background: float | None = None,
    keep_fraction: float = 0.15,
    margin: float = 0.02,
    analysis_size: int = 256,
) -> CleanResult:
    """Remove collimation borders, blank areas and burned-in marks.

    1. Borders: flat collimation blades, shutters and exposure borders reaching the
       image edge behind a sharp step (:func:`blank_border_regions`; the field may
       be rotated).
    2. Marks: burned-in letters (:func:`find_marks`) are filled with the grey of the
       ground around them, so no "L" or "R" is left for a model to read.
    3. Anatomy: the remaining pixels brighter than ``background`` (default: half the
       Otsu threshold, between air and tissue), opened with a small kernel; connected
       components smaller than ``keep_fraction`` of the largest are debris and are
       removed. The kept components, closed and grown by ``margin`` of the size, are
       the anatomy.
    4. Everything outside the anatomy is set to 0 (so blank areas neither move the
       windowing percentiles nor draw the localizer), and ``region`` is the
       anatomy's bounding box, which the ``clean`` step crops to.

    The analysis runs with OpenCV on a copy at most ``analysis_size`` pixels long; the
    full-resolution pixels are only filled, masked and cut.
    """
    if image.ndim != 2:
        raise ValueError(f"clean_background expects a 2-D image, got shape {image.shape}")
    h, w = image.shape
    src = image.astype(np.float32, copy=False)
    small, _ = _analysis_copy(src, analysis_size)
    a = analyse_background(
        small,
        flat_tol=flat_tol,
        edge_step=edge_step,
        mark_contrast=mark_contrast,
        background=background,
        keep_fraction=keep_fraction,
        margin=margin,
    )
    if a.anatomy is None:  # nothing to cut: the image with its marks filled
        out = src.copy()
        a.fill_marks(out, (w, h), 0, 0)
        return CleanResult(out, (0, 0, w, h), np.ones((h, w), bool), a.removed, a.small)
    x0, y0, x1, y1 = a.region((w, h))
    keep_mask = a.mask_on((w, h), x0, y0, x1, y1)  # (y1 - y0, x1 - x0) uint8
    out = src[y0:y1, x0:x1] * keep_mask  # float32 copy, 0 outside the anatomy
    a.fill_marks(out, (w, h), x0, y0)
    anatomy_mask = keep_mask.view(bool)  # 0/1 uint8: a bool view, no copy
    return CleanResult(out, (x0, y0, x1, y1), anatomy_mask, a.removed, a.preview((w, h)))


@dataclass(frozen=True)
class BackgroundAnalysis:
    """What :func:`analyse_background` found on an analysis copy, and how to map it.

    Every method takes the full image's ``size`` = (width, height): the analysis copy
    shows the same field of view, so its masks and boxes map to any resolution.
    """

    small: np.ndarray  # float32 (sh, sw): the analysis copy with its marks filled
    marks: list[tuple[np.ndarray, float]]  # (bool mask (sh, sw), fill value) per mark
    anatomy: np.ndarray | None  # uint8 (sh, sw) 0/1; None: keep the whole image
    removed: int  # marks + debris removed

    def _scale(self, size: tuple[int, int]) -> tuple[float, float]:
        sh, sw = self.small.shape
        return sw / size[0], sh / size[1]  # analysis pixels per image pixel

    def region(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The anatomy's bounding box (x0, y0, x1, y1) in image pixels, rounded outwards."""
        w, h = size
        if self.anatomy is None:
            return (0, 0, w, h)
        fx, fy = self._scale(size)
        ys, xs = np.nonzero(self.anatomy)
        x0, x1 = max(0, math.floor(xs.min() / fx)), min(w, math.ceil((xs.max() + 1) / fx))
        y0, y1 = max(0, math.floor(ys.min() / fy)), min(h, math.ceil((ys.max() + 1) / fy))
        return x0, y0, x1, y1

    def mask_on(
        self,
        size: tuple[int, int],
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """An analysis mask (default: the anatomy) on the image pixels [y0:y1, x0:x1] (nearest).

        uint8 (y1 - y0, x1 - x0) for an image of ``size`` = (width, height).
        """
        return self.mask_box(size, (x0, y0, x1, y1), (y1 - y0, x1 - x0), mask)

    def mask_box(
        self,
        size: tuple[float, float],
        box: tuple[float, float, float, float],
        shape: tuple[int, int],
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """An analysis mask sampled (nearest) on a ``shape`` = (rows, cols) grid over ``box``.

        ``box`` = (x0, y0, x1, y1) in pixels of an image of ``size`` (any resolution of
        the same field of view); returns uint8 ``shape``.
        """
        fx, fy = self._scale(size)
        x0, y0, x1, y1 = box
        kx, ky = (x1 - x0) / shape[1], (y1 - y0) / shape[0]  # image pixels per output pixel
        if mask is None:
            mask = self.anatomy if self.anatomy is not None else np.ones(self.small.shape, np.uint8)
        m = np.float32(
            [[fx * kx, 0, (x0 + 0.5 * kx) * fx - 0.5], [0, fy * ky, (y0 + 0.5 * ky) * fy - 0.5]]
        )
        flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(mask, m, (shape[1], shape[0]), flags=flags, borderValue=0)

    def paint(
        self, out: np.ndarray, size: tuple[float, float], box: tuple[float, float, float, float]
    ) -> np.ndarray:
        """Blank ``out`` (float32 pixels over ``box``) outside the anatomy and fill its marks.

        The crop-first path's version of step 4, for a region at any resolution.
        """
        if self.anatomy is not None:
            out *= self.mask_box(size, box, out.shape)
        for mask, fill in self.marks:
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
            sub = self.mask_box(size, box, out.shape, grown)
            out[(sub > 0) & (out > 0)] = fill
        return out

    def fill_marks(self, out: np.ndarray, size: tuple[int, int], x0: int, y0: int) -> None:
        """Fill the marks in ``out`` (image pixels from (x0, y0) on), only inside their boxes."""
        fx, fy = self._scale(size)
        oh, ow = out.shape
        for mask, fill in self.marks:
            ys, xs = np.nonzero(mask)
            bx0 = max(x0, math.floor((xs.min() - 1) / fx))
            by0 = max(y0, math.floor((ys.min() - 1) / fy))
            bx1 = min(x0 + ow, math.ceil((xs.max() + 2) / fx))
            by1 = min(y0 + oh, math.ceil((ys.max() + 2) / fy))
            if bx1 <= bx0 or by1 <= by0:
                continue
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
            sub = self.mask_on(size, bx0, by0, bx1, by1, grown)
            view = out[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
            view[(sub > 0) & (view > 0)] = fill

    def preview(self, size: tuple[int, int]) -> np.ndarray:
        """float32: the cleaned analysis copy cut to :meth:`region` (the localizer's preview)."""
        if self.anatomy is None:
            return self.small
        fx, fy = self._scale(size)
        x0, y0, x1, y1 = self.region(size)
        ax0, ay0 = round(x0 * fx), round(y0 * fy)
        ax1, ay1 = max(ax0 + 1, round(x1 * fx)), max(ay0 + 1, round(y1 * fy))
        return (self.small * self.anatomy)[ay0:ay1, ax0:ax1]


def analyse_background(
    small: np.ndarray,
    *,
    flat_tol: float = 0.04,
    edge_step: float = 0.1,
    mark_contrast: float = 0.3,
    background: float | None = None,
    keep_fraction: float = 0.15,
    margin: float = 0.02,
) -> BackgroundAnalysis:
    """Steps 1-3 of :func:`clean_background` on a small float32 copy of the image.

    Finds the marks, the blank borders and the anatomy mask at the copy's resolution;
    nothing at full resolution is touched (see :class:`BackgroundAnalysis`).
    """
    sh, sw = small.shape
    marks = find_marks(small, contrast=mark_contrast)
    if marks:
        small = small.copy()
        for mask, fill in marks:
            small[mask] = fill

    blank = blank_border_regions(small, tol=flat_tol, step=edge_step)
    live = small[~blank]
    if live.size < 0.01 * small.size:  # nothing but border: a blank image, keep it whole
        return BackgroundAnalysis(small, marks, None, len(marks))

    thr = background if background is not None else 0.5 * _otsu(live)
    fg = ((small > thr) & ~blank).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((_odd(0.01 * max(sh, sw)),) * 2, np.uint8))
    _n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.size == 0:  # nothing above the background: keep it whole
        return BackgroundAnalysis(small, marks, None, len(marks))
    keep = np.flatnonzero(areas >= keep_fraction * areas.max()) + 1
    debris = int(areas.size - keep.size)
    lut = np.zeros(areas.size + 1, np.uint8)
    lut[keep] = 1
    anatomy = lut[labels]
    grow = np.ones((_odd(2 * margin * max(sh, sw)),) * 2, np.uint8)
    anatomy = cv2.dilate(cv2.morphologyEx(anatomy, cv2.MORPH_CLOSE, grow), grow)
    anatomy[blank] = 0
    if not anatomy.any():  # grown and closed, then blanked away: keep it whole
        return BackgroundAnalysis(small, marks, None, len(marks))
    return BackgroundAnalysis(small, marks, anatomy, len(marks) + debris)


@dataclass(frozen=True, kw_only=True)
class CleanParams:
    flat_tol: float = 0.04  # grey-level tolerance of a flat border region
    edge_step: float = 0.1  # least step between a collimation blade and the field
    mark_contrast: float = 0.3  # least brightness of a burned-in letter over its ground
    background: float | None = None  # air / tissue threshold; None = half Otsu
    keep_fraction: float = 0.15  # components smaller than this share of the largest are marks
    margin: float = 0.02  # anatomy mask grown by this share of the size
    analysis_size: int = 256  # longest side of the analysis copy
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
    r = clean_background(
        work.image,
        flat_tol=p.flat_tol,
        edge_step=p.edge_step,
        mark_contrast=p.mark_contrast,
        background=p.background,
        keep_fraction=p.keep_fraction,
        margin=p.margin,
        analysis_size=p.analysis_size,
    )
    x0, y0, x1, y1 = r.region
    if p.crop:
        box = work.box if work.box is not None else work.source_box(x0, y0, x1, y1)
        return [replace(work.cropped(x0, y0, x1, y1, r.image), box=box, preview=r.preview)]
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
    q = (
        np.clip(sample * np.float32(U16_MAX) + np.float32(0.5), 0, U16_MAX)
        .astype(np.uint16)
        .ravel()
    )
    hist = np.bincount(q, minlength=U16_MAX + 1)
    if ignore_zero and hist[1:].sum() > 0:
        hist[0] = 0
    cdf = np.cumsum(hist)
    total = cdf[-1]
    out = []
    for p in qs:
        level = int(np.searchsorted(cdf, p / 100.0 * total, side="left"))
        out.append(min(level, U16_MAX) / U16_MAX)
    return out


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
    u16 = np.clip(image * np.float32(U16_MAX) + np.float32(0.5), 0, U16_MAX).astype(np.uint16)
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
    h, w = work.image.shape
    if max(h, w) > p.working_size:
        f = p.working_size / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        work = work.resized(area_resize(work.image, size))
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
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = work.image[cy0:cy1, cx0:cx1]
    sx, tx, sy, ty = work.to_source
    return replace(work, image=out, to_source=(sx, tx + x0 * sx, sy, ty + y0 * sy), preview=None)


def _clip_to(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = shape
    return (max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3]))


@register_step("localize", LocalizeParams)
def localize_step(work: Work, p: LocalizeParams) -> list[Work]:
    """Knee localisation (HOG + linear SVM): one crop per knee, with its laterality."""
    from pipeline.preprocess.localizer import KneeLocalizer

    loc = KneeLocalizer.load(p.weights, view=KneeLocalizer.view_of(work.meta.get("view")))
    knees = loc.detect(
        work.image,
        preview=work.preview,
        spacing_mm=work.spacing_mm,
        mode=p.mode,
        laterality=work.meta.get("laterality"),
        orientation=work.meta.get("patient_orientation"),
        min_confidence=p.min_confidence,
    )
    out = []
    for k in knees:
        if k.fallback:
            warnings.warn(
                f"{work.source or 'radiograph'}: knee localisation unsure "
                f"(confidence {k.confidence:.2f} < {p.min_confidence}); using a centre crop",
                PreprocessWarning,
                stacklevel=2,
            )
        x0, y0, x1, y1 = k.box
        item = _crop_with_fill(work, knee_crop_box(k.box, p))
        out.append(
            replace(
                item,
                laterality=k.laterality,
                box=_clip_to(work.source_box(x0, y0, x1, y1), work.source_shape),
                confidence=float(k.confidence),
                fallback=bool(k.fallback),
            )
        )
    return out


__all__ = [
    "STEPS",
    "TWO_STAGE_FACTOR",
    "TWO_STAGE_PIXELS",
    "BackgroundAnalysis",
    "CleanResult",
    "PreprocessWarning",
    "StepSpec",
    "Work",
    "analyse_background",
    "area_resize",
    "clahe",
    "clahe_levels",
    "clahe_opencv",
    "clean_background",
    "knee_crop_box",
    "pad_to_square",
    "percentile_window",
    "percentiles",
    "register_step",
    "resize_square",
]
