"""Knee localisation with HOG features and a linear SVM (after MIPT-Oulu's KneeLocalizer).

The detector scores square windows of an image, each described by a 64x64-pixel HOG
descriptor (:mod:`pipeline.preprocess.hog`: 7 x 7 blocks x 36 = 1764 features), with
one linear SVM. Windows are scanned at several scales: with a pixel spacing the
scales cover the physical knee sizes seen in training (in mm), without one they
cover the sizes seen relative to the image height. All windows of a scale are scored
at once (:func:`~pipeline.preprocess.hog.window_scores`). A coarse pass (scale step
1.12) finds each knee; a fine pass around it (scale step 1.04, 2-pixel offsets) and a
score-weighted mean of the best windows place the box.

Real framing: when that pass is unsure of a single knee, a second one reaches
further (:meth:`KneeLocalizer.reach_candidates`): the image's edge pixels are
repeated outwards, so a window may reach past the frame (a knee cut by a tight crop,
off-centre or partly outside), and without a pixel spacing the windows grow up to
:data:`REACH` times the image's longer side (an export where the joint fills the
frame). The better of the two passes is kept. A two-view image (a frontal and a
skyline view side by side) needs nothing more: the frontal view's knee is the best
window.

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

import numpy as np

from pipeline.io import atomic_write_bytes
from pipeline.preprocess.hog import (
    BINS,
    CELL,
    DIM,
    GRID,
    NB,
    WIN,
    Pyramid,
    hog_grid,
    one_blas_thread,
    patch_features,
    stretch_levels,
    window_scores,
)

WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "knee_hog_svm.npz"
FORMAT_VERSION = 3
#: DICOM ViewPosition values of a lateral view (its own detector when the weights have one).
LATERAL_VIEWS = frozenset({"LAT", "LATERAL", "LL", "RL", "LLD", "RLD", "XTABLE"})
#: Without a pixel spacing, the reaching pass tries knee boxes up to this many times the
#: image's longer side (a tight crop: the joint fills the frame, its box reaches past it).
REACH = 1.4
#: ... and lets a window reach past the frame by up to this share of its side.
REACH_PAD = 0.4


def weights_path(weights: str | os.PathLike[str] | None = None) -> Path:
    """The weights file: ``weights`` if given, else the one shipped in the package."""
    return Path(weights) if weights is not None else WEIGHTS_FILE


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
        pyr: Pyramid,
        sides: Sequence[float],
        offsets: Sequence[tuple[int, int]] = ((0, 0),),
        region: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """Score every window of each side (image pixels) on a 4-pixel grid (plus offsets).

        Returns (N, 4) float64 rows ``[score, cx, cy, window side]`` in image pixels.
        """
        out = []
        with one_blas_thread():
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
        return np.concatenate(out) if out else np.empty((0, 4))

    def _refine(self, pyr: Pyramid, best: _Cand) -> _Cand:
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
    ) -> tuple[Pyramid, list[float]]:
        lo, _, hi = self.expected_side(image.shape, spacing_mm)
        return Pyramid(image, lo, self.context, preview), scale_steps(lo, hi)

    def reach_candidates(
        self,
        image: np.ndarray,
        spacing_mm: tuple[float, float] | None = None,
        preview: np.ndarray | None = None,
    ) -> tuple[Pyramid, np.ndarray]:
        """The reaching pass: windows that may cross the frame, centred inside it.

        The knee box sides are the expected ones, and without a pixel spacing up to
        :data:`REACH` times the image's longer side. Returns the (padded) pyramid and
        (N, 4) rows ``[score, cx, cy, window side]`` in image pixels, every centre
        inside the image.
        """
        h, w = image.shape
        lo, _, hi = self.expected_side(image.shape, spacing_mm)
        if spacing_mm is None:
            hi = max(hi, REACH * max(h, w))
        pyr = Pyramid(image, lo, self.context, preview, reach=REACH_PAD)
        rows = self._scan(pyr, scale_steps(lo, hi))
        inside = (rows[:, 1] >= 0) & (rows[:, 1] < w) & (rows[:, 2] >= 0) & (rows[:, 2] < h)
        return pyr, rows[inside]

    def _reach(
        self, image: np.ndarray, spacing_mm: tuple[float, float] | None, preview: np.ndarray | None
    ) -> _Cand | None:
        """The best knee of the reaching pass, refined; None when no window fits."""
        pyr, rows = self.reach_candidates(image, spacing_mm, preview)
        if rows.size == 0:
            return None
        return self._refine(pyr, _Cand(*map(float, rows[np.argmax(rows[:, 0])])))

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
        reach: bool = True,
    ) -> list[KneeBox]:
        """Find the knee(s) of a [0, 1] float image; one :class:`KneeBox` per knee, left to right.

        ``mode``: ``"single"`` (one knee), ``"bilateral"`` (one per image half) or
        ``"auto"``: bilateral when the DICOM laterality is ``"B"``, single when it
        is ``"L"``/``"R"``, and otherwise bilateral only when both halves hold a
        confident knee clear of the other. A single knee without a DICOM laterality
        is called left or right from its anatomy when that call reaches
        ``side_confidence``. ``preview``: a smaller copy of ``image`` (same field of
        view) to scan instead of resizing ``image`` itself. ``reach``: when a single
        knee's confidence stays under ``min_confidence``, also try the reaching pass
        (:meth:`reach_candidates`) and keep the better knee.
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
            return _Cand(*map(float, inside[np.argmax(inside[:, 0])]))

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
            if reach and mode == "single" and self._unsure(cand, min_confidence):
                far = self._reach(image, spacing_mm, preview)
                if far is not None and (cand is None or far.score > cand.score):
                    cand = far
            if self._unsure(cand, min_confidence):  # centre crop of the expected size
                half = med / 2
                box = (centre_x - half, h / 2 - half, centre_x + half, h / 2 + half)
                score = cand.score if cand is not None else -math.inf
                conf = self.confidence(score) if cand is not None else 0.0
                out.append(KneeBox(box, score, conf, lat, True))
                continue
            half = cand.side / self.context / 2
            box = (cand.cx - half, cand.cy - half, cand.cx + half, cand.cy + half)
            if lat is None and mode == "single":
                guess, p = self.side_of(image, box)
                lat = guess if p >= side_confidence else None
            out.append(KneeBox(box, cand.score, self.confidence(cand.score), lat, False))
        return out

    def _unsure(self, cand: _Cand | None, min_confidence: float) -> bool:
        return cand is None or self.confidence(cand.score) < min_confidence


def scale_steps(lo: float, hi: float, step: float = 1.12) -> list[float]:
    """Window sides from ``lo`` to ``hi``, a constant ratio of at most ``step`` apart."""
    n = max(2, math.ceil(math.log(hi / lo) / math.log(step)) + 1)
    return [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]


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
