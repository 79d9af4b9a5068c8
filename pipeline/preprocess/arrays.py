"""Array helpers every preprocessing room shares: area resizes and the 16-bit grey scale.

They sit below the steps, the localizer and the crop-first route, which all shrink
images the same way; nothing here knows about the chain.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "TWO_STAGE_FACTOR",
    "TWO_STAGE_PIXELS",
    "U16_MAX",
    "area_resize",
    "scaled_size",
    "shrink",
    "to_uint16",
]

#: Grey levels of the 16-bit output.
U16_MAX = 65535

#: Images with at least this many pixels are shrunk in two stages by :func:`area_resize`
#: (more than a 512 x 512 image: the phantom's images keep the one-stage average).
TWO_STAGE_PIXELS = 300_000
#: ... when they shrink by at least this factor.
TWO_STAGE_FACTOR = 3


def to_uint16(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint16 over the full 16-bit range (rounded)."""
    return np.clip(image * np.float32(U16_MAX) + np.float32(0.5), 0, U16_MAX).astype(np.uint16)


def scaled_size(size: tuple[int, int], f: float) -> tuple[int, int]:
    """``size`` = (width, height) scaled by ``f``, rounded, at least one pixel a side."""
    return max(1, round(size[0] * f)), max(1, round(size[1] * f))


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


def shrink(image: np.ndarray, longest: int) -> tuple[np.ndarray, float]:
    """``image`` area-averaged so its longest side is at most ``longest``, and the scale.

    An image that already fits is returned as it is, with scale 1.
    """
    h, w = image.shape[:2]
    f = min(1.0, longest / max(h, w))
    if f >= 1.0:
        return image, 1.0
    return area_resize(image, scaled_size((w, h), f)), f
