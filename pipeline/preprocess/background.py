"""Cleaning a radiograph's background: collimation, shutters, bars, blank areas, marks.

:func:`clean_background` is the ``clean`` step's array function. Its analysis runs on
a small copy of the image (:func:`analyse_background`, giving a
:class:`BackgroundAnalysis`), whose masks and boxes then map to the image at any
resolution: the full-resolution pixels are only filled, masked and cut. The
crop-first route (:mod:`pipeline.preprocess.cropfirst`) runs the same analysis and
paints only the crops it keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.preprocess.arrays import shrink

__all__ = [
    "BackgroundAnalysis",
    "BackgroundOptions",
    "CleanResult",
    "analyse_background",
    "blank_border_regions",
    "border_shape",
    "clean_background",
    "find_marks",
    "flat_bars",
]


@dataclass(frozen=True, kw_only=True)
class BackgroundOptions:
    """The settings of :func:`clean_background` (the ``clean`` step's parameters add ``crop``)."""

    flat_tol: float = 0.04  # grey-level tolerance of a flat border region
    edge_step: float = 0.1  # least step between a collimation blade and the field
    mark_contrast: float = 0.3  # least brightness of a burned-in letter over its ground
    background: float | None = None  # air / tissue threshold; None = half Otsu
    keep_fraction: float = 0.15  # components smaller than this share of the largest are marks
    margin: float = 0.02  # anatomy mask grown by this share of the size
    analysis_size: int = 256  # longest side of the analysis copy


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean_background` found, in input pixel coordinates."""

    image: np.ndarray  # float32 (h, w): the kept region, everything but the anatomy set to 0
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1): the anatomy's bounding box (+ margin)
    anatomy: np.ndarray  # bool (h, w): pixels kept as anatomy
    markers: int  # burned-in marks / debris removed
    preview: np.ndarray | None = None  # float32: ``image`` at the analysis resolution


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1] (256 bins)."""
    u8 = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(u8.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / 255.0


def _odd(n: float) -> int:
    return max(3, round(n) | 1)


def border_shape(region: np.ndarray) -> str | None:
    """What a region reaching the image edge looks like, if it is man-made.

    ``"blade"``: the image cut by one straight line at any angle (a collimator shutter:
    the region's edge inside the image is one line, its median distance to it at most
    1.5 pixels, and the region fills the half of the image beyond it); ``"corner bar"``:
    a rectangle in a corner (a redaction bar, a label: it fills 95% of its bounding
    box, which touches two adjacent edges); ``"edge bar"``: such a rectangle along one
    edge, longer along it than it is deep; otherwise None (anatomy, soft tissue, a
    bone shaft leaving the frame: their edges are curved, or they are deeper than
    wide).
    """
    h, w = region.shape
    ys, xs = np.nonzero(region)
    if xs.size == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    if xs.size >= 0.95 * (x1 - x0 + 1) * (y1 - y0 + 1):  # a rectangle
        across, down = x0 == 0 or x1 == w - 1, y0 == 0 or y1 == h - 1
        if across and down:
            return "corner bar"
        if (down and x1 - x0 > y1 - y0) or (across and y1 - y0 > x1 - x0):
            return "edge bar"
    edge = region.astype(np.uint8) - cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8))
    ey, ex = np.nonzero(edge)
    inner = (ex > 1) & (ex < w - 2) & (ey > 1) & (ey < h - 2)
    if inner.sum() < 8:
        return None
    pts = np.stack([ex[inner], ey[inner]], 1).astype(np.float32)
    vx, vy, cx, cy = cv2.fitLine(pts, cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
    resid = np.abs((pts[:, 0] - cx) * vy - (pts[:, 1] - cy) * vx)
    if float(np.median(resid)) > 1.5:  # (the median: an opening rounds the tips)
        return None
    gy, gx = np.mgrid[:h, :w]
    side = (gx - cx) * vy - (gy - cy) * vx
    half = side > 0 if float(side[region > 0].mean()) > 0 else side < 0
    overlap = float((half & (region > 0)).sum()) / max(float((half | (region > 0)).sum()), 1.0)
    return "blade" if overlap >= 0.95 else None


def blank_border_regions(small: np.ndarray, *, tol: float = 0.04, step: float = 0.1) -> np.ndarray:
    """Flat regions reaching the image edge behind a sharp step: collimation, shutters, bars.

    Border pixels seed flood fills (fixed range: every connected pixel within ``tol``
    of the seed value, on a slightly blurred copy, so a smooth ramp cannot leak far).
    A filled region is a collimation blade, shutter, exposure border or redaction bar
    when it is not thin (it survives an opening), runs along most of one side of the
    image or is a blade at any angle or a bar in a corner (:func:`border_shape`), and
    the pixels a little way around it differ from it by at least ``step`` (its edge);
    a blade or bar that does not run along a side must also be brighter than all
    round it (unexposed) or darker than all round it (a border). A band of smooth soft
    tissue or a strip of bone reaching the edge has no such step, and a pocket of soft
    tissue between two bones neither runs along a side nor has one straight edge. The
    field may be rotated: nothing assumes straight rows or columns. Returns a bool mask.
    """
    h, w = small.shape
    blurred = cv2.GaussianBlur(small, (0, 0), 1.0)
    labels = np.zeros((h + 2, w + 2), np.uint8)  # floodFill's mask has a 1-pixel frame
    stride = max(1, min(h, w) // 64)
    edge = [(x, 0) for x in range(0, w, stride)] + [(x, h - 1) for x in range(0, w, stride)]
    edge += [(0, y) for y in range(0, h, stride)] + [(w - 1, y) for y in range(0, h, stride)]
    # no seed on an edge: from a blade's blurred edge, a fill would take only part of it
    mean = cv2.blur(blurred, (5, 5))
    spread = np.sqrt(np.maximum(cv2.blur(blurred * blurred, (5, 5)) - mean * mean, 0))
    seeds = []
    label = 0
    for x, y in edge:
        if labels[y + 1, x + 1] or label == 255 or spread[y, x] > tol:
            continue
        label += 1
        flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (label << 8)
        area, *_ = cv2.floodFill(blurred, labels, (x, y), 0, tol, tol, flags)
        if area >= 0.005 * h * w:
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
        along = max(sides) >= 0.6  # a blade runs along a whole side; a pocket of tissue does not
        if not along and border_shape(region) is None:  # ... nor is it a blade or a bar
            continue
        ring = (cv2.dilate(region, k_far) > 0) & (cv2.dilate(region, k_near) == 0)
        if not ring.any():  # the whole image is one flat region
            continue
        diff = blurred[ring] - float(np.median(blurred[region > 0]))
        if float(np.median(np.abs(diff))) < step:
            continue
        # a blade or a bar is brighter (unexposed) or darker (a border) than all round it;
        # a pocket of soft tissue has bone on one side and skin on the other
        if along or max((diff > step / 2).mean(), (diff < -step / 2).mean()) >= 0.9:
            blank |= cv2.dilate(filled, k_near) > 0  # all of it, and its blurred edge
    return blank


def find_marks(
    small: np.ndarray, *, contrast: float = 0.3, max_size: float = 0.08
) -> list[tuple[np.ndarray, float]]:
    """Burned-in letters and similar marks: small, thin, bright strokes on dark ground.

    A white top-hat (the image minus its opening by a kernel wider than a stroke)
    keeps thin bright structures. A mark is a group of strokes whose top-hat peak is
    at least ``2 * contrast``, whose peak is ``contrast + 0.2`` above the median of
    the ground around it, no larger than ``max_size`` of the image (or, a line of
    text: three strokes or more, at most 5% of it tall, twice as wide as tall and at
    most half the image wide) and clear of the image edge. A cortex, a trabecula or a fracture
    line is neither that bright over its surroundings nor that small and detached,
    so anatomy is left alone. Returns (bool mask, fill value: the median of the
    ground around the mark) per mark.
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
        small_mark = max(bw, bh) <= max_size * n
        text_line = bh <= 0.05 * n and 2 * bh <= bw <= 0.5 * n
        if text_line and not small_mark:  # a line of text holds several letters
            inside = (labels[y : y + bh, x : x + bw] == i) & (strokes[y : y + bh, x : x + bw] > 0)
            text_line = cv2.connectedComponents(inside.astype(np.uint8))[0] - 1 >= 3
        if area < 4 or not (small_mark or text_line):
            continue
        if x == 0 or y == 0 or x + bw >= w or y + bh >= h:
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
        if not small_mark and not _even_ground(small[y0:y1, x0:x1], ring, contrast / 2):
            continue  # a bright rim between a dark joint space and bone, not text
        marks.append((mask.astype(bool), ground))
    return marks


def _even_ground(patch: np.ndarray, ring: np.ndarray, tol: float) -> bool:
    """Whether the ground above a line of text is as bright as the ground below it."""
    half = patch.shape[0] // 2
    above, below = patch[:half][ring[:half]], patch[half:][ring[half:]]
    if above.size == 0 or below.size == 0:
        return False
    return abs(float(np.median(above)) - float(np.median(below))) < tol


def clean_background(
    image: np.ndarray, options: BackgroundOptions = BackgroundOptions()
) -> CleanResult:
    """Remove collimation borders, blank areas and burned-in marks.

    1. Borders: flat collimation blades, shutters at any angle, exposure borders and
       bars in a corner or along an edge reaching the image edge behind a sharp step
       (:func:`blank_border_regions`; the field may be rotated).
    2. Marks: burned-in letters and lines of text (:func:`find_marks`) are filled
       with the grey of the ground around them, so no "L" or "R" is left for a model
       to read.
    3. Anatomy: the remaining pixels brighter than ``options.background`` (default:
       half the Otsu threshold, between air and tissue), opened with a small kernel;
       white flat bars (:func:`flat_bars`: a redaction bar, a lead ruler) are left
       out, and out of the threshold; connected components smaller than
       ``keep_fraction`` of the largest are debris and are removed. The kept
       components, closed and grown by ``margin`` of the size, are the anatomy, so
       neither bars nor rulers move the crop.
    4. Everything outside the anatomy is set to 0 (so blank areas neither move the
       windowing percentiles nor draw the localizer), and ``region`` is the
       anatomy's bounding box, which the ``clean`` step crops to.

    The analysis runs with OpenCV on a copy at most ``options.analysis_size`` pixels
    long; the full-resolution pixels are only filled, masked and cut.
    """
    if image.ndim != 2:
        raise ValueError(f"clean_background expects a 2-D image, got shape {image.shape}")
    h, w = image.shape
    src = image.astype(np.float32, copy=False)
    small, _ = shrink(src, options.analysis_size)
    a = analyse_background(small, options)
    if a.anatomy is None:  # nothing to cut: the image with its marks filled
        out = src.copy()
        a.fill_marks(out, (w, h), 0, 0)
        return CleanResult(out, (0, 0, w, h), np.ones((h, w), bool), a.removed, a.small)
    x0, y0, x1, y1 = a.region((w, h))
    keep_mask = a.mask_box((w, h), (x0, y0, x1, y1), (y1 - y0, x1 - x0))  # uint8
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

    def mask_box(
        self,
        size: tuple[float, float],
        box: tuple[float, float, float, float],
        shape: tuple[int, int],
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """An analysis mask (default: the anatomy) sampled (nearest) on a ``shape`` = (rows,
        cols) grid over ``box``.

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
            sub = self.mask_box(size, (bx0, by0, bx1, by1), (by1 - by0, bx1 - bx0), grown)
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


def flat_bars(
    small: np.ndarray, labels: np.ndarray, stats: np.ndarray, *, tol: float = 0.04
) -> np.ndarray:
    """Which foreground components (bool per label 1..n) are flat rectangular bars:
    a white redaction bar, a lead ruler, a label's box, not anatomy.

    A bar is white (its median grey level at least 0.85: a black bar is no
    foreground), fills at least 85% of its bounding box, and most of its grey levels
    lie within ``tol / 2`` of their median (the median absolute deviation: a ruler's
    ticks do not count); bone is textured and curved, soft tissue is not white.
    """
    n = stats.shape[0] - 1
    out = np.zeros(n, bool)
    area = stats[1:, cv2.CC_STAT_AREA]
    box = stats[1:, cv2.CC_STAT_WIDTH] * stats[1:, cv2.CC_STAT_HEIGHT]
    for i in np.flatnonzero((area >= 16) & (area >= 0.85 * box)) + 1:
        x, y, bw, bh, _ = (int(v) for v in stats[i])
        values = small[y : y + bh, x : x + bw][labels[y : y + bh, x : x + bw] == i]
        level = float(np.median(values))
        out[i - 1] = level >= 0.85 and float(np.median(np.abs(values - level))) < tol / 2
    return out


def _components(
    small: np.ndarray, blank: np.ndarray, o: BackgroundOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (labels, stats) of what is brighter than the background
    (``o.background``, else half the Otsu threshold of the pixels not blanked), opened."""
    sh, sw = small.shape
    thr = o.background if o.background is not None else 0.5 * _otsu(small[~blank])
    fg = ((small > thr) & ~blank).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((_odd(0.01 * max(sh, sw)),) * 2, np.uint8))
    _n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    return labels, stats


def analyse_background(
    small: np.ndarray, options: BackgroundOptions = BackgroundOptions()
) -> BackgroundAnalysis:
    """Steps 1-3 of :func:`clean_background` on a small float32 copy of the image.

    Finds the marks, the blank borders and the anatomy mask at the copy's resolution;
    nothing at full resolution is touched (see :class:`BackgroundAnalysis`).
    ``options.analysis_size`` is not used: ``small`` is the analysis copy already.
    """
    o = options
    sh, sw = small.shape
    marks = find_marks(small, contrast=o.mark_contrast)
    if marks:
        small = small.copy()
        for mask, fill in marks:
            small[mask] = fill

    blank = blank_border_regions(small, tol=o.flat_tol, step=o.edge_step)
    live = small[~blank]
    if live.size < 0.01 * small.size:  # nothing but border: a blank image, keep it whole
        return BackgroundAnalysis(small, marks, None, len(marks))

    labels, stats = _components(small, blank, o)
    bars = flat_bars(small, labels, stats, tol=o.flat_tol)
    if bars.any() and o.background is None:  # a bar is no tissue: leave it out of Otsu
        bar = np.isin(labels, np.flatnonzero(bars) + 1).astype(np.uint8)
        blank = blank | (cv2.dilate(bar, np.ones((5, 5), np.uint8)) > 0)
        labels, stats = _components(small, blank, o)
        bars = flat_bars(small, labels, stats, tol=o.flat_tol)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.size == 0:  # nothing above the background: keep it whole
        return BackgroundAnalysis(small, marks, None, len(marks))
    keep = np.flatnonzero((areas >= o.keep_fraction * areas[~bars].max(initial=0)) & ~bars) + 1
    debris = int(areas.size - keep.size)
    lut = np.zeros(areas.size + 1, np.uint8)
    lut[keep] = 1
    anatomy = lut[labels]
    grow = np.ones((_odd(2 * o.margin * max(sh, sw)),) * 2, np.uint8)
    anatomy = cv2.dilate(cv2.morphologyEx(anatomy, cv2.MORPH_CLOSE, grow), grow)
    anatomy[blank] = 0
    if not anatomy.any():  # grown and closed, then blanked away: keep it whole
        return BackgroundAnalysis(small, marks, None, len(marks))
    return BackgroundAnalysis(small, marks, anatomy, len(marks) + debris)
