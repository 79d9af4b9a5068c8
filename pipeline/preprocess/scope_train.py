"""Train and evaluate the out-of-scope decision on phantom folders (``truth.jsonl``).

Each image of a folder is decoded, cleaned as the default chain cleans it (the
``clean`` step), and described by :func:`~pipeline.preprocess.scope.scope_features`
on the cleaned analysis copy, the image the cache build decides on. Its class comes
from the phantom's truth: a knee in a frontal view is ``frontal_knee``, a knee in
any other view (lateral, skyline) ``other_knee_view``, anything else ``not_knee``.
A multinomial logistic regression (scikit-learn, balanced classes) on standardised
features is the model.

Make the training phantoms with every body part (``other_parts``), so the model has
seen more than hands and ankles, and in the clinical style too (tight crops, two views
side by side, shutters, text: what real exports look like); the commands are in
:mod:`pipeline.preprocess.scope_cli`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from pipeline.dicom import read_radiograph
from pipeline.io import sha256_file
from pipeline.preprocess.arrays import shrink
from pipeline.preprocess.background import BackgroundOptions
from pipeline.preprocess.chain import RadiographLike
from pipeline.preprocess.localizer import WEIGHTS_FILE, KneeLocalizer
from pipeline.preprocess.localizer_train import truth_records
from pipeline.preprocess.scope import SCOPES, ScopeModel, decision_of, scope_features, scope_input


def truth_scope(record: dict[str, Any]) -> str:
    """The class of one ``truth.jsonl`` record (one of :data:`~pipeline.preprocess.scope.SCOPES`)."""
    if str(record.get("body_part", "KNEE")).upper() != "KNEE":
        return "not_knee"
    return "frontal_knee" if str(record.get("view", "")).upper() == "AP" else "other_knee_view"


def cleaned(radiograph: RadiographLike) -> np.ndarray:
    """The image the decision reads (:func:`~pipeline.preprocess.scope.scope_input`)."""
    small, _ = shrink(np.asarray(radiograph.image, np.float32), BackgroundOptions().analysis_size)
    return scope_input(small)


def scope_samples(
    folder: str | os.PathLike[str],
    *,
    limit: int | None = None,
    reader: Callable[..., RadiographLike] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features (N, 2, F): each image and its mirror, class index (N,), files) of a
    phantom folder's images."""
    reader = reader or read_radiograph
    detectors = (KneeLocalizer.load(view="ap"), KneeLocalizer.load(view="lat"))
    records = truth_records(folder)[:limit]
    x, y, files = [], [], []
    for i, rec in enumerate(records):
        x.append(scope_features(cleaned(reader(str(Path(folder) / rec["file"]))), detectors))
        y.append(SCOPES.index(truth_scope(rec)))
        files.append(rec["file"])
        if progress is not None and (i + 1) % 100 == 0:
            progress(f"{Path(folder).name}: {i + 1}/{len(records)} images")
    return np.asarray(x, np.float32), np.asarray(y, np.int64), files


def fit_scope(
    x: np.ndarray, y: np.ndarray, *, c: float = 0.03, info: dict[str, Any] | None = None
) -> ScopeModel:
    """The model fitted on features ``x`` (N, 2, F) and class indices ``y`` (N,): an image
    and its mirror are two samples of its class."""
    if len(set(y.tolist())) < len(SCOPES):
        missing = [SCOPES[k] for k in range(len(SCOPES)) if k not in set(y.tolist())]
        raise ValueError(
            f"no training image of {', '.join(missing)}: make the phantom with other_parts"
        )
    counts = {s: int((y == k).sum()) for k, s in enumerate(SCOPES)}
    x = x.reshape(-1, x.shape[-1])
    y = np.repeat(y, len(x) // len(y))
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + np.float32(1e-3)
    lr = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    lr.fit((x - mean) / scale, y)
    return ScopeModel(
        coef=lr.coef_.astype(np.float32),
        intercept=lr.intercept_.astype(np.float32),
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        localizer_sha256=sha256_file(WEIGHTS_FILE),
        info={"images": counts, "C": c, **(info or {})},
    )


def train_scope(
    folders: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    c: float = 0.03,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ScopeModel:
    """Train on phantom folders; write the weights to ``out`` when given."""
    folders = [Path(f) for f in folders]
    parts = [scope_samples(f, limit=limit, progress=progress) for f in folders]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    model = fit_scope(x, y, c=c, info={"data": [f.name for f in folders]})
    if out is not None:
        model.save(out)
    return model


def evaluate_scope(
    folder: str | os.PathLike[str],
    model: ScopeModel | None = None,
    *,
    limit: int | None = None,
    samples: tuple[np.ndarray, np.ndarray, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Accuracy, confusion matrix (rows: truth, columns: decision, in SCOPES order) and
    the wrong decisions of a held-out phantom folder (``samples``: its features, if made)."""
    model = model or ScopeModel.load()
    x, y, files = samples if samples is not None else scope_samples(folder, limit=limit)
    probs = model.probabilities(x).mean(axis=1)  # (N, 3): each image with its mirror
    pred = probs.argmax(axis=1)
    confusion = np.zeros((len(SCOPES), len(SCOPES)), np.int64)
    np.add.at(confusion, (y, pred), 1)
    wrong = [
        {"file": f, "truth": SCOPES[t], "decision": decision_of(p).reason}
        for f, t, k, p in zip(files, y, pred, probs, strict=True)
        if t != k
    ]
    frontal = y == 0
    return {
        "images": len(y),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "confusion": confusion.tolist(),
        "frontal_kept": float((pred[frontal] == 0).mean()) if frontal.any() else float("nan"),
        "out_of_scope_rejected": float((pred[~frontal] != 0).mean())
        if (~frontal).any()
        else float("nan"),
        "wrong": wrong,
    }


__all__ = [
    "cleaned",
    "evaluate_scope",
    "fit_scope",
    "scope_samples",
    "train_scope",
    "truth_scope",
]
