"""Knee localisation with HOG features and a linear SVM (after MIPT-Oulu's KneeLocalizer).

The detector scores square windows of an image, each described by a 64x64-pixel HOG
descriptor (8x8-pixel cells, 2x2-cell blocks with L2-Hys normalisation, a block
stride of 8 pixels, 9 unsigned orientation bins: 7 x 7 blocks x 36 = 1764
features), with one linear SVM. Windows are scanned at several scales: with a
pixel spacing the scales cover the physical knee sizes seen in training (in mm),
without one they cover the sizes seen relative to the image height.

Speed: all windows are scored at once. The HOG cells and blocks of a whole scaled
image are computed on a 4-pixel grid with OpenCV primitives (gradients, polar
angles, and an area resize that sums the orientation votes), so every window at
a 4-pixel stride is a strided 7 x 7 slice of one block grid. The SVM score of every
window is then one matrix product (blocks x 49 weight blocks) and one strided sum
(:func:`window_scores`), instead of one descriptor per window: about 0.2 ms per
scale for a 512-pixel radiograph, where OpenCV's ``HOGDescriptor`` needs 0.4 ms for
the block grid at an 8-pixel stride alone (and four times that for a 4-pixel
stride), and skimage one window at a time needs 0.4 s. A coarse pass (scale step
1.1) finds each knee; a fine pass around it (scale step 1.04, 2-pixel offsets) and a
score-weighted mean of the best windows place the box.

Laterality: a bilateral radiograph gives one knee per image half. In the
radiological convention (``PatientOrientation`` row direction ``L``, the default),
the knee on the viewer's left is the patient's right. A single knee takes the
DICOM laterality; without one, a second linear model on the same descriptor (the
side the fibula lies on) tells a left knee from a right one when it is sure.

Views: frontal and lateral knees look different, so the weights hold one detector
per view ("ap", "lat"); a radiograph whose DICOM ViewPosition is lateral
(:data:`LATERAL_VIEWS`) is scanned with the lateral one.

Confidence: a logistic (Platt) fit of the SVM score gives a confidence in [0, 1];
below ``min_confidence`` the knee falls back to a centre crop of the expected
size, flagged ``fallback``.

Weights (``weights/knee_hog_svm.npz``, about 25 kB) are trained on the synthetic
phantom with ``python -m pipeline train-localizer`` (see
:mod:`pipeline.preprocess.localizer_cli`).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.lib.stride_tricks import as_strided
from threadpoolctl import ThreadpoolController

from pipeline.io import atomic_write_bytes
from pipeline.preprocess.arrays import area_resize, scaled_size

WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "knee_hog_svm.npz"
FORMAT_VERSION = 3
#: DICOM ViewPosition values of a lateral view (its own detector when the weights have one).
LATERAL_VIEWS = frozenset({"LAT", "LATERAL", "LL", "RL", "LLD", "RLD", "XTABLE"})

WIN = 64  # window side in pixels of the scaled image
CELL = 8  # cell side in pixels
GRID = 4  # pixels between neighbouring cells, blocks and windows on the grid
BINS = 9  # unsigned orientation bins over 0..180 degrees
NB = 7  # blocks per window side (16-pixel blocks every 8 pixels)
FEAT = 4 * BINS  # 36 features per block (2 x 2 cells)
DIM = NB * NB * FEAT  # 1764
SPAN = (NB - 1) * CELL // GRID  # grid steps from the first to the last block of a window: 12
EPS = 1e-2  # L2-Hys regulariser (gradients of [0, 1] images)


def weights_path(weights: str | os.PathLike[str] | None = None) -> Path:
    """The weights file: ``weights`` if given, else the one shipped in the package."""
    return Path(weights) if weights is not None else WEIGHTS_FILE


# --------------------------------------------------------------------------- HOG on a grid


_LOWER_BIN = np.array([(k - 1) % BINS for k in range(2 * BINS + 1)], dtype=np.intp)
_UPPER_BIN = np.array([k % BINS for k in range(2 * BINS + 1)], dtype=np.intp)


@functools.lru_cache(maxsize=32)
def _pixel_offsets(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.intp) * BINS


def hog_grid(image: np.ndarray) -> np.ndarray:
    """HOG blocks of a [0, 1] float image on a 4-pixel grid: (gy, gx, 36).

    Block (y, x) covers pixels [4y, 4y + 16) x [4x, 4x + 16): its four 8x8 cells,
    in the order (top-left, top-right, bottom-left, bottom-right), each a 9-bin
    histogram of gradient orientations (votes split linearly between the two
    nearest bins, weighted by the gradient magnitude), L2-Hys normalised.
    """
    h, w = (image.shape[0] // GRID) * GRID, (image.shape[1] // GRID) * GRID
    img = np.ascontiguousarray(image[:h, :w], dtype=np.float32)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=1)  # central differences
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=1)
    mag, ang = cv2.cartToPolar(gx, gy, angleInDegrees=True)  # (h, w) each, ang in [0, 360)
    pos = ang * np.float32(BINS / 180.0) - np.float32(0.5)  # bin position, period 9 (unsigned)
    lower = np.floor(pos)
    upper_w = pos - lower  # weight of the upper bin
    k = lower.astype(np.int32).ravel() + 1  # 0..18
    base = _pixel_offsets(h * w)
    votes = np.zeros((h * w, BINS), np.float32)  # (h*w, 9)
    flat = votes.reshape(-1)
    flat[base + _LOWER_BIN[k]] = (mag * (1 - upper_w)).ravel()
    flat[base + _UPPER_BIN[k]] += (mag * upper_w).ravel()
    # Mean of every 4x4 patch, then 8x8 cells on the 4-pixel grid as 2x2 sums of them.
    q = cv2.resize(votes.reshape(h, w, BINS), (w // GRID, h // GRID), interpolation=cv2.INTER_AREA)
    q = q.reshape(h // GRID, w // GRID, BINS)
    cells = q[:-1, :-1] + q[1:, :-1] + q[:-1, 1:] + q[1:, 1:]  # (h/4 - 1, w/4 - 1, 9)
    s = CELL // GRID
    blocks = np.concatenate(
        [cells[:-s, :-s], cells[:-s, s:], cells[s:, :-s], cells[s:, s:]], axis=-1
    )  # (h/4 - 3, w/4 - 3, 36)
    blocks /= np.sqrt((blocks * blocks).sum(axis=-1, keepdims=True) + EPS**2)
    np.minimum(blocks, np.float32(0.2), out=blocks)
    blocks /= np.sqrt((blocks * blocks).sum(axis=-1, keepdims=True) + EPS**2)
    return blocks


def window_features(blocks: np.ndarray, y: int, x: int) -> np.ndarray:
    """The descriptor (1764,) of the window at grid position (y, x): pixels [4y, 4y + 64)."""
    return blocks[y : y + SPAN + 1 : 2, x : x + SPAN + 1 : 2].reshape(-1)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # (made once: it inspects the loaded libraries)


def _one_blas_thread() -> Any:
    """BLAS on one thread for the scan's small products: a threaded BLAS on a CPU that
    trials share stalls on them (measured 24 ms against 0.4 ms for one grid)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def window_scores(blocks: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """Linear score of every window of a block grid: (gy - 12, gx - 12), [y, x]."""
    gy, gx, _ = blocks.shape
    oy, ox = gy - SPAN, gx - SPAN
    if oy <= 0 or ox <= 0:
        return np.empty((0, 0), np.float32)
    g = np.ascontiguousarray(blocks.reshape(-1, FEAT) @ w.reshape(NB * NB, FEAT).T)
    g = g.reshape(gy, gx, NB * NB)  # g[y, x, 7i + j] = block (y, x) . weights of block (i, j)
    s0, s1, s2 = g.strides
    # v[y, x, i, j] = g[y + 2i, x + 2j, 7i + j]
    v = as_strided(g, shape=(oy, ox, NB, NB), strides=(s0, s1, 2 * s0 + NB * s2, 2 * s1 + s2))
    return v.sum(axis=(2, 3)) + np.float32(b)


def stretch_levels(image: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentiles of the non-zero pixels (the contrast stretch before HOG)."""
    nz = image[image > 0]
    if nz.size < 16:
        return 0.0, 1.0
    lo, hi = np.percentile(nz, (1.0, 99.0))
    return float(lo), float(max(hi, lo + 1e-3))


def stretch(image: np.ndarray, levels: tuple[float, float]) -> np.ndarray:
    lo, hi = levels
    out = (image - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def patch_features(
    image: np.ndarray, levels: tuple[float, float], cx: float, cy: float, window: float
) -> np.ndarray:
    """HOG descriptor (1764,) of the square window of side ``window`` centred at (cx, cy).

    One window on its own (the scan scores all windows at once instead): what the
    left/right model reads and what training learns from.
    """
    margin = 16  # scaled pixels around the window: two blocks
    f = WIN / window
    half = (WIN / 2 + margin) / f
    x0, y0 = round(cx - half), round(cy - half)
    size = max(1, round(2 * half))
    h, w = image.shape
    crop = np.zeros((size, size), dtype=np.float32)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    if cx1 > cx0 and cy1 > cy0:
        crop[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = image[cy0:cy1, cx0:cx1]
    n = WIN + 2 * margin
    inter = cv2.INTER_AREA if n < size else cv2.INTER_LINEAR
    small = stretch(cv2.resize(crop, (n, n), interpolation=inter), levels)
    return window_features(hog_grid(small), margin // GRID, margin // GRID)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def clip_box(box: Sequence[float], shape: tuple[int, int]) -> tuple[float, float, float, float]:
    h, w = shape
    return (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))


def _resize(image: np.ndarray, f: float) -> np.ndarray:
    h, w = image.shape
    size = scaled_size((w, h), f)
    if f < 1:
        return area_resize(image, size)  # two stages on a large image
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class KneeBox:
    """One detected knee, in pixels of the image given to :meth:`KneeLocalizer.detect`."""

    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), may reach outside the image
    score: float  # SVM score
    confidence: float  # in [0, 1]
    laterality: str | None  # "L" / "R" / None
    fallback: bool  # centre crop because the detector was unsure


@dataclass(frozen=True)
class _Cand:
    score: float
    cx: float
    cy: float
    side: float  # window side in image pixels


def _patient_right_on_left(orientation: Any) -> bool:
    """True unless ``PatientOrientation`` says the rows run towards the patient's right."""
    if orientation is None:
        return True
    first = (
        orientation[0] if isinstance(orientation, list | tuple) else str(orientation).split("\\")[0]
    )
    return not str(first).upper().startswith("R")


class _Pyramid:
    """A prepared image at the scales the scan needs (one area resize from a shared base)."""

    def __init__(
        self,
        image: np.ndarray,
        smallest_side: float,
        context: float,
        preview: np.ndarray | None = None,
    ):
        self.image = image
        f_base = min(1.0, WIN / (smallest_side * context) * 1.05)
        self.f_base = f_base
        h, w = image.shape
        if f_base >= 1.0:
            self.base = image
        elif (
            preview is not None
            and preview.shape[0] >= h * f_base
            and preview.shape[1] >= w * f_base
        ):
            # the small copy is detailed enough: resize it instead of the full image
            self.base = cv2.resize(
                preview, scaled_size((w, h), f_base), interpolation=cv2.INTER_AREA
            )
        else:
            self.base = _resize(image, f_base)
        self.levels = stretch_levels(self.base)

    def scaled(
        self, f: float, region: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, float, float, float, float]:
        """The image (or a region of it) scaled by ``f`` and stretched.

        Returns (image, fx, fy, x0, y0): the actual scale factors and the image-pixel
        origin of the scaled image's first pixel.
        """
        src, fb = self.base, self.f_base
        bx0 = by0 = 0
        if region is not None:
            bx0, by0, bx1, by1 = (round(v * fb) for v in region)
            src = src[by0:by1, bx0:bx1]
        out = _resize(src, f / fb)
        fx = out.shape[1] / max(src.shape[1], 1) * fb
        fy = out.shape[0] / max(src.shape[0], 1) * fb
        return stretch(out, self.levels), fx, fy, bx0 / fb, by0 / fb


@dataclass(frozen=True, kw_only=True)
class KneeLocalizer:
    """A trained HOG + linear SVM knee detector (load with :meth:`load`)."""

    w: np.ndarray  # (1764,) float32 SVM weights
    b: float  # SVM bias
    platt: tuple[float, float]  # confidence = sigmoid(a * score + c)
    context: float  # window side / knee box side
    size_mm: tuple[float, float, float]  # knee box side in mm: (low, median, high)
    size_frac: tuple[float, float, float]  # knee box side / image height: (low, median, high)
    side_w: np.ndarray | None = None  # (1764,) right-vs-left knee weights (logistic)
    side_b: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ i/o

    @classmethod
    def load(
        cls, weights: str | os.PathLike[str] | None = None, *, view: str = "ap"
    ) -> KneeLocalizer:
        """The detector for ``view`` ("ap" or "lat"; "ap" when the file has no such view).

        ``weights``: a file from :func:`save_localizers` (default: the shipped one);
        loading is cached per path and modification time.
        """
        path = weights_path(weights)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no knee localizer weights; train them with "
                "`python -m pipeline train-localizer --data DIR --out PATH` "
                "or drop 'localize' from the preprocessing steps"
            ) from None
        models = _load_cached(str(path), mtime)
        return models.get(view) or models["ap"]

    @staticmethod
    def view_of(meta_view: Any) -> str:
        """ "lat" for a lateral DICOM ViewPosition, else "ap"."""
        return "lat" if str(meta_view or "").upper() in LATERAL_VIEWS else "ap"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this detector alone (as the "ap" view) to a small .npz."""
        return save_localizers(path, {"ap": self})

    # ------------------------------------------------------------------ scoring

    def confidence(self, score: float) -> float:
        """P(knee | SVM score), from the Platt fit."""
        a, c = self.platt
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, a * score + c))))

    def expected_side(
        self, shape: tuple[int, int], spacing_mm: tuple[float, float] | None
    ) -> tuple[float, float, float]:
        """(low, median, high) knee box side in pixels for an image of ``shape``."""
        if spacing_mm is not None and self.size_mm[1] > 0:
            mm = math.sqrt(spacing_mm[0] * spacing_mm[1])
            lo, med, hi = (s / mm for s in self.size_mm)
            return lo, med, hi
        h = shape[0]
        lo, med, hi = (s * h for s in self.size_frac)
        return lo / 1.15, med, hi * 1.15  # the height varies more than the physical size

    def scan_scale(
        self, shape: tuple[int, int], spacing_mm: tuple[float, float] | None = None
    ) -> float:
        """The scale (<= 1) at which :meth:`detect` scans an image of ``shape``.

        The smallest expected knee window is then 64 pixels (plus 5%): an image
        given at this scale (with ``spacing_mm`` scaled to match) is scanned as is.
        """
        lo, _, _ = self.expected_side(shape, spacing_mm)
        return min(1.0, WIN / (lo * self.context) * 1.05)

    def _scan(
        self,
        pyr: _Pyramid,
        sides: Sequence[float],
        offsets: Sequence[tuple[int, int]] = ((0, 0),),
        region: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """Score every window of each side (image pixels) on a 4-pixel grid (plus offsets).

        Returns (N, 4) float64 rows ``[score, cx, cy, window side]`` in image pixels.
        """
        with _one_blas_thread():
            out = self._scan_sides(pyr, sides, offsets, region)
        return np.concatenate(out) if out else np.empty((0, 4))

    def _scan_sides(
        self,
        pyr: _Pyramid,
        sides: Sequence[float],
        offsets: Sequence[tuple[int, int]],
        region: tuple[int, int, int, int] | None,
    ) -> list[np.ndarray]:
        out = []
        for side in sides:
            f = WIN / (side * self.context)  # scaled pixels per image pixel
            small, fx, fy, rx0, ry0 = pyr.scaled(f, region)
            for ox, oy in offsets:
                if small.shape[0] - oy < WIN or small.shape[1] - ox < WIN:
                    continue
                scores = window_scores(hog_grid(small[oy:, ox:]), self.w, self.b)  # (ny, nx)
                if scores.size == 0:
                    continue
                gy, gx = np.divmod(np.arange(scores.size), scores.shape[1])
                rows = np.empty((scores.size, 4))
                rows[:, 0] = scores.ravel()
                rows[:, 1] = rx0 + (ox + GRID * gx + WIN / 2) / fx
                rows[:, 2] = ry0 + (oy + GRID * gy + WIN / 2) / fy
                rows[:, 3] = WIN * (1 / fx + 1 / fy) / 2
                out.append(rows)
        return out

    def _refine(self, pyr: _Pyramid, best: _Cand) -> _Cand:
        """Fine pass around a coarse detection, then a score-weighted mean of the best windows."""
        h, w = pyr.image.shape
        m = 0.2 * best.side
        region = (
            max(0, int(best.cx - best.side / 2 - m)),
            max(0, int(best.cy - best.side / 2 - m)),
            min(w, math.ceil(best.cx + best.side / 2 + m)),
            min(h, math.ceil(best.cy + best.side / 2 + m)),
        )
        sides = [best.side / self.context * r for r in (0.95, 1.05)]
        rows = self._scan(pyr, sides, ((0, 0),), region)
        mid = self._scan(pyr, [best.side / self.context], ((0, 0), (2, 2)), region)
        rows = np.concatenate([rows, mid])
        rows = np.concatenate([rows, [[best.score, best.cx, best.cy, best.side]]])
        top = rows[:, 0].max()
        near = rows[rows[:, 0] >= top - 0.25]
        wts = np.exp((near[:, 0] - top) / 0.08)
        cx, cy, side = (wts[:, None] * near[:, 1:]).sum(axis=0) / wts.sum()
        return _Cand(float(top), float(cx), float(cy), float(side))

    def _pyramid(
        self,
        image: np.ndarray,
        spacing_mm: tuple[float, float] | None,
        preview: np.ndarray | None = None,
    ) -> tuple[_Pyramid, list[float]]:
        lo, _, hi = self.expected_side(image.shape, spacing_mm)
        n = max(2, math.ceil(math.log(hi / lo) / math.log(1.12)) + 1)
        sides = [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]
        return _Pyramid(image, lo, self.context, preview), sides

    def candidates(
        self, image: np.ndarray, spacing_mm: tuple[float, float] | None = None
    ) -> np.ndarray:
        """Coarse pass over the whole image: (N, 4) rows ``[score, cx, cy, window side]``."""
        pyr, sides = self._pyramid(np.asarray(image, dtype=np.float32), spacing_mm)
        return self._scan(pyr, sides)

    def side_of(self, image: np.ndarray, box: Sequence[float]) -> tuple[str | None, float]:
        """("R" / "L", probability) of the knee in ``box`` from its anatomy; (None, 0.5) untrained."""
        if self.side_w is None or self.side_w.size != DIM:
            return None, 0.5
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0)
        img = np.asarray(image, dtype=np.float32)
        feats = patch_features(
            img, stretch_levels(img), (x0 + x1) / 2, (y0 + y1) / 2, side * self.context
        )
        z = float(feats @ self.side_w + self.side_b)
        p_right = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))
        return ("R", p_right) if p_right >= 0.5 else ("L", 1.0 - p_right)

    # ------------------------------------------------------------------ detection

    def detect(
        self,
        image: np.ndarray,
        *,
        spacing_mm: tuple[float, float] | None = None,
        mode: str = "auto",
        laterality: str | None = None,
        orientation: Any = None,
        min_confidence: float = 0.5,
        side_confidence: float = 0.9,
        preview: np.ndarray | None = None,
    ) -> list[KneeBox]:
        """Find the knee(s) of a [0, 1] float image; one :class:`KneeBox` per knee, left to right.

        ``mode``: ``"single"`` (one knee), ``"bilateral"`` (one per image half) or
        ``"auto"``: bilateral when the DICOM laterality is ``"B"``, single when it
        is ``"L"``/``"R"``, and otherwise bilateral only when both halves hold a
        confident knee clear of the other. A single knee without a DICOM laterality
        is called left or right from its anatomy when that call reaches
        ``side_confidence``. ``preview``: a smaller copy of ``image`` (same field of
        view) to scan instead of resizing ``image`` itself.
        """
        image = np.asarray(image, dtype=np.float32)
        h, w = image.shape
        pyr, sides = self._pyramid(image, spacing_mm, preview)
        cands = self._scan(pyr, sides)
        if mode == "auto":
            mode = {"B": "bilateral", "L": "single", "R": "single"}.get(
                str(laterality or ""), "auto"
            )
        side_lat = ("R", "L") if _patient_right_on_left(orientation) else ("L", "R")
        _, med, _ = self.expected_side(image.shape, spacing_mm)

        def best_in(x0: float, x1: float) -> _Cand | None:
            inside = cands[(cands[:, 1] >= x0) & (cands[:, 1] < x1)]
            if inside.size == 0:
                return None
            s, cx, cy, side = inside[np.argmax(inside[:, 0])]
            return _Cand(float(s), float(cx), float(cy), float(side))

        halves = [best_in(0, w / 2), best_in(w / 2, w)]
        if mode == "auto":
            a, b = halves
            ok = all(c is not None and self.confidence(c.score) >= min_confidence for c in halves)
            apart = (
                a is not None and b is not None and (b.cx - a.cx) >= 0.75 * (a.side + b.side) / 2
            )
            mode = "bilateral" if ok and apart else "single"

        if mode == "bilateral":
            picks = [(halves[0], side_lat[0], w / 4), (halves[1], side_lat[1], 3 * w / 4)]
        else:
            lat = laterality if laterality in ("L", "R") else None
            picks = [(best_in(-math.inf, math.inf), lat, w / 2)]

        out = []
        for cand, lat, centre_x in picks:
            if cand is not None:
                cand = self._refine(pyr, cand)
            conf = self.confidence(cand.score) if cand is not None else 0.0
            if cand is None or conf < min_confidence:  # centre crop of the expected size
                half = med / 2
                box = (centre_x - half, h / 2 - half, centre_x + half, h / 2 + half)
                score = cand.score if cand is not None else -math.inf
                out.append(KneeBox(box, score, conf, lat, True))
                continue
            half = cand.side / self.context / 2
            box = (cand.cx - half, cand.cy - half, cand.cx + half, cand.cy + half)
            if lat is None and mode == "single":
                guess, p = self.side_of(image, box)
                lat = guess if p >= side_confidence else None
            out.append(KneeBox(box, cand.score, conf, lat, False))
        return out


def save_localizers(path: str | os.PathLike[str], models: Mapping[str, KneeLocalizer]) -> Path:
    """Write one detector per view ("ap" required, "lat" optional) as a compressed .npz, atomically."""
    if "ap" not in models:
        raise ValueError("the weights need an 'ap' detector")
    arrays: dict[str, np.ndarray] = {
        "format_version": np.int64(FORMAT_VERSION),
        "hog": np.asarray([WIN, CELL, GRID, BINS, NB], dtype=np.int64),
        "views": np.asarray(sorted(models)),
    }
    for v, m in models.items():
        arrays |= {
            f"{v}_w": m.w.astype(np.float32),
            f"{v}_b": np.float64(m.b),
            f"{v}_platt": np.asarray(m.platt, dtype=np.float64),
            f"{v}_context": np.float64(m.context),
            f"{v}_size_mm": np.asarray(m.size_mm, dtype=np.float64),
            f"{v}_size_frac": np.asarray(m.size_frac, dtype=np.float64),
            f"{v}_side_w": (m.side_w if m.side_w is not None else np.zeros(0)).astype(np.float32),
            f"{v}_side_b": np.float64(m.side_b),
            f"{v}_info": np.frombuffer(
                json.dumps(dict(m.info), sort_keys=True).encode(), dtype=np.uint8
            ),
        }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> dict[str, KneeLocalizer]:
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: localizer weights format {version}, expected {FORMAT_VERSION}; retrain them"
            )
        hog = tuple(int(v) for v in z["hog"])
        if hog != (WIN, CELL, GRID, BINS, NB):
            raise ValueError(
                f"{path}: weights for HOG {hog}, this version uses {(WIN, CELL, GRID, BINS, NB)}"
            )
        models = {}
        for v in (str(x) for x in z["views"]):
            side_w = z[f"{v}_side_w"].astype(np.float32)
            models[v] = KneeLocalizer(
                w=z[f"{v}_w"].astype(np.float32),
                b=float(z[f"{v}_b"]),
                platt=tuple(float(x) for x in z[f"{v}_platt"]),  # type: ignore[arg-type]
                context=float(z[f"{v}_context"]),
                size_mm=tuple(float(x) for x in z[f"{v}_size_mm"]),  # type: ignore[arg-type]
                size_frac=tuple(float(x) for x in z[f"{v}_size_frac"]),  # type: ignore[arg-type]
                side_w=side_w if side_w.size == DIM else None,
                side_b=float(z[f"{v}_side_b"]),
                info=json.loads(bytes(z[f"{v}_info"]).decode() or "{}"),
            )
        return models
