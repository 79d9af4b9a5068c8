"""Patient-level bootstrap of the validation and test metrics: how much of a score is noise.

The search ranks configurations by a validation metric measured on a few hundred crops
at most; one crop more or less moves it by a few hundredths. Resampling the validation
patients (crops of one patient are correlated, so they are drawn together) gives each
metric's standard error, which every per-epoch report carries as ``val/<metric>_sem``
and which the search hands to Ax with the mean, so its model of the objective knows
what is noise. The final report draws its 95% intervals from the same resamples.

The decision (threshold, 7-class rule) is held fixed across resamples, as it is on a
test set: only the sample varies. Metrics follow the definitions of
:func:`pipeline.train.metrics.classification_metrics`; they are recomputed here with
numpy because a bootstrap needs hundreds of them per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from pipeline.train.metrics import ECE_BINS, METRIC_KEYS, type_predictions
from pipeline.train.tasks import Task

#: the metrics a bootstrap draws (``val/<name>_sem`` in every per-epoch report)
#: every score of :data:`METRIC_KEYS` (not the threshold, which is held fixed, nor the
#: counts) and the 7-class kappa
_COUNTS = ("threshold", "n", "prevalence")
BOOTSTRAP_METRICS = (*(k for k in METRIC_KEYS if k not in _COUNTS), "kappa")
#: resamples per validation epoch (standard errors) and for a final report (intervals)
SEM_RESAMPLES = 200
CI_RESAMPLES = 1000


def bootstrap_keys(task: Task) -> tuple[str, ...]:
    """The ``BOOTSTRAP_METRICS`` that ``classification_metrics`` reports for ``task``."""
    return tuple(k for k in BOOTSTRAP_METRICS if task.is_multiclass or k != "kappa")


def patient_resamples(
    groups: Sequence[str] | None, n_items: int, *, n: int, seed: int = 0
) -> list[np.ndarray]:
    """``n`` bootstrap samples of item indices, drawing whole patients with replacement
    (``groups``: the patient of each item; ``None``: every item its own patient)."""
    keys = list(groups) if groups is not None else [str(i) for i in range(n_items)]
    where: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        where.setdefault(str(key), []).append(i)
    members = [np.asarray(where[k], dtype=np.int64) for k in sorted(where)]
    rng = np.random.default_rng(seed)
    draws = (rng.integers(0, len(members), size=len(members)) for _ in range(n))
    return [np.concatenate([members[c] for c in chosen]) for chosen in draws]


def bootstrap_draws(
    probs: torch.Tensor,
    targets: torch.Tensor,
    groups: Sequence[str] | None,
    *,
    task: Task,
    threshold: float,
    n: int = SEM_RESAMPLES,
    seed: int = 0,
    type_decision: str = "argmax",
    type_prior: torch.Tensor | None = None,
    resamples: Sequence[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Patient-level resamples of every metric in ``bootstrap_keys(task)``.

    probs (N, C) in the task's class order, targets (N,) class indices, ``groups`` (N,)
    the patient of each crop (``None``: every crop its own patient). ``resamples``:
    given index samples (to score two models on the same ones), else ``n`` drawn with
    ``seed``. Returns name -> (n,) values, NaN where a resample leaves the metric
    undefined (one class only).
    """
    names = bootstrap_keys(task)
    if len(targets) == 0 or (resamples is None and n <= 0):
        return {k: np.full(0, np.nan) for k in names}
    score, y, kind, probs_np, classes = _decided(
        probs, targets, task, threshold, type_decision, type_prior
    )
    if resamples is None:
        resamples = patient_resamples(groups, len(y), n=n, seed=seed)
    draws = {k: np.full(len(resamples), np.nan) for k in names}
    for r, idx in enumerate(resamples):
        values = sample_metrics(
            score[idx], y[idx], kind[idx], probs_np[idx], threshold=threshold, classes=classes
        )
        for k in names:
            draws[k][r] = values[k]
    return draws


def paired_difference(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    targets: torch.Tensor,
    groups: Sequence[str] | None,
    *,
    task: Task,
    metric: str,
    n: int = CI_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """``metric(b) - metric(a)`` on the whole sample and its standard error over paired
    patient resamples (both models scored on the same resamples).

    ``a`` and ``b``: ``{"probs": (N, C), "threshold": float, "type_decision": str,
    "type_prior": (C,) | None}`` of each model on the same items.
    """
    resamples = patient_resamples(groups, len(targets), n=n, seed=seed)
    whole = [np.arange(len(targets))]
    diffs, point = [], []
    for sample in (whole, resamples):
        va, vb = (
            bootstrap_draws(
                m["probs"],
                targets,
                groups,
                task=task,
                threshold=float(m["threshold"]),
                type_decision=m.get("type_decision", "argmax"),
                type_prior=m.get("type_prior"),
                resamples=sample,
            )[metric]
            for m in (a, b)
        )
        (point if sample is whole else diffs).append(vb - va)
    return float(point[0][0]), _spread(diffs[0])


def _decided(
    probs: torch.Tensor,
    targets: torch.Tensor,
    task: Task,
    threshold: float,
    type_decision: str,
    type_prior: torch.Tensor | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(score, y, decided class, probs, classes) as numpy, the decision held fixed."""
    probs_t = probs.detach().float().cpu()
    y = targets.detach().long().cpu().numpy()
    score = task.fracture_probability(probs_t).numpy()  # (N,)
    if task.is_multiclass:
        kind = type_predictions(
            probs_t, threshold=float(threshold), decision=type_decision, prior=type_prior
        ).numpy()
        return score, y, kind, probs_t.numpy(), task.num_classes
    kind = (score >= threshold).astype(np.int64)
    return score, (y > 0).astype(np.int64), kind, probs_t.numpy(), 2


def bootstrap_sem(
    probs: torch.Tensor, targets: torch.Tensor, groups: Sequence[str] | None, **kwargs: Any
) -> dict[str, float]:
    """Standard error of every metric: the spread of its patient-level resamples."""
    return {k: _spread(v) for k, v in bootstrap_draws(probs, targets, groups, **kwargs).items()}


def _spread(draws: np.ndarray) -> float:
    """Standard deviation of the defined draws; NaN with fewer than 10 of them."""
    v = draws[np.isfinite(draws)]
    return float(np.std(v, ddof=1)) if len(v) >= 10 else float("nan")


def bootstrap_ci(
    probs: torch.Tensor,
    targets: torch.Tensor,
    groups: Sequence[str] | None,
    *,
    alpha: float = 0.05,
    n: int = CI_RESAMPLES,
    **kwargs: Any,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals (``1 - alpha``) of every metric over patient-level resamples.

    A metric undefined in more than 90% of the resamples gets no interval.
    """
    out = {}
    for k, v in bootstrap_draws(probs, targets, groups, n=n, **kwargs).items():
        v = v[np.isfinite(v)]
        if len(v) >= max(10, n // 10):
            out[k] = (float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2)))
    return out


# ----------------------------------------------------------------------------- one sample


def sample_metrics(
    score: np.ndarray,
    y: np.ndarray,
    kind: np.ndarray,
    probs: np.ndarray,
    *,
    threshold: float,
    classes: int,
) -> dict[str, float]:
    """Every ``BOOTSTRAP_METRICS`` value of one sample.

    score (N,) P(fracture); y (N,) class indices (binary: 0/1); kind (N,) the decided
    class; probs (N, C) for the calibration error.
    """
    positive = y > 0
    pred = score >= threshold
    tp = float(np.sum(pred & positive))
    fp = float(np.sum(pred & ~positive))
    fn = float(np.sum(~pred & positive))
    tn = float(np.sum(~pred & ~positive))
    nan = float("nan")
    sens = tp / (tp + fn) if tp + fn else nan
    spec = tn / (tn + fp) if tn + fp else nan
    both = bool(positive.any()) and bool((~positive).any())
    return {
        "auroc": _auroc(score, positive) if both else nan,
        "ap": _average_precision(score, positive) if both else nan,
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "f1": _fbeta(tp, fp, fn, 1.0),
        "f2": _fbeta(tp, fp, fn, 2.0),
        "macro_f1": _macro_f1(kind, y, classes),
        "accuracy": float(np.mean(kind == y)),
        "kappa": _quadratic_kappa(kind, y, classes),
        "ece": _ece(probs, y),
    }


def _fbeta(tp: float, fp: float, fn: float, beta: float) -> float:
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return (1 + b2) * tp / den if den else 0.0


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney U / (n1 n0), ties counted half."""
    ranks = rankdata(score)
    n1 = float(positive.sum())
    n0 = float(len(score) - n1)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision, ties grouped."""
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order].astype(np.float64)
    tp = np.cumsum(p)
    fp = np.cumsum(1.0 - p)
    last = np.ones(len(s), dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


def _confusion(pred: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)


def _macro_f1(pred: np.ndarray, y: np.ndarray, classes: int) -> float:
    """Mean F1 over the classes that occur in the targets or the predictions."""
    cm = _confusion(pred, y, classes).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    if not present.any():
        return float("nan")
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    return float(f1[present].mean())


def _quadratic_kappa(pred: np.ndarray, y: np.ndarray, classes: int) -> float:
    cm = _confusion(pred, y, classes).astype(np.float64)
    n = cm.sum()
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    i, j = np.indices((classes, classes))
    w = (i - j) ** 2
    den = float((w * expected).sum())
    return float(1.0 - (w * cm).sum() / den) if den else float("nan")


def _ece(probs: np.ndarray, y: np.ndarray) -> float:
    """Top-label expected calibration error with ``ECE_BINS`` equal-width bins (a
    confidence of exactly 1 in a bin of its own, as torchmetrics counts it)."""
    conf = probs.max(axis=1).astype(np.float32)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = torch.linspace(0.0, 1.0, ECE_BINS + 1).numpy()  # torchmetrics' float32 edges
    which = np.searchsorted(edges, conf, side="right") - 1
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += abs(correct[inside].mean() - float(conf[inside].mean())) * inside.mean()
    return float(total)
