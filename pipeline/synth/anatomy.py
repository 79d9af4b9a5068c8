"""Procedural knee anatomy, drawn as an X-ray attenuation map.

Each bone is a smooth outline in a knee-centred frame in millimetres (``u`` across the
joint, ``v`` down the leg, origin at the centre of the joint space). Its attenuation is
made from the distance to its own outline: a cortical rim that is brighter than the
trabecular core (thicker along the shafts, where the medullary canal is darker), times
a trabecular texture. Overlapping bones add up (the patella over the femur, the fibular
head over the tibia), like projected densities do.

In the canonical frame the knee is a right knee: in an AP view its lateral side (the
fibula) lies at negative ``u``, which is the viewer's left in radiological convention;
a left knee mirrors ``u``. In a lateral view negative ``u`` is anterior (the patella).

The tibia is drawn into its own layer so that :mod:`pipeline.synth.fractures` can cut
and displace it before the layers are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

LONG = 600.0  # mm: shafts run this far from the joint, i.e. off every image


@dataclass(frozen=True)
class Frame:
    """Similarity transform from a knee's local frame (mm) to image pixels.

    ``x = cx + s (m u cos a - v sin a)``, ``y = cy + s (m u sin a + v cos a)`` with
    ``m = mirror`` (+1 right knee, -1 left knee in an AP view).
    """

    cx: float
    cy: float
    scale: float  # pixels per mm
    angle: float  # radians; positive turns the knee clockwise on screen
    mirror: float = 1.0

    def rotated(self, dangle: float) -> Frame:
        """The same frame turned by ``dangle`` radians about its origin."""
        return replace(self, angle=self.angle + dangle)

    def to_px(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) local mm -> (N, 2) pixel (x, y)."""
        uv = np.asarray(uv, dtype=np.float64)
        c, s = np.cos(self.angle), np.sin(self.angle)
        mu = self.mirror * uv[..., 0]
        x = self.cx + self.scale * (mu * c - uv[..., 1] * s)
        y = self.cy + self.scale * (mu * s + uv[..., 1] * c)
        return np.stack([x, y], axis=-1)

    def vec_px(self, duv: tuple[float, float]) -> np.ndarray:
        """A local displacement (mm) as a pixel vector (x, y)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        du, dv = self.mirror * duv[0], duv[1]
        return np.array([self.scale * (du * c - dv * s), self.scale * (du * s + dv * c)])

    def grid(self, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Local (u, v) in mm of every pixel centre of the window, each (y1-y0, x1-x0)."""
        xs = (np.arange(x0, x1, dtype=np.float32) - self.cx) / self.scale
        ys = (np.arange(y0, y1, dtype=np.float32) - self.cy) / self.scale
        c, s = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        u = (xs[None, :] * c + ys[:, None] * s) * np.float32(self.mirror)
        v = ys[:, None] * c - xs[None, :] * s
        return u, v

    def corners(self, u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
        """The pixel (x, y) of a local box's four corners (4, 2)."""
        return self.to_px(np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]]))

    def window(self, u0: float, v0: float, u1: float, v1: float, shape: tuple[int, int]):
        """Pixel window ``(x0, y0, x1, y1)`` covering a local box, clipped to the image."""
        corners = self.corners(u0, v0, u1, v1)
        x0, y0 = np.floor(corners.min(axis=0)).astype(int)
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
        h, w = shape
        return max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)


@dataclass(frozen=True)
class KneeShape:
    """Size and build of one knee, in mm (drawn once per patient knee)."""

    condyle_width: float  # femoral bicondylar width
    plateau_width: float
    femur_shaft: float
    tibia_shaft: float
    gap: float  # joint space height
    medial_drop: float  # medial condyle lower than lateral (mm)
    density: float  # bone mineral density factor (osteoporosis < 1)
    soft: float  # soft-tissue half-width at the joint / condyle width
    patella: float  # patella size factor
    fibula_overlap: float  # tibiofibular overlap (fraction of plateau width)
    spine: float  # tibial spine height factor
    arthritis: float  # 0 none .. 1 severe: osteophytes, subchondral sclerosis
    variants_seed: int  # seeds normal variants (scars, growth lines, canals, islands)

    @staticmethod
    def draw(rng: np.random.Generator, sex: str) -> KneeShape:
        wc = rng.normal(84.0 if sex == "M" else 75.0, 4.5)
        wc = float(np.clip(wc, 64.0, 98.0))
        return KneeShape(
            condyle_width=wc,
            plateau_width=wc * rng.uniform(0.93, 1.0),
            femur_shaft=wc * rng.uniform(0.36, 0.44),
            tibia_shaft=wc * rng.uniform(0.36, 0.42),
            gap=rng.uniform(2.5, 7.0),
            medial_drop=rng.uniform(-0.5, 2.0),
            density=rng.uniform(0.75, 1.1),
            soft=rng.uniform(0.68, 0.95),
            patella=rng.uniform(0.9, 1.1),
            fibula_overlap=rng.uniform(-0.02, 0.12),
            spine=rng.uniform(0.75, 1.25),
            arthritis=float(max(rng.uniform(-0.6, 1.0), 0.0)),
            variants_seed=int(rng.integers(0, 2**31)),
        )


@dataclass(frozen=True)
class Pose:
    """Where and how one knee lies in one image."""

    frame: Frame  # femur frame
    varus: float  # radians, tibia relative to femur (AP) / flexion (LAT)
    flexion: float  # degrees
    rim_offset: float  # mm between anterior and posterior plateau rims (beam tilt)


def chaikin(points: np.ndarray, iterations: int = 2, closed: bool = True) -> np.ndarray:
    """Corner-cutting smoothing of a polygon (N, 2) -> (~N * 2**iterations, 2)."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0) if closed else p[1:]
        a = p if closed else p[:-1]
        left, right = 0.75 * a + 0.25 * q, 0.25 * a + 0.75 * q
        p = np.empty((2 * len(a), 2))
        p[0::2], p[1::2] = left, right
    return p


def _window(pts_px: np.ndarray, shape: tuple[int, int], pad: int):
    """The pixel window ``(x0, y0, x1, y1)`` round points, ``pad`` pixels wider, clipped
    to the image; None when it is under 2 pixels a side."""
    h, w = shape
    x0, y0 = np.maximum(np.floor(pts_px.min(axis=0)).astype(int) - pad, 0)
    x1, y1 = np.minimum(np.ceil(pts_px.max(axis=0)).astype(int) + pad + 1, (w, h))
    return None if x1 - x0 < 2 or y1 - y0 < 2 else (int(x0), int(y0), int(x1), int(y1))


def _depth(pts_px: np.ndarray, shape: tuple[int, int], scale: float, pad: int):
    """The window round an outline (:func:`_window`), the outline's filled mask in it
    and each pixel's depth under the outline in mm; None when the window is empty."""
    window = _window(pts_px, shape, pad)
    if window is None:
        return None
    x0, y0, x1, y1 = window
    mask = fill_mask((y1 - y0, x1 - x0), [pts_px], x0, y0)
    return window, mask, cv2.distanceTransform(mask, cv2.DIST_L2, 5) * np.float32(1.0 / scale)


def add_line(layer: np.ndarray, pts_px: np.ndarray, value: float, width_px: float) -> None:
    """Add (not paint) a polyline of ``value`` to ``layer``, blurred over its width."""
    window = _window(pts_px, layer.shape, 4)
    if window is None:
        return
    x0, y0, x1, y1 = window
    line = np.zeros((y1 - y0, x1 - x0), np.float32)
    pts = np.round((pts_px - (x0, y0)) * 16).astype(np.int32)
    cv2.polylines(line, [pts], False, float(value), max(round(width_px), 1), cv2.LINE_8, 4)
    layer[y0:y1, x0:x1] += cv2.GaussianBlur(line, (0, 0), max(width_px / 3.0, 0.5))


def fill_mask(shape: tuple[int, int], polygons_px: list[np.ndarray], x0: int, y0: int):
    """uint8 mask of the window at (x0, y0) of size ``shape`` with the polygons filled."""
    mask = np.zeros(shape, np.uint8)
    pts = [np.round((p - (x0, y0)) * 16).astype(np.int32) for p in polygons_px]
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=4)
    return mask


def draw_bone(
    layer: np.ndarray,
    outline_uv: np.ndarray,
    frame: Frame,
    texture: np.ndarray,
    *,
    density: float,
    cortex_mm: float = 1.4,
    shaft_from: float | None = None,
    core_mm: float = 7.0,
    trabecular: float = 0.27,
    cortical: float = 0.5,
) -> tuple[int, int, int, int] | None:
    """Add one bone's attenuation to ``layer`` (H, W) in place; returns its pixel window.

    ``shaft_from`` (mm of |v|): beyond it the cortex thickens and the core empties, as
    along a diaphysis.
    """
    found = _depth(frame.to_px(outline_uv), layer.shape, frame.scale, 2)
    if found is None:
        return None
    (x0, y0, x1, y1), mask, d = found  # d: (h, w) mm to the outline
    core = np.sqrt(np.minimum(d, core_mm) * np.float32(1.0 / core_mm))
    if shaft_from is not None:
        _, v = frame.grid(x0, y0, x1, y1)
        t = np.clip((np.abs(v) - shaft_from) / (0.6 * shaft_from), 0.0, 1.0)
        cortex = np.float32(cortex_mm) * (1.0 + 2.2 * t)
        core *= 1.0 - 0.55 * t
        rim = np.exp(-d / cortex) * (1.0 + 0.6 * t)
    else:
        rim = np.exp(-d * np.float32(1.0 / cortex_mm))
    val = trabecular * core * texture[y0:y1, x0:x1] + cortical * rim
    val *= mask
    layer[y0:y1, x0:x1] += np.float32(density) * val
    return x0, y0, x1, y1


def trabecular_texture(rng: np.random.Generator, shape: tuple[int, int], spacing: float):
    """Multiplicative trabecular texture, mean 1, with ~1-3 mm vertical grain."""
    h, w = shape
    out = np.ones(shape, np.float32)
    for cell_mm, aspect, amp in ((1.0, 2.5, 0.09), (2.5, 2.0, 0.07), (8.0, 1.0, 0.05)):
        gh = max(int(h * spacing / (cell_mm * aspect)), 2)
        gw = max(int(w * spacing / cell_mm), 2)
        noise = rng.standard_normal((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    return out


def soft_tissue(
    layer: np.ndarray, frame: Frame, half_widths: list[tuple[float, float]], mu: float
) -> None:
    """Add a limb's soft-tissue envelope: chord length through a cylinder of the
    profile's local radius, times ``mu`` (attenuation per mm)."""
    vs = np.array([v for v, _ in half_widths])
    hw = np.array([r for _, r in half_widths])
    outline = np.concatenate([np.stack([-hw, vs], 1), np.stack([hw, vs], 1)[::-1]])
    found = _depth(frame.to_px(outline), layer.shape, frame.scale, 0)
    if found is None:
        return
    (x0, y0, x1, y1), _, d = found
    r = np.float32(np.median(hw))
    d = np.minimum(d, r)
    chord = 2.0 * np.sqrt(d * (2.0 * r - d))  # mm through a cylinder of radius r
    # subcutaneous fat is less dense than muscle: a darker shell under the skin
    fat = np.minimum(d, np.float32(8.0))
    layer[y0:y1, x0:x1] += np.float32(mu) * (chord - 0.35 * 2.0 * np.sqrt(fat * (2 * r - fat)))


def ellipse(center: tuple[float, float], axes: tuple[float, float], tilt: float = 0.0, n=48):
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    c, s = np.cos(tilt), np.sin(tilt)
    return np.stack([center[0] + x * c - y * s, center[1] + x * s + y * c], axis=1)


# --------------------------------------------------------------------------- AP view


def femur_ap(k: KneeShape) -> np.ndarray:
    wc, wf, g, dm = k.condyle_width, k.femur_shaft, k.gap, k.medial_drop
    b = -g / 2.0  # condyle bottoms
    pts = [
        (-wf / 2, -LONG),
        (-wf / 2, -0.95 * wc),
        (-0.46 * wc, -0.45 * wc),
        (-0.5 * wc, -0.24 * wc),
        (-0.5 * wc, -0.1 * wc),
        (-0.43 * wc, b - 0.025 * wc),
        (-0.3 * wc, b),
        (-0.17 * wc, b - 0.01 * wc),
        (-0.09 * wc, b - 0.06 * wc),
        (0.0, b - 0.09 * wc),
        (0.09 * wc, b - 0.06 * wc),
        (0.17 * wc, b - 0.01 * wc + dm),
        (0.3 * wc, b + dm),
        (0.44 * wc, b - 0.03 * wc + dm),
        (0.51 * wc, -0.13 * wc),
        (0.52 * wc, -0.26 * wc),
        (0.47 * wc, -0.45 * wc),
        (wf / 2, -0.95 * wc),
        (wf / 2, -LONG),
    ]
    return chaikin(np.array(pts), 3)


def tibia_ap(k: KneeShape) -> np.ndarray:
    wt, ws, s0, sp = k.plateau_width, k.tibia_shaft, k.gap / 2.0, k.spine
    pts = [
        (-ws / 2, LONG),
        (-ws / 2, s0 + 0.9 * wt),
        (-0.43 * wt, s0 + 0.36 * wt),
        (-0.5 * wt, s0 + 0.12 * wt),
        (-0.5 * wt, s0 + 0.035 * wt),
        (-0.45 * wt, s0),
        (-0.3 * wt, s0 - 0.006 * wt),
        (-0.14 * wt, s0),
        (-0.1 * wt, s0 - 0.03 * wt * sp),
        (-0.07 * wt, s0 - 0.1 * wt * sp),
        (-0.045 * wt, s0 - 0.05 * wt * sp),
        (-0.01 * wt, s0 - 0.035 * wt * sp),
        (0.02 * wt, s0 - 0.06 * wt * sp),
        (0.04 * wt, s0 - 0.11 * wt * sp),
        (0.07 * wt, s0 - 0.03 * wt * sp),
        (0.1 * wt, s0),
        (0.3 * wt, s0 + 0.012 * wt),
        (0.46 * wt, s0),
        (0.5 * wt, s0 + 0.04 * wt),
        (0.5 * wt, s0 + 0.13 * wt),
        (0.42 * wt, s0 + 0.38 * wt),
        (ws / 2, s0 + 0.9 * wt),
        (ws / 2, LONG),
    ]
    return chaikin(np.array(pts), 2)


def fibula_ap(k: KneeShape) -> np.ndarray:
    wt, s0 = k.plateau_width, k.gap / 2.0
    o = k.fibula_overlap * wt
    e = -0.5 * wt + o  # medial edge of the head, over the tibia
    pts = [
        (e - 0.02 * wt, s0 + 0.2 * wt),
        (e - 0.1 * wt, s0 + 0.15 * wt),
        (e - 0.19 * wt, s0 + 0.12 * wt),
        (e - 0.25 * wt, s0 + 0.17 * wt),
        (e - 0.25 * wt, s0 + 0.28 * wt),
        (e - 0.2 * wt, s0 + 0.42 * wt),
        (e - 0.2 * wt, s0 + 0.6 * wt),
        (e - 0.24 * wt, LONG),
        (e - 0.1 * wt, LONG),
        (e - 0.06 * wt, s0 + 0.6 * wt),
        (e - 0.05 * wt, s0 + 0.42 * wt),
        (e + 0.01 * wt, s0 + 0.3 * wt),
    ]
    return chaikin(np.array(pts), 3)


def patella_ap(k: KneeShape, flexion: float) -> np.ndarray:
    wc = k.condyle_width
    drop = 0.35 * flexion  # mm: the patella slides down the trochlea in flexion
    return ellipse((0.03 * wc, -0.33 * wc + drop), (0.26 * wc * k.patella, 0.3 * wc * k.patella))


def leg_profile(k: KneeShape) -> list[tuple[float, float]]:
    r = k.soft * k.condyle_width
    return [
        (-LONG, 1.3 * r),
        (-2.0 * r, 1.2 * r),
        (-0.6 * r, 1.03 * r),
        (0.0, r),
        (0.9 * r, 1.08 * r),
        (2.0 * r, 1.2 * r),
        (3.2 * r, 1.0 * r),
        (LONG, 0.7 * r),
    ]


def knee_box_uv(k: KneeShape) -> tuple[float, float, float, float]:
    """The knee's box in its own frame: condyles, plateau, fibular head, metaphysis."""
    wc = k.condyle_width
    return -0.8 * wc, -0.7 * wc, 0.8 * wc, 0.9 * wc


def box_px(frame: Frame, box_uv, shape: tuple[int, int]) -> list[int]:
    """Axis-aligned pixel box ``[x0, y0, x1, y1]`` of a rotated local box, in the image."""
    corners = frame.corners(*box_uv)
    h, w = shape
    x0, y0 = np.clip(np.floor(corners.min(axis=0)), 0, [w - 1, h - 1])
    x1, y1 = np.clip(np.ceil(corners.max(axis=0)), 0, [w - 1, h - 1])
    return [int(x0), int(y0), int(x1), int(y1)]


@dataclass
class KneeLayers:
    """Attenuation of one knee, before the tibia is (possibly) fractured."""

    tibia: np.ndarray  # (H, W) the tibia alone, cut by the fracture drawing
    other: np.ndarray  # (H, W) femur, patella, fibula, soft tissue
    tibia_frame: Frame
    box: list[int]


def draw_knee_ap(shape, k: KneeShape, pose: Pose, texture, mu_soft: float) -> KneeLayers:
    """Frontal (AP) view of one knee."""
    f = pose.frame
    ft = f.rotated(pose.varus)
    other = np.zeros(shape, np.float32)
    tibia = np.zeros(shape, np.float32)
    soft_tissue(other, f, leg_profile(k), mu_soft)
    rho = k.density
    shaft = 0.75 * k.condyle_width
    box = draw_bone(other, femur_ap(k), f, texture, density=rho, shaft_from=shaft)
    if box is not None:  # the intercondylar notch: less bone in the beam
        x0, y0, x1, y1 = box
        u, v = f.grid(x0, y0, x1, y1)
        wc = k.condyle_width
        r2 = (u / (0.085 * wc)) ** 2 + ((v + k.gap / 2 + 0.1 * wc) / (0.17 * wc)) ** 2
        other[y0:y1, x0:x1] -= 0.18 * rho * np.exp(-(r2**2))
    draw_bone(
        other,
        patella_ap(k, pose.flexion),
        f,
        texture,
        density=0.4 * rho,
        core_mm=8.0,
        cortex_mm=1.0,
    )
    draw_bone(other, fibula_ap(k), ft, texture, density=0.9 * rho, shaft_from=0.7 * shaft)
    draw_bone(tibia, tibia_ap(k), ft, texture, density=rho, shaft_from=shaft)
    draw_variants(tibia, other, ft, f, k, "AP")
    if abs(pose.rim_offset) > 0.5:  # the posterior plateau rim projects as a second line
        us = np.array([-0.47, -0.15, 0.12, 0.47]) * k.plateau_width
        rim = np.stack([us, np.full(4, k.gap / 2.0 + pose.rim_offset)], axis=1)
        add_line(tibia, ft.to_px(rim), 0.1 * rho, 0.8 * ft.scale)
    return KneeLayers(tibia, other, ft, box_px(f, knee_box_uv(k), shape))


def add_blob(layer: np.ndarray, outline_px: np.ndarray, value: float, blur_px: float) -> None:
    """Add a filled, blurred polygon of ``value`` (a small bony density) to ``layer``."""
    window = _window(outline_px, layer.shape, int(3 * blur_px) + 2)
    if window is None:
        return
    x0, y0, x1, y1 = window
    blob = fill_mask((y1 - y0, x1 - x0), [outline_px], x0, y0).astype(np.float32)
    layer[y0:y1, x0:x1] += np.float32(value) * cv2.GaussianBlur(blob, (0, 0), max(blur_px, 0.3))


def draw_variants(
    tibia: np.ndarray, other: np.ndarray, ft: Frame, f: Frame, k: KneeShape, view: str
) -> None:
    """Normal variants and degenerative change that a fracture must be told apart from.

    A physeal scar and growth-recovery lines (thin bright transverse lines, like a
    healed metaphyseal line), a nutrient canal (a thin dark oblique line, like a
    hairline split), a bone island (a bright spot, like impacted bone) and
    osteoarthritis (osteophytes at the plateau margins, subchondral sclerosis under the
    medial plateau). Seeded per knee, so every image of the knee shows the same ones.
    """
    g = np.random.default_rng([k.variants_seed, view == "LAT"])
    wt, s0, rho, px = k.plateau_width, k.gap / 2.0, k.density, ft.scale
    half = 0.42 * wt if view == "AP" else 0.32 * wt
    if g.random() < 0.6:  # physeal scar
        v, t = s0 + g.uniform(0.13, 0.24) * wt, g.uniform(-0.03, 0.03) * wt
        pts = np.array([[-half, v - t], [0.0, v + g.uniform(-1, 1)], [half, v + t]])
        add_line(tibia, ft.to_px(chaikin(pts, 2, closed=False)), 0.07 * rho, 0.7 * px)
    for _ in range(int(g.choice([0, 0, 0, 1, 1, 2]))):  # growth-recovery lines
        v, t = s0 + g.uniform(0.35, 0.85) * wt, g.uniform(-0.04, 0.04) * wt
        w = g.uniform(0.3, 0.45) * wt
        add_line(tibia, ft.to_px(np.array([[-w, v - t], [w, v + t]])), 0.06 * rho, 0.6 * px)
    if g.random() < 0.45:  # nutrient canal: dark, thin, oblique
        a = np.radians(g.uniform(-30, 30))
        p0 = np.array([g.uniform(-0.18, 0.18) * wt, s0 + g.uniform(0.3, 0.6) * wt])
        p1 = p0 + g.uniform(0.2, 0.35) * wt * np.array([np.sin(a), np.cos(a)])
        canal = np.zeros_like(tibia)
        add_line(canal, ft.to_px(np.stack([p0, p1])), 1.0, 0.6 * px)
        tibia *= 1.0 - g.uniform(0.12, 0.3) * np.clip(canal, 0.0, 1.0)
    if g.random() < 0.25:  # bone island
        c = (g.uniform(-0.35, 0.35) * wt, s0 + g.uniform(0.06, 0.45) * wt)
        r = g.uniform(1.5, 4.0)
        add_blob(
            tibia,
            ft.to_px(ellipse(c, (r, r * g.uniform(0.6, 1.0)), g.uniform(0, 3))),
            0.15 * rho,
            0.4 * px,
        )
    oa = k.arthritis
    if oa > 0.05:
        size = 1.0 + 5.0 * oa  # mm
        for side in (-1.0, 1.0):
            edge = side * 0.5 * wt if view == "AP" else side * 0.38 * wt
            spur = np.array(
                [[edge, s0 + 1.0], [edge + side * size, s0 - 0.3 * size], [edge, s0 + 2.0 + size]]
            )
            add_blob(tibia, ft.to_px(spur), 0.25 * rho, 0.4 * px)
            if view == "AP":
                fe = side * 0.5 * k.condyle_width
                spur = np.array(
                    [
                        [fe, -s0 - 2.0],
                        [fe + side * size * 0.8, -s0 + 0.2 * size],
                        [fe, -s0 - 2.0 - size],
                    ]
                )
                add_blob(other, f.to_px(spur), 0.25 * rho, 0.4 * px)
        if view == "AP":  # subchondral sclerosis under the (loaded) medial plateau
            depth = 2.0 + 5.0 * oa
            band = np.array(
                [
                    [0.1 * wt, s0 + 0.5],
                    [0.48 * wt, s0 + 0.5],
                    [0.44 * wt, s0 + depth],
                    [0.28 * wt, s0 + 1.2 * depth],
                    [0.14 * wt, s0 + 0.5 * depth],
                ]
            )
            add_blob(tibia, ft.to_px(chaikin(band, 2)), 0.12 * rho * oa, 1.5 * px)


# --------------------------------------------------------------------------- lateral view


def femur_lat(k: KneeShape) -> tuple[np.ndarray, np.ndarray]:
    """Outline and the far condyle's arc (drawn as a faint double contour)."""
    wc, b = k.condyle_width, -k.gap / 2.0
    half = 0.19 * wc
    rc = 0.3 * wc
    cu, cv_ = 0.06 * wc, b - rc
    phi = np.radians(np.linspace(185.0, -40.0, 24))  # anterior -> inferior -> posterior
    arc = np.stack([cu + rc * np.cos(phi), cv_ + rc * np.sin(phi)], axis=1)
    pts = np.concatenate(
        [
            [(-half, -LONG), (-half, -0.95 * wc), (-0.27 * wc, -0.6 * wc), (-0.31 * wc, -0.4 * wc)],
            arc,
            [(0.22 * wc, b - 0.68 * wc), (half, -0.9 * wc), (half, -LONG)],
        ]
    )
    return chaikin(pts, 2), arc


def tibia_lat(k: KneeShape, slope: float) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    wt, s0, ws = k.plateau_width, k.gap / 2.0, k.tibia_shaft

    def surface(u):
        return s0 + slope * (np.asarray(u) + 0.38 * wt)

    sp = k.spine
    pts = [
        (-0.22 * ws * 1.2, LONG),
        (-0.26 * wt, s0 + 1.0 * wt),
        (-0.44 * wt, s0 + 0.42 * wt),
        (-0.43 * wt, s0 + 0.2 * wt),
        (-0.4 * wt, surface(-0.4 * wt) + 0.04 * wt),
        (-0.37 * wt, surface(-0.37 * wt)),
        (-0.12 * wt, surface(-0.12 * wt)),
        (-0.03 * wt, surface(-0.03 * wt) - 0.08 * wt * sp),
        (0.05 * wt, surface(0.05 * wt) - 0.06 * wt * sp),
        (0.12 * wt, surface(0.12 * wt)),
        (0.35 * wt, surface(0.35 * wt)),
        (0.38 * wt, surface(0.38 * wt) + 0.06 * wt),
        (0.3 * wt, s0 + 0.34 * wt),
        (0.2 * wt, s0 + 0.8 * wt),
        (0.2 * ws * 1.2, LONG),
    ]
    return chaikin(np.array(pts), 2), surface


def fibula_lat(k: KneeShape) -> np.ndarray:
    wt, s0 = k.plateau_width, k.gap / 2.0
    pts = [
        (0.14 * wt, s0 + 0.3 * wt),
        (0.2 * wt, s0 + 0.2 * wt),
        (0.3 * wt, s0 + 0.22 * wt),
        (0.33 * wt, s0 + 0.35 * wt),
        (0.28 * wt, s0 + 0.5 * wt),
        (0.27 * wt, LONG),
        (0.16 * wt, LONG),
        (0.17 * wt, s0 + 0.5 * wt),
    ]
    return chaikin(np.array(pts), 3)


def leg_profile_lat(k: KneeShape) -> list[tuple[float, float]]:
    r = k.soft * k.condyle_width * 0.95
    return [
        (-LONG, 1.5 * r),
        (-2.0 * r, 1.35 * r),
        (-0.5 * r, 1.1 * r),
        (0.0, r),
        (1.0 * r, 1.15 * r),
        (2.2 * r, 1.25 * r),
        (3.2 * r, 1.0 * r),
        (LONG, 0.7 * r),
    ]


def draw_knee_lat(shape, k: KneeShape, pose: Pose, texture, mu_soft: float) -> KneeLayers:
    """Lateral view of one knee: condyles superimposed, patella in front, flexed."""
    ft = pose.frame  # the tibia frame; the femur turns by the flexion angle
    f = ft.rotated(np.radians(pose.flexion) * ft.mirror)
    other = np.zeros(shape, np.float32)
    tibia = np.zeros(shape, np.float32)
    soft_tissue(other, ft, leg_profile_lat(k), mu_soft)
    rho = k.density
    shaft = 0.75 * k.condyle_width
    outline, arc = femur_lat(k)
    draw_bone(other, outline, f, texture, density=1.15 * rho, shaft_from=shaft)
    offset = np.array([pose.rim_offset * 0.8 + 2.0, 1.5 + 0.3 * pose.rim_offset])
    add_line(other, f.to_px(arc + offset), 0.12 * rho, 1.2 * f.scale)
    wc = k.condyle_width
    pat = ellipse(
        (-0.44 * wc, -0.3 * wc),
        (0.12 * wc * k.patella, 0.28 * wc * k.patella),
        tilt=np.radians(8.0),
    )
    draw_bone(other, pat, f, texture, density=0.9 * rho, core_mm=6.0)
    outline_t, _ = tibia_lat(k, np.tan(np.radians(7.0)))
    draw_bone(other, fibula_lat(k), ft, texture, density=0.7 * rho, shaft_from=0.7 * shaft)
    draw_bone(tibia, outline_t, ft, texture, density=1.1 * rho, shaft_from=shaft)
    draw_variants(tibia, other, ft, f, k, "LAT")
    return KneeLayers(tibia, other, ft, box_px(ft, knee_box_uv(k), shape))


def lat_surface(k: KneeShape):
    """Plateau height v(u) in the lateral view (posterior slope of 7 degrees)."""
    return tibia_lat(k, np.tan(np.radians(7.0)))[1]


# --------------------------------------------------------------------------- other parts


def draw_hand(shape, frame: Frame, texture, rng: np.random.Generator, mu_soft: float):
    """A hand-like PA image: palm, five rays of metacarpals and phalanges, carpal blob."""
    out = np.zeros(shape, np.float32)
    frame = replace(frame, scale=frame.scale * 1.5)  # drawn in units of 1.5 mm
    palm = ellipse((0.0, 20.0), (45.0, 55.0))
    soft_tissue_poly(out, frame, palm, 1.2 * mu_soft)
    forearm = np.array([[-32.0, 60.0], [32.0, 60.0], [40.0, LONG], [-40.0, LONG]])
    soft_tissue_poly(out, frame, forearm, 1.2 * mu_soft)
    carpal = ellipse((0.0, 55.0), (30.0, 17.0))
    draw_bone(out, carpal, frame, texture, density=0.8, core_mm=5.0)
    for i, (du, length) in enumerate(zip((-34, -17, 0, 16, 31), (55, 75, 82, 76, 62))):
        tilt = np.radians(-25.0 if i == 0 else (i - 2) * 5.0)
        base = np.array([du * 0.6, 40.0])
        seg_start = base.copy()
        for j, part in enumerate((0.5, 0.3, 0.2)):
            seg_len = length * part
            end = seg_start + seg_len * np.array([np.sin(tilt), -np.cos(tilt)])
            mid = (seg_start + end) / 2
            width = (8.0 - j * 1.5) * rng.uniform(0.9, 1.1)
            bone = ellipse(tuple(mid), (width / 2, seg_len / 2 - 1.5), tilt=tilt)
            draw_bone(out, bone, frame, texture, density=0.8, core_mm=3.0, cortex_mm=0.8)
            soft_tissue_poly(
                out, frame, ellipse(tuple(mid), (width, seg_len / 2 + 2), tilt), 0.9 * mu_soft
            )
            seg_start = end + 2.0 * np.array([np.sin(tilt), -np.cos(tilt)])
    return out


def draw_ankle(shape, frame: Frame, texture, rng: np.random.Generator, mu_soft: float):
    """An ankle-like AP image: distal tibia and fibula, talar dome, hindfoot blob."""
    out = np.zeros(shape, np.float32)
    r = rng.uniform(36.0, 44.0)
    soft_tissue(
        out, frame, [(-LONG, 1.1 * r), (0.0, r), (40.0, 1.25 * r), (LONG, 1.3 * r)], mu_soft
    )
    tib = chaikin(
        np.array(
            [
                (-14, -LONG),
                (-14, -60),
                (-24, -15),
                (-22, -2),
                (-10, 0),
                (14, 0),
                (20, 6),
                (22, -10),
                (16, -60),
                (16, -LONG),
            ],
            float,
        ),
        3,
    )
    fib = chaikin(
        np.array([(-30, -LONG), (-30, -40), (-38, 14), (-32, 20), (-25, -35), (-21, -LONG)], float),
        3,
    )
    talus = chaikin(np.array([(-22, 5), (0, 1), (20, 6), (24, 30), (-20, 32)], float), 3)
    draw_bone(out, tib, frame, texture, density=1.0, shaft_from=45.0)
    draw_bone(out, fib, frame, texture, density=0.8, shaft_from=45.0)
    draw_bone(out, talus, frame, texture, density=0.9, core_mm=8.0)
    draw_bone(out, ellipse((0.0, 50.0), (32.0, 16.0)), frame, texture, density=0.7)
    return out


def soft_tissue_poly(layer: np.ndarray, frame: Frame, outline_uv: np.ndarray, mu: float):
    """Soft tissue of an arbitrary outline (thickness grows with depth under the skin)."""
    found = _depth(frame.to_px(outline_uv), layer.shape, frame.scale, 0)
    if found is None:
        return
    (x0, y0, x1, y1), _, d = found
    layer[y0:y1, x0:x1] += np.float32(mu) * 2.0 * np.sqrt(d * 12.0)
