"""From attenuation to stored pixels: the acquisition variants real files come with.

The rendered anatomy becomes a "for presentation" radiograph (bone bright, air dark)
through detector blur, the edge enhancement CR/DX consoles apply, a heel-effect
exposure gradient and quantum noise; collimation borders and a burned-in L/R marker
are added on top. It is then stored the many ways devices store it: MONOCHROME1 or
MONOCHROME2, 10 to 16 bits, signed or unsigned, with or without Rescale
Slope/Intercept, with a window (LINEAR, LINEAR_EXACT or SIGMOID, one or two of them),
a VOI LUT Sequence or nothing, and sometimes a Presentation LUT Shape.

Polarity convention (what a correct reader must do to show bone bright): the stored
values are inverted (bone low) exactly when Presentation LUT Shape is INVERSE, or when
it is absent and the image is MONOCHROME1. Files therefore carry MONOCHROME1 with no
shape or INVERSE, MONOCHROME2 with no shape or IDENTITY, and, rarely, MONOCHROME2 with
INVERSE (bone stored dark, shown bright by the inverting presentation LUT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pydicom.dataelem import DataElement

COLLIMATIONS = ("none", "white", "black", "edges_white", "edges_black")


@dataclass(frozen=True)
class Acquisition:
    """How one image is exposed and stored (chosen by the plan, plain data)."""

    photometric: str = "MONOCHROME2"
    presentation_lut: str | None = None  # None, "IDENTITY" or "INVERSE"
    bits_stored: int = 12
    signed: bool = False
    rescale: tuple[float, float] | None = None  # (slope, intercept); None: not written
    voi: str = "window"
    collimation: str = "none"
    marker: bool = True
    transfer_syntax: str = "uncompressed"

    @property
    def inverted(self) -> bool:
        """True when the stored values hold bone dark (see the module's convention)."""
        if self.presentation_lut is not None:
            return self.presentation_lut == "INVERSE"
        return self.photometric == "MONOCHROME1"


def expose(
    attenuation: np.ndarray, spacing: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Attenuation (H, W) -> display image (H, W) in ~[0, 1], bone bright.

    Returns the image and the noise level used (dose: low dose, more noise).
    """
    gain = rng.uniform(0.85, 1.15)
    d = attenuation * np.float32(gain) + np.float32(rng.uniform(-0.03, 0.05))
    blur = max(0.25 / spacing, 0.4)  # detector MTF, ~0.25 mm
    d = cv2.GaussianBlur(d, (0, 0), blur)
    amount = rng.uniform(0.0, 0.7)  # console edge enhancement (unsharp mask)
    if amount > 0.05:
        base = cv2.GaussianBlur(d, (0, 0), max(3.0 / spacing, 1.0))
        d = d + np.float32(amount) * (d - base)
    h, w = d.shape
    ramp = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]  # heel effect along the tube
    d *= 1.0 + np.float32(rng.uniform(-0.06, 0.06)) * ramp
    sigma = rng.uniform(0.006, 0.03)
    noise = rng.standard_normal((h, w), dtype=np.float32)
    if spacing < 0.3:  # fine detectors: correlated noise, as after the console's filters
        noise = cv2.GaussianBlur(noise, (0, 0), 0.7)
    d += np.float32(sigma) * (0.4 + np.clip(d, 0.0, 1.0)) * noise
    return d, float(sigma)


def collimate(
    image: np.ndarray, keep: list[list[int]], kind: str, rng: np.random.Generator
) -> list[int] | None:
    """Blank the image outside a (slightly rotated) field holding every box in ``keep``.

    ``white``/``black``: a four-sided field; ``edges_*``: only the left and right
    blades. Returns the field's axis-aligned box, or None.
    """
    if kind == "none":
        return None
    h, w = image.shape
    x0, y0 = (min(b[i] for b in keep) for i in (0, 1))
    x1, y1 = (max(b[i] for b in keep) for i in (2, 3))
    mx, my = (x1 - x0) * rng.uniform(0.04, 0.2), (y1 - y0) * rng.uniform(0.04, 0.25)
    fx0, fx1 = max(x0 - mx, w * 0.02), min(x1 + mx, w * 0.98)
    if kind.startswith("edges"):
        fy0, fy1 = -h, 2 * h
    else:
        fy0, fy1 = max(y0 - my, h * 0.02), min(y1 + my, h * 0.98)
    angle = np.radians(rng.uniform(-2.5, 2.5))
    cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2
    corners = np.array([[fx0, fy0], [fx1, fy0], [fx1, fy1], [fx0, fy1]]) - (cx, cy)
    c, s = np.cos(angle), np.sin(angle)
    corners = corners @ np.array([[c, s], [-s, c]]) + (cx, cy)
    field = np.zeros((h, w), np.uint8)
    cv2.fillPoly(field, [np.round(corners * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    outside = field == 0
    white = kind.endswith("white")
    level = rng.uniform(0.9, 1.0) if white else rng.uniform(0.0, 0.04)
    image[outside] = np.float32(level) + np.float32(0.01) * rng.standard_normal(
        int(outside.sum()), dtype=np.float32
    )
    ys, xs = np.nonzero(field)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def burn_marker(
    image: np.ndarray,
    text: str,
    body: np.ndarray,
    boxes: list[list[int]],
    field: list[int] | None,
    rng: np.random.Generator,
    prefer_left: bool | None = None,
) -> list[int] | None:
    """Burn a bright letter into a corner of the field, outside the anatomy.

    Corners clear of the body come first; when the limb fills the field, a corner
    over soft tissue but clear of every knee box will do. ``prefer_left``: the image
    side technologists mark (True: left). Returns the letter's box, or None.
    """
    h, w = image.shape
    fx0, fy0, fx1, fy1 = field if field is not None else (0, 0, w - 1, h - 1)
    scale = min(h, w) / 420.0 * rng.uniform(0.8, 1.3)
    thickness = max(round(scale * 2.2), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX if rng.random() < 0.5 else cv2.FONT_HERSHEY_DUPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    pad = max(int(0.03 * min(h, w)), 2)
    tops = (True, False) if rng.random() < 0.5 else (False, True)
    if prefer_left is None:  # any corner clear of the body first
        tries = [(s, left, top) for s in (True, False) for left in (True, False) for top in tops]
    else:  # the marked side first
        sides = (prefer_left, not prefer_left)
        tries = [(s, left, top) for left in sides for s in (True, False) for top in tops]
    for strict, left, top in tries:
        x = fx0 + pad if left else fx1 - pad - tw
        y = fy0 + pad + th if top else fy1 - pad - base
        x0, y0, x1, y1 = x, y - th, x + tw, y + base
        if x0 < 0 or y0 < 0 or x1 >= w or y1 >= h:
            continue
        if strict and body[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad].any():
            continue
        if not clear_of((x0, y0, x1, y1), boxes):
            continue
        mask = np.zeros((h, w), np.uint8)
        cv2.putText(mask, text, (int(x), int(y)), font, scale, 1, thickness, cv2.LINE_AA)
        level = np.float32(rng.uniform(0.95, 1.0))
        np.maximum(image, mask.astype(np.float32) * level, out=image)
        return [int(x0), int(y0), int(x1), int(y1)]
    return None


def clear_of(box: Sequence[float], boxes: Sequence[Sequence[float]]) -> bool:
    """Whether ``box`` (x0, y0, x1, y1, inclusive) overlaps none of ``boxes``."""
    x0, y0, x1, y1 = box
    return not any(x0 <= b[2] and b[0] <= x1 and y0 <= b[3] and b[1] <= y1 for b in boxes)


def stored_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def quantize(
    display: np.ndarray, acq: Acquisition, body: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Display image -> (stored pixels (H, W) uint16/int16, pixel-module header fields)."""
    smin, smax = stored_range(acq.bits_stored, acq.signed)
    lo, hi = rng.uniform(0.0, 0.08), rng.uniform(0.8, 1.0)
    span = float(smax - smin)
    d = np.clip(display, 0.0, 1.0)
    if acq.inverted:
        d = 1.0 - d
    values = np.float32(smin + lo * span) + d * np.float32((hi - lo) * span)
    values = np.clip(np.rint(values), smin, smax)
    pixels = values.astype(np.int16 if acq.signed else np.uint16)

    fields: dict = {
        "PhotometricInterpretation": acq.photometric,
        "BitsAllocated": 16,
        "BitsStored": acq.bits_stored,
        "HighBit": acq.bits_stored - 1,
        "PixelRepresentation": int(acq.signed),
        "SamplesPerPixel": 1,
    }
    slope, intercept = acq.rescale if acq.rescale is not None else (1.0, 0.0)
    if acq.rescale is not None:
        fields["RescaleSlope"] = _ds(slope)
        fields["RescaleIntercept"] = _ds(intercept)
        fields["RescaleType"] = "US"
    if acq.presentation_lut is not None:
        fields["PresentationLUTShape"] = acq.presentation_lut

    # windows are set on the anatomy, in modality units (after rescale)
    sample = values[::4, ::4][body[::4, ::4]] if body.any() else values[::4, ::4].ravel()
    p_lo, p_hi = np.percentile(sample, [1.0, 99.5]) * slope + intercept
    center = (p_lo + p_hi) / 2 + rng.uniform(-0.05, 0.05) * (p_hi - p_lo)
    width = max((p_hi - p_lo) * rng.uniform(1.0, 1.35), 2.0)
    voi = acq.voi
    if voi == "lut" and (acq.signed or acq.rescale not in (None, (1.0, 0.0))):
        voi = "window"  # a LUT indexes integer modality values >= 0 only
    if voi.startswith("window"):
        fields["WindowCenter"] = _ds(center)
        fields["WindowWidth"] = _ds(width)
        if voi == "window_sigmoid":
            fields["VOILUTFunction"] = "SIGMOID"
        elif voi == "window_linear_exact":
            fields["VOILUTFunction"] = "LINEAR_EXACT"
        elif voi == "window_multi":
            fields["WindowCenter"] = [_ds(center), _ds(center + 0.1 * width)]
            fields["WindowWidth"] = [_ds(width), _ds(0.7 * width)]
            fields["WindowCenterWidthExplanation"] = ["NORMAL", "HARDER"]
        elif rng.random() < 0.5:
            fields["VOILUTFunction"] = "LINEAR"
    elif voi == "lut":
        fields["VOILUTSequence"] = [voi_lut_item(center, width, rng)]
    return pixels, fields


def voi_lut_item(center: float, width: float, rng: np.random.Generator) -> dict:
    """A VOI LUT Sequence item: a gentle S-curve over the window, 12 or 16 bit output."""
    first = max(int(np.floor(center - width / 2)), 0)
    entries = int(min(np.ceil(width), 65535))
    out_bits = 12 if rng.random() < 0.5 else 16
    x = np.linspace(-1.0, 1.0, entries)
    steep = rng.uniform(1.0, 2.5)
    curve = 0.5 + 0.5 * np.tanh(steep * x) / np.tanh(steep)
    data = np.rint(curve * ((1 << out_bits) - 1)).astype("<u2")
    return {
        "LUTDescriptor": DataElement(0x00283002, "US", [entries, first, out_bits]),
        "LUTExplanation": "SYNTHETIC S-CURVE",
        "LUTData": DataElement(0x00283006, "OW", data.tobytes()),
    }


def _ds(x: float) -> str:
    """A Decimal String value of at most 16 characters."""
    text = f"{x:.6g}"
    return text if len(text) <= 16 else f"{x:.4e}"
