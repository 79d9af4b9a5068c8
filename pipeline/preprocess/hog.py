"""HOG features on a 4-pixel grid, and the scaled copies of an image that a window scan reads.

Every window is described by a 64x64-pixel HOG descriptor (8x8-pixel cells, 2x2-cell
blocks with L2-Hys normalisation, a block stride of 8 pixels, 9 unsigned orientation
bins: 7 x 7 blocks x 36 = 1764 features). The knee localizer
(:mod:`pipeline.preprocess.localizer`) and the out-of-scope decision
(:mod:`pipeline.preprocess.scope`) both read them.

Speed: all windows are scored at once. The HOG cells and blocks of a whole scaled
image are computed on a 4-pixel grid with OpenCV primitives (gradients, polar
angles, and an area resize that sums the orientation votes), so every window at
a 4-pixel stride is a strided 7 x 7 slice of one block grid. The linear score of
every window is then one matrix product (blocks x 49 weight blocks) and one strided
sum (:func:`window_scores`), instead of one descriptor per window: about 0.2 ms per
scale for a 512-pixel radiograph, where OpenCV's ``HOGDescriptor`` needs 0.4 ms for
the block grid at an 8-pixel stride alone (and four times that for a 4-pixel
stride), and skimage one window at a time needs 0.4 s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numpy.lib.stride_tricks import as_strided
from threadpoolctl import ThreadpoolController

from pipeline.preprocess.arrays import area_resize, scaled_size

__all__ = [
    "BINS",
    "CELL",
    "DIM",
    "FEAT",
    "GRID",
    "NB",
    "SPAN",
    "WIN",
    "Pyramid",
    "box_iou",
    "clip_box",
    "hog_grid",
    "one_blas_thread",
    "patch_features",
    "resize_by",
    "stretch",
    "stretch_levels",
    "window_features",
    "window_scores",
]

WIN = 64  # window side in pixels of the scaled image
CELL = 8  # cell side in pixels
GRID = 4  # pixels between neighbouring cells, blocks and windows on the grid
BINS = 9  # unsigned orientation bins over 0..180 degrees
NB = 7  # blocks per window side (16-pixel blocks every 8 pixels)
FEAT = 4 * BINS  # 36 features per block (2 x 2 cells)
DIM = NB * NB * FEAT  # 1764
SPAN = (NB - 1) * CELL // GRID  # grid steps from the first to the last block of a window: 12
EPS = 1e-2  # L2-Hys regulariser (gradients of [0, 1] images)


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


def one_blas_thread() -> Any:
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
    image: np.ndarray,
    levels: tuple[float, float],
    cx: float,
    cy: float,
    window: float,
    *,
    replicate: bool = False,
) -> np.ndarray:
    """HOG descriptor (1764,) of the square window of side ``window`` centred at (cx, cy).

    One window on its own (the scan scores all windows at once instead): what the
    left/right model and the out-of-scope decision read and what training learns
    from. Outside the image the window sees 0, or with ``replicate`` the edge pixels
    repeated outwards (as a :class:`Pyramid` with ``reach`` shows them).
    """
    margin = 16  # scaled pixels around the window: two blocks
    f = WIN / window
    half = (WIN / 2 + margin) / f
    x0, y0 = round(cx - half), round(cy - half)
    size = max(1, round(2 * half))
    h, w = image.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    if replicate and cx1 > cx0 and cy1 > cy0:
        crop = cv2.copyMakeBorder(
            np.ascontiguousarray(image[cy0:cy1, cx0:cx1], dtype=np.float32),
            cy0 - y0,
            y0 + size - cy1,
            cx0 - x0,
            x0 + size - cx1,
            cv2.BORDER_REPLICATE,
        )
    else:
        crop = np.zeros((size, size), dtype=np.float32)
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


def resize_by(image: np.ndarray, f: float) -> np.ndarray:
    """``image`` scaled by ``f``: area-averaged down (two stages when large), bilinear up."""
    h, w = image.shape
    size = scaled_size((w, h), f)
    if f < 1:
        return area_resize(image, size)  # two stages on a large image
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


class Pyramid:
    """A prepared image at the scales the scan needs (one area resize from a shared base).

    ``reach``: at every scale, how far (a share of the window side) a window may reach
    past the image's edges. The scaled image is grown by that much where it meets an
    edge, the edge pixels repeated outwards (no new edge for the HOG to see), so a
    knee cut by a tight frame is still a knee. 0: windows stay inside the image.
    """

    def __init__(
        self,
        image: np.ndarray,
        smallest_side: float,
        context: float,
        preview: np.ndarray | None = None,
        *,
        reach: float = 0.0,
    ):
        self.image = image
        self.reach = reach
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
            self.base = resize_by(image, f_base)
        self.levels = stretch_levels(self.base)

    def scaled(
        self, f: float, region: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, float, float, float, float]:
        """The image (or a region of it) scaled by ``f`` and stretched.

        Returns (image, fx, fy, x0, y0): the actual scale factors and the image-pixel
        origin of the scaled image's first pixel (negative where it reaches past the
        image's edge).
        """
        src, fb = self.base, self.f_base
        bx0 = by0 = 0
        bh, bw = src.shape
        bx1, by1 = bw, bh
        if region is not None:
            bx0, by0, bx1, by1 = (round(v * fb) for v in region)
            src = src[by0:by1, bx0:bx1]
        out = resize_by(src, f / fb)
        fx = out.shape[1] / max(src.shape[1], 1) * fb
        fy = out.shape[0] / max(src.shape[0], 1) * fb
        x0, y0 = bx0 / fb, by0 / fb
        if self.reach > 0:
            p = math.ceil(self.reach * WIN)
            top, left = p * (by0 <= 0), p * (bx0 <= 0)
            out = cv2.copyMakeBorder(
                out, top, p * (by1 >= bh), left, p * (bx1 >= bw), cv2.BORDER_REPLICATE
            )
            x0, y0 = x0 - left / fx, y0 - top / fy
        return stretch(out, self.levels), fx, fy, x0, y0
