"""Schatzker tibial plateau fractures, drawn by cutting and moving the tibia layer.

Two primitives make every type, both applied in the tibia's own frame (mm):

- :func:`split`: a fracture line through the bone; the fragment on one side moves
  (translation plus a small rotation about the line's articular end), and the line
  itself becomes a lucent band. Overlapping fragments add up (brighter), separated
  ones leave a dark gap, as on a radiograph.
- :func:`depress`: a bowl-shaped segment of the articular surface is pushed down; the
  vacated part of the subchondral plate leaves a dark notch, and the impacted bone
  beneath it a bright (sclerotic) band.

The types differ by geometry, which is what a reader (and a CNN) uses to tell them
apart: I lateral split, II lateral split plus depression, III central depression of the
lateral plateau without a split, IV medial split, V both plateaus split, VI a
transverse metaphyseal line that separates the plateau block from the shaft (with or
without an articular split).

``visibility`` in [0, 1] scales displacement, depression depth and gap width from
subtle (a hairline a reader could miss) to obvious. Every function returns the
fracture's region as polygons in pixel coordinates, for scoring saliency maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .anatomy import Frame, KneeShape, lat_surface

SCHATZKER_NAMES = {
    0: "no fracture",
    1: "I: lateral plateau split",
    2: "II: lateral split-depression",
    3: "III: lateral central depression",
    4: "IV: medial plateau",
    5: "V: bicondylar",
    6: "VI: metaphyseal-diaphyseal dissociation",
}


@dataclass(frozen=True)
class Severity:
    """Physical size of a fracture's signs for one visibility level (mm, degrees)."""

    displacement: float
    depression: float
    gap: float  # half-width of the lucent band
    darkness: float  # fraction of bone removed along the line
    tilt: float

    @staticmethod
    def of(visibility: float) -> Severity:
        v = float(np.clip(visibility, 0.0, 1.0))
        return Severity(
            displacement=0.3 + 5.5 * v,
            depression=1.0 + 8.0 * v,
            gap=0.25 + 1.1 * v,
            darkness=0.25 + 0.65 * v,
            tilt=0.5 + 5.0 * v,
        )


class Canvas:
    """The tibia layer's window around the proximal tibia, with its local grids."""

    def __init__(self, layer: np.ndarray, frame: Frame, k: KneeShape):
        self.frame, self.k = frame, k
        wt, s0 = k.plateau_width, k.gap / 2.0
        x0, y0, x1, y1 = frame.window(
            -0.8 * wt, s0 - 0.25 * wt, 0.8 * wt, s0 + 1.0 * wt, layer.shape
        )
        self.x0, self.y0 = x0, y0
        self.roi = layer[y0:y1, x0:x1]  # a view: edits land in the layer
        self.u, self.v = frame.grid(x0, y0, x1, y1)  # (h, w) mm each


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    return np.clip(x / width + 0.5, 0.0, 1.0)


def split(
    c: Canvas,
    p0: tuple[float, float],
    p1: tuple[float, float],
    fragment: tuple[float, float],
    move: tuple[float, float],
    rotate_deg: float,
    sev: Severity,
    v_limit: float | None = None,
) -> np.ndarray:
    """Cut along p0 -> p1 and move the fragment: the side holding point ``fragment``.

    ``v_limit``: the fragment ends at this depth (mm), so a split fragment does not
    carry the whole shaft with it. Returns the lucent band's polygon (pixels).
    """
    a, b = np.asarray(p0, float), np.asarray(p1, float)
    t = (b - a) / np.linalg.norm(b - a)
    n = np.array([-t[1], t[0]])
    s = (c.u - a[0]) * n[0] + (c.v - a[1]) * n[1]  # signed distance to the line (mm)
    along = (c.u - a[0]) * t[0] + (c.v - a[1]) * t[1]
    length = float(np.linalg.norm(b - a))
    side = 1.0 if (fragment[0] - a[0]) * n[0] + (fragment[1] - a[1]) * n[1] >= 0 else -1.0
    soft = 0.6  # mm of anti-aliasing
    frag = _soft_step(side * s, soft)
    if v_limit is not None:
        frag *= _soft_step(v_limit - c.v, soft)
    if abs(move[0]) + abs(move[1]) + abs(rotate_deg) > 0:
        piece = c.roi * frag
        pivot = c.frame.to_px(a[None])[0] - (c.x0, c.y0)
        m = cv2.getRotationMatrix2D(
            (float(pivot[0]), float(pivot[1])), -rotate_deg * c.frame.mirror, 1.0
        )
        m[:, 2] += c.frame.vec_px(move)
        h, w = c.roi.shape
        moved = cv2.warpAffine(piece, m, (w, h))  # bilinear, zero outside
        c.roi[:] = c.roi * (1.0 - frag) + moved
    # the lucent line, fading out past both ends
    inside = np.clip(np.minimum(along + 2.0, length + 2.0 - along) / 2.0, 0.0, 1.0)
    band = np.exp(-0.5 * (s / sev.gap) ** 2) * inside
    c.roi *= 1.0 - sev.darkness * band
    half = max(sev.gap * 2.0, 2.5) + 0.5 * float(np.hypot(*move))
    quad = np.array(
        [a - half * n - 2 * t, b - half * n + 2 * t, b + half * n + 2 * t, a + half * n - 2 * t]
    )
    return c.frame.to_px(quad)


def depress(
    c: Canvas,
    u_from: float,
    u_to: float,
    surface: Callable[[np.ndarray], np.ndarray],
    sev: Severity,
    region: float,
) -> np.ndarray:
    """Push the articular surface between ``u_from`` and ``u_to`` down (bowl-shaped).

    ``surface(u)`` is the plateau's height (mm) and ``region`` how deep the moved block
    reaches. Returns the depressed area's polygon (pixels).
    """
    uc, hw = 0.5 * (u_from + u_to), 0.5 * abs(u_to - u_from)
    depth_v = c.v - surface(c.u)  # mm below the articular surface
    across = np.clip(1.0 - ((c.u - uc) / hw) ** 2, 0.0, 1.0)
    delta = sev.depression * np.sqrt(across)  # (h, w) mm, 0 at the edges
    mask = _soft_step(hw - np.abs(c.u - uc), 0.8) * _soft_step(depth_v + 4.0, 0.8)
    mask *= _soft_step(region - depth_v, 2.0)
    # every destination pixel takes the bone from delta mm above it, along -v
    e_v = c.frame.vec_px((0.0, 1.0))  # pixels per mm of +v
    h, w = c.roi.shape
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    map_x = xs - (delta * e_v[0]).astype(np.float32)
    map_y = ys - (delta * e_v[1]).astype(np.float32)
    moved = cv2.remap(c.roi * mask, map_x, map_y, cv2.INTER_LINEAR)  # zero outside
    c.roi[:] = c.roi * (1.0 - mask) + moved
    # impacted trabeculae under the depressed fragment
    band = np.exp(-0.5 * ((depth_v - delta - 2.0) / 1.6) ** 2) * across
    c.roi += np.float32(0.1 * c.k.density * min(1.0, 0.4 + sev.depression / 8.0)) * band
    top, bottom = -3.0, sev.depression + 6.0
    us = np.linspace(u_from, u_to, 6)
    upper = np.stack([us, surface(us) + top], 1)
    lower = np.stack([us[::-1], surface(us[::-1]) + bottom], 1)
    return c.frame.to_px(np.concatenate([upper, lower]))


def draw_fracture(
    tibia: np.ndarray,
    frame: Frame,
    k: KneeShape,
    schatzker: int,
    visibility: float,
    geometry: np.random.Generator,
    view: str,
) -> list[np.ndarray]:
    """Fracture the tibia layer in place; returns the region polygons (pixels).

    ``geometry`` draws where the lines run; seed it from the study so the AP and the
    lateral view of one knee show the same fracture.
    """
    if schatzker == 0:
        return []
    c = Canvas(tibia, frame, k)
    if c.roi.size == 0:
        return []
    sev = Severity.of(visibility)
    draw = _lat_fracture if view == "LAT" else _ap_fracture
    return draw(c, k, schatzker, sev, geometry)


def _lat_fracture(
    c: Canvas, k: KneeShape, schatzker: int, sev: Severity, g: np.random.Generator
) -> list[np.ndarray]:
    """The fracture lines of a lateral view: depressions and splits seen from the side."""
    wt, s0 = k.plateau_width, k.gap / 2.0
    d = sev.displacement
    polys: list[np.ndarray] = []
    surface = lat_surface(k)
    if schatzker in (2, 3):
        uc = g.uniform(-0.12, 0.1) * wt
        hw = g.uniform(0.08, 0.12) * wt
        polys.append(depress(c, uc - hw, uc + hw, surface, sev, 0.2 * wt))
    if schatzker in (1, 2, 4, 5):
        ends = [g.choice((-1.0, 1.0))] if schatzker != 5 else [-1.0, 1.0]
        for end in ends:
            u0 = g.uniform(-0.1, 0.1) * wt
            p0 = (u0, float(surface(u0)) - 3.0)
            p1 = (end * 0.6 * wt, s0 + g.uniform(0.35, 0.5) * wt)
            frag = (end * 0.4 * wt, s0 + 0.1 * wt)
            polys.append(
                split(c, p0, p1, frag, (0.2 * end * d, 0.6 * d), 0.0, sev, v_limit=p1[1] + 1.0)
            )
    if schatzker == 6:
        _metaphyseal(c, g, sev, polys)
    return polys


def _ap_fracture(
    c: Canvas, k: KneeShape, schatzker: int, sev: Severity, g: np.random.Generator
) -> list[np.ndarray]:
    """The fracture lines of a frontal view (lateral is -u)."""
    wt, s0 = k.plateau_width, k.gap / 2.0
    d, tilt = sev.displacement, sev.tilt
    polys: list[np.ndarray] = []
    flat = lambda u: np.full_like(np.asarray(u, dtype=np.float32), s0)  # noqa: E731
    if schatzker in (1, 2):
        u0 = -g.uniform(0.2, 0.3) * wt if schatzker == 1 else -g.uniform(0.27, 0.34) * wt
        p0 = (u0, s0 - 3.0)
        p1 = (-0.62 * wt, s0 + g.uniform(0.3, 0.45) * wt)
        frag = (-0.45 * wt, s0 + 0.1 * wt)
        polys.append(split(c, p0, p1, frag, (-d, 0.35 * d), -tilt, sev, v_limit=p1[1] + 1.0))
        if schatzker == 2:
            width = g.uniform(0.12, 0.17) * wt
            polys.append(
                depress(c, u0 + 0.01 * wt, min(u0 + width, -0.1 * wt), flat, sev, 0.2 * wt)
            )
    elif schatzker == 3:
        uc, hw = -g.uniform(0.22, 0.3) * wt, g.uniform(0.07, 0.11) * wt
        polys.append(depress(c, uc - hw, uc + hw, flat, sev, 0.2 * wt))
    elif schatzker == 4:
        p0 = (g.uniform(-0.02, 0.1) * wt, s0 - 5.0)
        p1 = (0.62 * wt, s0 + g.uniform(0.35, 0.5) * wt)
        frag = (0.45 * wt, s0 + 0.1 * wt)
        polys.append(split(c, p0, p1, frag, (0.4 * d, d), tilt, sev, v_limit=p1[1] + 1.0))
    elif schatzker == 5:
        for sign in (-1.0, 1.0):
            p0 = (sign * g.uniform(0.02, 0.08) * wt, s0 - 5.0)
            p1 = (sign * 0.62 * wt, s0 + g.uniform(0.35, 0.5) * wt)
            frag, move = (sign * 0.45 * wt, s0 + 0.1 * wt), (0.5 * sign * d, 0.7 * d)
            polys.append(split(c, p0, p1, frag, move, sign * tilt, sev, v_limit=p1[1] + 1.0))
    elif schatzker == 6:
        _metaphyseal(c, g, sev, polys)
    return polys


def _metaphyseal(c: Canvas, g: np.random.Generator, sev: Severity, polys: list) -> None:
    """Schatzker VI: a transverse metaphyseal line, the plateau block displaced and
    angulated on the shaft, often with an articular split down to it."""
    k = c.k
    wt, s0 = k.plateau_width, k.gap / 2.0
    vl = s0 + g.uniform(0.42, 0.58) * wt
    dv = g.uniform(-0.12, 0.12) * wt
    p0, p1 = (-0.65 * wt, vl - dv), (0.65 * wt, vl + dv)
    if g.random() < 0.6:  # an articular split down to the line, undisplaced
        u0 = g.uniform(-0.06, 0.06) * wt
        end = (u0 + g.uniform(-0.1, 0.1) * wt, vl)
        polys.append(split(c, (u0, s0 - 5.0), end, (wt, s0), (0.0, 0.0), 0.0, sev))
    shift = g.choice((-1.0, 1.0)) * sev.displacement
    angle = g.choice((-1.0, 1.0)) * (1.5 + 1.2 * sev.tilt)
    # the plateau block above the line moves on the shaft
    polys.append(
        split(c, p0, p1, (0.0, s0 + 0.1 * wt), (shift, 0.3 * sev.displacement), angle, sev)
    )
