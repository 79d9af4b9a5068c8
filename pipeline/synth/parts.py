"""Body parts and views that are not a frontal knee, for the out-of-scope decision to learn.

A real folder mixes in what a knee study is not: other views of the knee (the lateral
view is drawn by :mod:`pipeline.synth.anatomy`; the patellar skyline view is here) and
other body parts (a hand and an ankle in :mod:`pipeline.synth.anatomy`; a hip and a
chest here). They are drawn like the knee, as attenuation maps in millimetres
(:class:`~pipeline.synth.anatomy.Frame`), with cortex, trabecular texture and soft
tissue, so that what tells them apart is their shape and layout, not their rendering.

:data:`OTHER_PARTS` names every drawable kind as (body part, view); :func:`draw_part`
draws one. The default phantom deals only hands and ankles (as it always did); a
phantom made with ``other_parts=ALL_OTHER_PARTS`` deals all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from .anatomy import (
    LONG,
    Frame,
    add_line,
    chaikin,
    draw_ankle,
    draw_bone,
    draw_hand,
    ellipse,
    fill_mask,
)

__all__ = ["ALL_OTHER_PARTS", "DEFAULT_OTHER_PARTS", "OTHER_PARTS", "draw_part"]


def _poly(points: list[tuple[float, float]], smooth: int = 3) -> np.ndarray:
    return chaikin(np.array(points, dtype=np.float64), smooth)


def _tissue(layer: np.ndarray, frame: Frame, outline_uv: np.ndarray, mu: float) -> None:
    """Add the soft tissue of an outline that may be larger than the image.

    Like :func:`~pipeline.synth.anatomy.soft_tissue_poly` (thickness grows with the
    depth under the skin), measured in a window reaching a quarter of the image
    beyond each edge, so a body wider than the field neither loses its edge nor
    thickens without bound; the depth counts up to 60 mm.
    """
    h, w = layer.shape
    m = max(h, w) // 4
    pts = frame.to_px(outline_uv) + m
    mask = fill_mask((h + 2 * m, w + 2 * m), [pts], 0, 0)
    d = cv2.distanceTransform(mask, cv2.DIST_L2, 5)[m : m + h, m : m + w]
    d = np.minimum(d * np.float32(1.0 / frame.scale), np.float32(60.0))
    layer += np.float32(mu) * 2.0 * np.sqrt(d * np.float32(12.0))


def _subtract(layer: np.ndarray, frame: Frame, outline_uv: np.ndarray, mu: float) -> None:
    """Take attenuation away inside an outline (air in the lungs, a foramen)."""
    tmp = np.zeros_like(layer)
    _tissue(tmp, frame, outline_uv, mu)
    layer -= tmp


def draw_hip(shape, frame: Frame, texture, rng: np.random.Generator, mu_soft: float):
    """A hip AP: the femoral head under the acetabular roof, the neck, the trochanters and
    the shaft, and the pelvis beside it (iliac wing, pelvic brim, and the ischium and
    pubic ramus round the obturator foramen).

    Lateral is negative ``u`` (mirror the frame for the other hip); the head's centre
    is the origin. Drawn at 0.8 of the knee's scale (a hip field is larger).
    """
    out = np.zeros(shape, np.float32)
    frame = replace(frame, scale=frame.scale * 0.8)
    r = rng.uniform(21.0, 27.0)  # femoral head radius
    k = r / 24.0
    soft = np.array([[-160, -260], [220, -260], [240, LONG], [-160, LONG]], float)
    _tissue(out, frame, soft, 0.9 * mu_soft)
    head = [(r * np.cos(t), -r * np.sin(t)) for t in np.radians(np.linspace(160, -60, 12))]
    femur = [
        (-70 * k, LONG),
        (-68 * k, 110 * k),
        (-75 * k, 40 * k),
        (-78 * k, 5 * k),
        (-68 * k, -25 * k),
        (-52 * k, -18 * k),
        (-35 * k, -14 * k),
        *head,
        (-10 * k, 26 * k),
        (-25 * k, 38 * k),
        (-28 * k, 60 * k),
        (-20 * k, 68 * k),
        (-30 * k, 78 * k),
        (-38 * k, 110 * k),
        (-40 * k, LONG),
    ]
    draw_bone(out, _poly(femur, 2), frame, texture, density=1.0, shaft_from=110 * k, core_mm=9.0)
    wing = [
        (-30, -18),
        (-40, -40),
        (-55, -90),
        (-50, -130),
        (-20, -165),
        (40, -178),
        (100, -160),
        (132, -118),
        (120, -80),
        (90, -50),
        (55, -30),
        (35, -5),
        (28, 10),
        (20, -20),
        (0, -29),
        (-20, -25),
    ]
    draw_bone(out, _poly([(u * k, v * k) for u, v in wing]), frame, texture, density=0.8)
    centre, tilt = (48 * k, 58 * k), rng.uniform(-0.3, 0.3)
    draw_bone(out, ellipse(centre, (44 * k, 34 * k), tilt), frame, texture, density=0.7)
    _subtract(out, frame, ellipse(centre, (27 * k, 20 * k), tilt), 3.0 * mu_soft)
    return out


def draw_skyline(shape, frame: Frame, texture, rng: np.random.Generator, mu_soft: float):
    """A patellar skyline (axial) view: the femoral condyles seen end-on below (the
    trochlear groove on top), the patella riding in the groove, the soft tissue round
    them. Wider than tall, and drawn at 1.5 times the knee's scale, as the view is framed.

    ``u`` runs across the knee, ``v`` from anterior (top) to posterior; the groove's
    floor is the origin.
    """
    out = np.zeros(shape, np.float32)
    frame = replace(frame, scale=frame.scale * 1.5)
    w = rng.uniform(36.0, 44.0)  # half the condyles' width
    depth = rng.uniform(8.0, 14.0)  # of the groove
    _tissue(out, frame, ellipse((0.0, 0.6 * w), (1.6 * w, 1.5 * w)), 1.4 * mu_soft)
    condyles = [
        (-1.05 * w, 0.3 * w),
        (-0.75 * w, -depth),
        (-0.3 * w, -0.45 * depth),
        (0.0, 0.0),
        (0.3 * w, -0.5 * depth),
        (0.8 * w, -0.8 * depth),
        (1.1 * w, 0.35 * w),
        (1.2 * w, 1.2 * w),
        (1.15 * w, 2.4 * w),
        (-1.15 * w, 2.4 * w),
        (-1.2 * w, 1.2 * w),
    ]
    draw_bone(out, _poly(condyles), frame, texture, density=1.1, core_mm=10.0)
    gap = rng.uniform(3.0, 6.0)  # cartilage between patella and trochlea
    thick = rng.uniform(0.5, 0.65) * w
    patella = [
        (-0.75 * w, -depth - gap),
        (-0.3 * w, -0.45 * depth - gap - 1),
        (0.0, -gap),
        (0.3 * w, -0.5 * depth - gap - 1),
        (0.65 * w, -0.75 * depth - gap),
        (0.6 * w, -depth - gap - 0.45 * thick),
        (0.1 * w, -depth - gap - thick),
        (-0.6 * w, -depth - gap - 0.6 * thick),
    ]
    tilt = rng.uniform(-0.12, 0.12)
    c, s = np.cos(tilt), np.sin(tilt)
    pts = _poly(patella, 2) @ np.array([[c, s], [-s, c]])
    draw_bone(out, pts, frame, texture, density=1.0, core_mm=6.0, cortex_mm=1.6)
    return out


def draw_chest(shape, frame: Frame, texture, rng: np.random.Generator, mu_soft: float):
    """A chest PA: trunk and lungs, the spine's vertebrae, ribs arching from it, the
    clavicles and the heart's shadow. Drawn at a third of the knee's scale (a chest
    field is about 400 mm across)."""
    out = np.zeros(shape, np.float32)
    frame = replace(frame, scale=frame.scale * 0.55)
    trunk = [(-170, -230), (-150, -260), (150, -260), (170, -230), (185, LONG), (-185, LONG)]
    _tissue(out, frame, _poly(trunk, 2), 1.3 * mu_soft)
    for side in (-1.0, 1.0):
        lung = ellipse((side * 75.0, -20.0), (62.0, 150.0), tilt=side * 0.08)
        _subtract(out, frame, lung, 1.5 * mu_soft)
    heart = ellipse((25.0, 60.0), (75.0, 60.0), tilt=0.3)
    _tissue(out, frame, heart, 0.6 * mu_soft)
    for k in range(14):  # vertebrae
        v = -230.0 + k * 32.0
        body = _poly([(-16, v), (16, v), (18, v + 26), (-18, v + 26)], 2)
        draw_bone(out, body, frame, texture, density=0.25, core_mm=5.0)
    for side in (-1.0, 1.0):
        for k in range(10):  # ribs: an arch out from the spine and down the side
            v = -190.0 + k * 30.0 + rng.uniform(-3, 3)
            t = np.linspace(0.0, 1.0, 12)
            u = side * (20.0 + 135.0 * np.sin(t * np.pi * 0.75))
            vv = v - 25.0 * np.sin(t * np.pi) + 60.0 * t**2
            add_line(out, frame.to_px(np.stack([u, vv], 1)), 0.05, 7.0 * frame.scale)
        clavicle = np.array([[side * 20.0, -215.0], [side * 80.0, -230.0], [side * 150.0, -245.0]])
        add_line(out, frame.to_px(chaikin(clavicle, 2, closed=False)), 0.12, 11.0 * frame.scale)
    return out


Drawer = Callable[..., np.ndarray]

#: (body part, view) -> drawing function, for every image that is not a knee in a frontal
#: or lateral view.
OTHER_PARTS: dict[tuple[str, str], Drawer] = {
    ("HAND", "OTHER"): draw_hand,
    ("ANKLE", "OTHER"): draw_ankle,
    ("HIP", "OTHER"): draw_hip,
    ("CHEST", "OTHER"): draw_chest,
    ("KNEE", "SKYLINE"): draw_skyline,
}
#: the body parts of the default phantom's "other" studies (as they always were)
DEFAULT_OTHER_PARTS = ("HAND", "ANKLE")
#: every part and view :data:`OTHER_PARTS` draws (``SKYLINE``: the knee's skyline view)
ALL_OTHER_PARTS = ("HAND", "ANKLE", "HIP", "CHEST", "SKYLINE")


def part_kind(name: str) -> tuple[str, str]:
    """``"SKYLINE"`` -> ("KNEE", "SKYLINE"); a body part -> (it, "OTHER")."""
    return ("KNEE", "SKYLINE") if name == "SKYLINE" else (name, "OTHER")


def draw_part(
    body: str,
    view: str,
    shape: tuple[int, int],
    frame: Frame,
    texture: np.ndarray,
    rng: np.random.Generator,
    mu_soft: float,
) -> np.ndarray:
    """The attenuation (rows, cols) of one part of :data:`OTHER_PARTS`."""
    return OTHER_PARTS[(body, view)](shape, frame, texture, rng, mu_soft)
