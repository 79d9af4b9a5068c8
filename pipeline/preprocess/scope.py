"""The out-of-scope decision: is this image a frontal knee, another view of a knee, or no knee?

DICOM tags are often wrong or empty, so every image is also decided from its pixels
(:meth:`ScopeModel.decide`), into one of :data:`SCOPES` with a score (the model's
probability of the decision). Only ``frontal_knee`` images are in scope: the others
never reach training or evaluation (:func:`pipeline.data.build_items`, whose
``scope_policy`` says how pixels and tags combine). The cache build decides every
file (:func:`decide_image`, on the ``clean`` step's analysis copy made with the
default settings, so the decision does not depend on the chain).

What the model reads (:func:`scope_features`) is the cleaned analysis copy of the
image (the ``clean`` step's, at :data:`SCOPE_SIZE` pixels), scanned by both knee
detectors of the localizer (:mod:`pipeline.preprocess.localizer`, frontal and lateral)
with windows that may reach past the frame: their best scores, the HOG descriptors of
the best frontal window, of twice its size around it (the context: shafts above and
below a knee, a foot below an ankle), of the best lateral window, and of the whole
image. A multinomial logistic regression on these (standardised) gives the three
probabilities, averaged over the image and its mirror image. It is trained on phantoms
with every body part (:mod:`pipeline.preprocess.scope_train`) and checked on real
radiographs (``benchmarks/real_images.py``).

Weights (``weights/scope_hog_logreg.npz``) record the localizer weights they were
trained with; other localizer weights need the scope model retrained.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.io import atomic_write_bytes, sha256_file
from pipeline.preprocess.arrays import scaled_size, shrink
from pipeline.preprocess.background import BackgroundOptions, analyse_background
from pipeline.preprocess.hog import (
    DIM,
    GRID,
    WIN,
    Pyramid,
    hog_grid,
    one_blas_thread,
    patch_features,
    stretch_levels,
    window_scores,
)
from pipeline.preprocess.localizer import (
    REACH,
    REACH_PAD,
    WEIGHTS_FILE,
    KneeLocalizer,
    scale_steps,
)
from pipeline.preprocess.steps import pad_to_square

SCOPE_WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "scope_hog_logreg.npz"
SCOPE_FORMAT_VERSION = 1
#: What an image shows, as the pixels decide it; only the first is in scope.
SCOPES = ("frontal_knee", "other_knee_view", "not_knee")
#: How each decision reads in summaries and reasons.
SCOPE_NAMES = {
    "frontal_knee": "frontal knee",
    "other_knee_view": "other knee view",
    "not_knee": "not a knee",
}
#: Longest side (pixels) of the image the decision reads.
SCOPE_SIZE = 256
#: Ratio between the window sides the decision's scan tries, from this share of the
#: image height (a knee smaller than that is not what the image shows) upwards.
SCOPE_STEP = 1.4
SCOPE_SMALLEST = 0.4
#: The score of a detector that found no window at all (an image too thin to scan).
NO_WINDOW = -10.0
FEATURES = 2 + 4 * DIM


@dataclass(frozen=True, kw_only=True)
class ScopeDecision:
    """What an image shows, from its pixels: one of :data:`SCOPES` and its probability."""

    scope: str
    score: float  # probability of ``scope``
    probabilities: tuple[float, float, float]  # of each of SCOPES, in order

    @property
    def in_scope(self) -> bool:
        return self.scope == "frontal_knee"

    @property
    def reason(self) -> str:
        """``"not a knee (0.93)"``: the decision and its score, as summaries list it."""
        return f"{SCOPE_NAMES[self.scope]} ({self.score:.2f})"

    def to_dict(self) -> dict[str, Any]:
        """The decision as the cache stores it (``in_scope``, ``knee`` and ``reason`` too,
        for readers that do not know :data:`SCOPES`)."""
        return {
            "scope": self.scope,
            "score": round(self.score, 4),
            "probabilities": [round(p, 4) for p in self.probabilities],
            "in_scope": self.in_scope,
            "knee": self.scope != "not_knee",
            "reason": self.reason,
        }


# --------------------------------------------------------------------------- features


def scope_input(small: np.ndarray) -> np.ndarray:
    """The image the decision reads: ``small`` (an analysis copy, at most
    ``BackgroundOptions.analysis_size`` long) cleaned with the default ``clean``
    settings and cut to its anatomy, as the ``clean`` step's preview is."""
    a = analyse_background(np.asarray(small, dtype=np.float32), BackgroundOptions())
    h, w = small.shape
    return a.preview((w, h))


def decide_image(image: np.ndarray, model: ScopeModel | None = None) -> ScopeDecision:
    """The decision for a decoded radiograph (float32, bone bright, any size)."""
    small, _ = shrink(np.asarray(image, dtype=np.float32), BackgroundOptions().analysis_size)
    return decide_small(small, model)


def decide_small(small: np.ndarray, model: ScopeModel | None = None) -> ScopeDecision:
    """The decision for a radiograph given as its analysis copy (:func:`scope_input`)."""
    return decide_preview(scope_input(small), model)


def decide_preview(preview: np.ndarray, model: ScopeModel | None = None) -> ScopeDecision:
    """The decision for the cleaned analysis copy (the ``clean`` step's preview)."""
    return (model or ScopeModel.load()).decide(preview)


def scope_image(image: np.ndarray) -> np.ndarray:
    """``image`` (float32, bone bright) resized so its longer side is :data:`SCOPE_SIZE`."""
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    f = SCOPE_SIZE / max(h, w)
    if f == 1.0:
        return image
    inter = cv2.INTER_AREA if f < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, scaled_size((w, h), f), interpolation=inter)


def _best_windows(
    image: np.ndarray, detectors: tuple[KneeLocalizer, KneeLocalizer]
) -> list[tuple[float, float, float, float]]:
    """The best (score, cx, cy, side) of each detector over windows that may reach past
    the frame, centred inside it (one HOG grid per scale serves both detectors)."""
    h, w = image.shape
    _, _, hi = detectors[0].expected_side(image.shape, None)
    lo, hi = SCOPE_SMALLEST * h, max(hi, REACH * max(h, w))
    pyr = Pyramid(image, lo, 1.0, reach=REACH_PAD)
    best = [(NO_WINDOW, w / 2, h / 2, lo)] * len(detectors)
    with one_blas_thread():
        for side in scale_steps(lo, hi, SCOPE_STEP):
            small, fx, fy, rx0, ry0 = pyr.scaled(WIN / side)
            if min(small.shape) < WIN:
                continue
            blocks = hog_grid(small)
            for i, d in enumerate(detectors):
                scores = window_scores(blocks, d.w, d.b)  # (ny, nx)
                gy, gx = np.mgrid[: scores.shape[0], : scores.shape[1]]
                cx = rx0 + (GRID * gx + WIN / 2) / fx
                cy = ry0 + (GRID * gy + WIN / 2) / fy
                scores = np.where((cx >= 0) & (cx < w) & (cy >= 0) & (cy < h), scores, -np.inf)
                k = int(np.argmax(scores))
                if scores.flat[k] > best[i][0]:
                    best[i] = (float(scores.flat[k]), float(cx.flat[k]), float(cy.flat[k]), side)
    return best


def scope_features(image: np.ndarray, detectors: tuple[KneeLocalizer, KneeLocalizer]) -> np.ndarray:
    """The (2, :data:`FEATURES`) float32 vectors the decision reads, of a cleaned image
    and of its mirror image (a left knee is a mirrored right knee: the decision
    averages both, which steadies it against where the scan's grid falls).

    ``detectors``: the localizer's frontal and lateral knee detectors. A vector is
    [best frontal score, best lateral score, HOG of the best frontal window, of its
    2x context, of the best lateral window, of the whole image (padded square)].
    """
    img = scope_image(image)
    return np.stack(
        [_features(img, detectors), _features(np.ascontiguousarray(img[:, ::-1]), detectors)]
    )


def _features(img: np.ndarray, detectors: tuple[KneeLocalizer, KneeLocalizer]) -> np.ndarray:
    levels = stretch_levels(img)
    (s_ap, ax, ay, aside), (s_lat, lx, ly, lside) = _best_windows(img, detectors)
    square, _ = pad_to_square(img)
    n = square.shape[0]
    parts = [
        np.array([s_ap, s_lat], np.float32),
        patch_features(img, levels, ax, ay, aside, replicate=True),
        patch_features(img, levels, ax, ay, 2 * aside, replicate=True),
        patch_features(img, levels, lx, ly, lside, replicate=True),
        patch_features(square, levels, n / 2, n / 2, n),
    ]
    return np.concatenate(parts).astype(np.float32)


# --------------------------------------------------------------------------- model


def scope_weights_path(weights: str | os.PathLike[str] | None = None) -> Path:
    """The scope weights file: ``weights`` if given, else the one shipped in the package."""
    return Path(weights) if weights is not None else SCOPE_WEIGHTS_FILE


@dataclass(frozen=True, kw_only=True)
class ScopeModel:
    """A trained out-of-scope decision (load with :meth:`load`)."""

    coef: np.ndarray  # (3, FEATURES) float32, on standardised features
    intercept: np.ndarray  # (3,)
    mean: np.ndarray  # (FEATURES,) standardisation
    scale: np.ndarray  # (FEATURES,)
    localizer_sha256: str  # the localizer weights the features were computed with
    info: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, weights: str | os.PathLike[str] | None = None) -> ScopeModel:
        """The model in ``weights`` (default: the shipped one), cached per path and mtime."""
        path = scope_weights_path(weights)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no out-of-scope model; train one with "
                "`python -m pipeline.preprocess.scope_cli --data DIR --out PATH`"
            ) from None
        return _load_cached(str(path), mtime)

    def detectors(self) -> tuple[KneeLocalizer, KneeLocalizer]:
        """The localizer's frontal and lateral detectors the features need (the shipped
        ones; they must be the ones this model was trained with)."""
        if _weights_sha256(str(WEIGHTS_FILE)) != self.localizer_sha256:
            raise ValueError(
                f"{WEIGHTS_FILE}: the knee localizer's weights changed since the out-of-scope "
                "model was trained; retrain it with `python -m pipeline.preprocess.scope_cli`"
            )
        return KneeLocalizer.load(view="ap"), KneeLocalizer.load(view="lat")

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Probabilities of :data:`SCOPES` (..., 3) for feature vectors (..., FEATURES)."""
        x = (np.asarray(features, np.float32) - self.mean) / self.scale
        z = x @ self.coef.T + self.intercept
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def decide(self, image: np.ndarray) -> ScopeDecision:
        """The decision for a cleaned image (:func:`scope_input`): the mean probabilities
        of the image and of its mirror image."""
        features = scope_features(image, self.detectors())  # (2, FEATURES)
        return decision_of(self.probabilities(features).mean(axis=0))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as a small compressed .npz, atomically."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            format_version=np.int64(SCOPE_FORMAT_VERSION),
            scopes=np.asarray(SCOPES),
            coef=self.coef.astype(np.float32),
            intercept=self.intercept.astype(np.float32),
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            localizer_sha256=np.asarray(self.localizer_sha256),
            info=np.frombuffer(json.dumps(dict(self.info), sort_keys=True).encode(), np.uint8),
        )
        return atomic_write_bytes(path, buf.getvalue())


def decision_of(probabilities: np.ndarray) -> ScopeDecision:
    """The decision (the most probable of :data:`SCOPES`) and its probability."""
    p = [float(v) for v in probabilities]
    k = int(np.argmax(p))
    return ScopeDecision(scope=SCOPES[k], score=p[k], probabilities=tuple(p))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4)
def _weights_sha256(path: str) -> str:
    return sha256_file(Path(path))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> ScopeModel:
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format_version"])
        if version != SCOPE_FORMAT_VERSION or tuple(str(s) for s in z["scopes"]) != SCOPES:
            raise ValueError(
                f"{path}: out-of-scope weights of format {version}, expected "
                f"{SCOPE_FORMAT_VERSION} with classes {SCOPES}; retrain them"
            )
        if z["coef"].shape != (len(SCOPES), FEATURES):
            raise ValueError(f"{path}: weights for {z['coef'].shape[1]} features, not {FEATURES}")
        return ScopeModel(
            coef=z["coef"],
            intercept=z["intercept"],
            mean=z["mean"],
            scale=z["scale"],
            localizer_sha256=str(z["localizer_sha256"]),
            info=json.loads(bytes(z["info"]).decode() or "{}"),
        )


__all__ = [
    "FEATURES",
    "SCOPES",
    "SCOPE_NAMES",
    "SCOPE_SIZE",
    "SCOPE_WEIGHTS_FILE",
    "ScopeDecision",
    "ScopeModel",
    "decide_image",
    "decide_preview",
    "decide_small",
    "decision_of",
    "scope_features",
    "scope_image",
    "scope_input",
    "scope_weights_path",
]
