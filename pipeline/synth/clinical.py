"""The ``clinical`` style: what real archives and exports do to a radiograph.

The default phantom frames every knee with room around it and keeps the field clean.
Real files are framed and marked by people: teaching files and exports crop tight
(the joint fills the frame, or is cut), put two views side by side, leave bright
collimator shutters at any angle and dark scanner borders, burn in text and arrows,
black out names with redaction bars, show positioning devices, and are stored as 8-bit
lossy secondary captures. :func:`finish` does these to a rendered image, each with
its own probability (:data:`RATES`), from a generator of its own (seeded from the
image), so a phantom in the default style is unchanged.

These are what the out-of-scope decision and the localizer were measured against:
the decision trained without tight crops missed the real tight crops and the
two-view image (``benchmarks/real_images.py``); with them it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import anatomy
from .acquisition import clear_of, expose
from .parts import draw_skyline

STYLES = ("phantom", "clinical")

#: Probability of each change to one image of the clinical style.
RATES = {
    "second_view": 0.15,  # a frontal knee gets a lateral or skyline view beside it
    "tight_crop": 0.5,  # the frame cut down to the knee (or the part), maybe cutting it
    "shutter": 0.3,  # a bright collimator blade at any angle
    "dark_border": 0.2,  # black strips along one or two edges
    "text": 0.5,  # burned-in words and dates
    "annotation": 0.15,  # a teaching arrow or ellipse
    "redaction": 0.2,  # a black or white bar over a corner
    "positioning": 0.15,  # a foam pad or a lead ruler along an edge
    "secondary_capture": 0.3,  # 8 bits, JPEG-compressed
}
_WORDS = ("AP", "PA", "STANDING", "WEIGHT BEARING", "SUPINE", "KNEE", "RT", "LT", "DX", "SIN")


@dataclass
class Clinical:
    """A rendered image on its way to the file: pixels, body mask, truth, notes."""

    display: np.ndarray  # float32 (H, W), bone bright
    body: np.ndarray  # bool (H, W)
    knees: list[dict]  # truth records (box, fracture_polygons, ...), in these pixels
    markers: list[dict]
    notes: dict[str, Any]

    def boxes(self) -> list[list[int]]:
        return [k["box"] for k in self.knees]


def finish(
    display: np.ndarray,
    body: np.ndarray,
    knees: list[dict],
    markers: list[dict],
    *,
    view: str,
    bilateral: bool,
    spacing: float,
    mu_soft: float,
    rng: np.random.Generator,
) -> Clinical:
    """Apply the clinical changes to one rendered image (each with its :data:`RATES`)."""
    c = Clinical(display, body, [dict(k) for k in knees], [dict(m) for m in markers], {})
    if view == "AP" and not bilateral and c.knees and rng.random() < RATES["second_view"]:
        _second_view(c, spacing, mu_soft, rng)
    elif not bilateral and rng.random() < RATES["tight_crop"]:
        _tight_crop(c, rng)
    for name, apply in _ARTEFACTS:
        if rng.random() < RATES[name]:
            apply(c, rng)
    if rng.random() < RATES["secondary_capture"]:
        c.display = jpeg_roundtrip(c.display, rng)
        c.notes["secondary_capture"] = True
    return c


# --------------------------------------------------------------------------- framing


def _shift(c: Clinical, dx: int, dy: int, shape: tuple[int, int]) -> None:
    """Move the truth by (dx, dy) pixels into an image of ``shape``; clip, drop what left."""
    h, w = shape

    def clip(box: list[float]) -> list[int]:
        x0, y0, x1, y1 = box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy
        return [int(max(0, x0)), int(max(0, y0)), int(min(w - 1, x1)), int(min(h - 1, y1))]

    knees = []
    for k in c.knees:
        box = clip(k["box"])
        if box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
            polys = [
                [[min(max(x + dx, 0), w - 1), min(max(y + dy, 0), h - 1)] for x, y in p]
                for p in k.get("fracture_polygons", [])
            ]
            knees.append({**k, "box": box, "fracture_polygons": polys})
    c.knees = knees
    inside = [
        m for m in c.markers if clip(m["box"]) == [v + d for v, d in zip(m["box"], (dx, dy) * 2)]
    ]
    c.markers = [{**m, "box": clip(m["box"])} for m in inside]


def _tight_crop(c: Clinical, rng: np.random.Generator) -> None:
    """Cut the frame down to the knee (0.55 to 1.35 of its box a side: from the joint
    filling the frame to some room round it, off-centre by up to 15%) or, without a
    knee, to about two thirds of the part."""
    h, w = c.display.shape
    if c.knees:
        x0, y0, x1, y1 = c.knees[int(rng.integers(len(c.knees)))]["box"]
        bw, bh = x1 - x0, y1 - y0
        cw, ch = bw * rng.uniform(0.55, 1.35), bh * rng.uniform(0.55, 1.35)
    else:
        ys, xs = np.nonzero(c.body)
        x0, y0, x1, y1 = (xs.min(), ys.min(), xs.max(), ys.max()) if xs.size else (0, 0, w, h)
        bw, bh = x1 - x0, y1 - y0
        cw, ch = w * rng.uniform(0.5, 0.85), h * rng.uniform(0.5, 0.85)
    cx = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * bw
    cy = (y0 + y1) / 2 + rng.uniform(-0.15, 0.15) * bh
    X0, Y0 = int(max(0, cx - cw / 2)), int(max(0, cy - ch / 2))
    X1, Y1 = int(min(w, cx + cw / 2)), int(min(h, cy + ch / 2))
    if X1 - X0 < 96 or Y1 - Y0 < 96:
        return
    c.display = np.ascontiguousarray(c.display[Y0:Y1, X0:X1])
    c.body = np.ascontiguousarray(c.body[Y0:Y1, X0:X1])
    _shift(c, -X0, -Y0, c.display.shape)
    c.notes["crop"] = [X0, Y0, X1, Y1]


def _second_view(c: Clinical, spacing: float, mu_soft: float, rng: np.random.Generator) -> None:
    """Put a lateral or a skyline view of a knee beside the frontal one, with a dark gap."""
    h = c.display.shape[0]
    pw = int(h * rng.uniform(0.6, 1.0))
    texture = anatomy.trabecular_texture(rng, (h, pw), spacing)
    angle = np.radians(rng.uniform(-10, 10))
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    frame = anatomy.Frame(
        pw * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6), 1 / spacing, angle, mirror
    )
    if rng.random() < 0.5:
        kind, att = "SKYLINE", draw_skyline((h, pw), frame, texture, rng, mu_soft)
    else:
        shape = anatomy.KneeShape.draw(rng, "F" if rng.random() < 0.5 else "M")
        pose = anatomy.Pose(frame, np.radians(rng.uniform(-4, 4)), rng.uniform(5, 40), 0.0)
        layers = anatomy.draw_knee_lat((h, pw), shape, pose, texture, mu_soft)
        kind, att = "LAT", layers.tibia + layers.other
    panel, _ = expose(att, spacing, rng)
    gap = np.full((h, int(rng.integers(4, 17))), np.float32(rng.uniform(0.0, 0.05)), np.float32)
    right = bool(rng.random() < 0.7)
    parts = [c.display, gap, panel] if right else [panel, gap, c.display]
    masks = [c.body, gap > 1, att > 0.02] if right else [att > 0.02, gap > 1, c.body]
    c.display = np.ascontiguousarray(np.hstack(parts).astype(np.float32))
    c.body = np.hstack(masks)
    if not right:
        _shift(c, pw + gap.shape[1], 0, c.display.shape)
    c.notes["second_view"] = {"view": kind, "side": "right" if right else "left"}


# --------------------------------------------------------------------------- artefacts


def _shutter(c: Clinical, rng: np.random.Generator) -> None:
    """A bright collimator blade entering from one edge at any angle, clear of the knees."""
    h, w = c.display.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    for _ in range(6):
        t = rng.uniform(0, 2 * np.pi)  # the blade's inward normal
        nx, ny = np.cos(t), np.sin(t)
        # signed distance along the normal from the image edge it enters by
        d = (xx - w / 2) * nx + (yy - h / 2) * ny
        lo = d.min()
        depth = rng.uniform(0.05, 0.22) * (d.max() - lo)
        blade = d < lo + depth
        if not any(blade[b[1] : b[3] + 1, b[0] : b[2] + 1].any() for b in c.boxes()):
            level = np.float32(rng.uniform(0.85, 1.0))
            noise = rng.standard_normal(int(blade.sum()), dtype=np.float32)
            c.display[blade] = level + np.float32(0.01) * noise
            c.notes["shutter"] = round(float(np.degrees(t)), 1)
            return


def _dark_border(c: Clinical, rng: np.random.Generator) -> None:
    """Black strips along one or two edges (a scanner's or a screenshot's border)."""
    h, w = c.display.shape
    sides = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
    for s in sides:
        k = int(rng.uniform(0.02, 0.06) * (w if s < 2 else h))
        region = [np.s_[:, :k], np.s_[:, w - k :], np.s_[:k, :], np.s_[h - k :, :]][int(s)]
        c.display[region] = np.float32(rng.uniform(0.0, 0.03))
    c.notes["dark_border"] = [int(s) for s in sides]


def _text(c: Clinical, rng: np.random.Generator) -> None:
    """One to three burned-in words or dates, bright, in corners clear of the knees."""
    h, w = c.display.shape
    placed = []
    for _ in range(int(rng.integers(1, 4))):
        word = str(rng.choice(_WORDS)) if rng.random() < 0.7 else _date(rng)
        scale = min(h, w) / 500 * rng.uniform(0.6, 1.4)
        thick = max(1, round(scale * rng.uniform(1.2, 2.2)))
        (tw, th), base = cv2.getTextSize(word, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        for _ in range(8):
            x = int(rng.uniform(0.02, 0.98) * w - (tw if rng.random() < 0.5 else 0))
            y = int(rng.uniform(0.04, 0.98) * h)
            box = (x, y - th, x + tw, y + base)
            if box[0] < 0 or box[1] < 0 or box[2] >= w or box[3] >= h:
                continue
            if clear_of(box, c.boxes()) and clear_of(box, placed):
                mask = np.zeros((h, w), np.uint8)
                cv2.putText(
                    mask, word, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thick, cv2.LINE_AA
                )
                np.maximum(c.display, mask * np.float32(rng.uniform(0.85, 1.0)), out=c.display)
                placed.append(list(box))
                break
    c.notes["text"] = placed


def _date(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(2005, 2025))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"


def _annotation(c: Clinical, rng: np.random.Generator) -> None:
    """A teaching arrow pointing into the knee (or the part), or an ellipse round a spot."""
    h, w = c.display.shape
    boxes = c.boxes() or [[w // 4, h // 4, 3 * w // 4, 3 * h // 4]]
    x0, y0, x1, y1 = boxes[0]
    tx, ty = rng.uniform(x0, x1), rng.uniform(y0, y1)
    size = min(h, w) * rng.uniform(0.04, 0.09)
    level = float(rng.choice([0.0, 1.0]))
    if rng.random() < 0.6:
        a = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        n = np.array([-d[1], d[0]])
        tip = np.array([tx, ty])
        pts = [tip, tip - size * d + 0.6 * size * n, tip - size * d + 0.25 * size * n]
        pts += [tip - 2.2 * size * d + 0.25 * size * n, tip - 2.2 * size * d - 0.25 * size * n]
        pts += [tip - size * d - 0.25 * size * n, tip - size * d - 0.6 * size * n]
        cv2.fillPoly(c.display, [np.round(np.array(pts)).astype(np.int32)], level)
        c.notes["annotation"] = "arrow"
    else:
        axes = (int(size), int(size * rng.uniform(1.2, 2.0)))
        thick = max(2, int(size / 8))
        cv2.ellipse(c.display, (int(tx), int(ty)), axes, rng.uniform(0, 180), 0, 360, level, thick)
        c.notes["annotation"] = "ellipse"


def _redaction(c: Clinical, rng: np.random.Generator) -> None:
    """A black or white bar over a corner or an edge, clear of the knees."""
    h, w = c.display.shape
    for _ in range(8):
        bw, bh = int(w * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.03, 0.08))
        x = 0 if rng.random() < 0.5 else w - bw
        y = int(rng.choice([0, h - bh, int(rng.uniform(0, h - bh))]))
        if clear_of((x, y, x + bw, y + bh), c.boxes()):
            c.display[y : y + bh, x : x + bw] = np.float32(rng.choice([0.0, 1.0]))
            c.notes["redaction"] = [x, y, x + bw, y + bh]
            return


def _positioning(c: Clinical, rng: np.random.Generator) -> None:
    """A radiolucent foam pad (a faint band) or a lead ruler (bright, with ticks) along
    an edge, nearly straight, clear of the knees."""
    h, w = c.display.shape
    vertical = rng.random() < 0.6
    n = w if vertical else h
    k = max(4, int(n * rng.uniform(0.02, 0.05)))
    for _ in range(8):
        at = int(rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)]) * (n - k))
        box = (at, 0, at + k, h - 1) if vertical else (0, at, w - 1, at + k)
        if not clear_of(box, c.boxes()):
            continue
        band = c.display[:, at : at + k] if vertical else c.display[at : at + k, :]
        if rng.random() < 0.5:
            band += np.float32(rng.uniform(0.1, 0.25))
            np.minimum(band, 1.0, out=band)
            c.notes["positioning"] = "pad"
        else:
            band[...] = np.float32(rng.uniform(0.85, 1.0))
            step = max(4, k // 2)
            ticks = band[::step, : k // 2] if vertical else band[: k // 2, ::step]
            ticks[...] = np.float32(0.3)
            c.notes["positioning"] = "ruler"
        return


_ARTEFACTS = (
    ("shutter", _shutter),
    ("dark_border", _dark_border),
    ("text", _text),
    ("annotation", _annotation),
    ("redaction", _redaction),
    ("positioning", _positioning),
)


def jpeg_roundtrip(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image as an 8-bit lossy secondary capture shows it (JPEG quality 70 to 95)."""
    u8 = np.clip(display * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE).astype(np.float32) / np.float32(255.0)


__all__ = ["RATES", "STYLES", "Clinical", "finish", "jpeg_roundtrip"]
