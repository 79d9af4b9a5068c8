"""Validation and test metrics (torchmetrics), with the decision threshold chosen on validation.

Fracture-level metrics (AUROC, AP, sensitivity, specificity, F1, F2, balanced
accuracy) score P(fracture) = 1 - P(class 0) for every task; the 7-class tasks add
macro-F1, quadratic-weighted kappa and balanced accuracy over the Schatzker types.
The threshold that turns P(fracture) into a decision is chosen on the validation set
by ``threshold_metric`` (best F2 by default, recall weighted over precision as missed
fractures cost more) and then passed unchanged to the test set.

How a 7-class prediction becomes one class is ``type_decision`` (:func:`type_predictions`):

- ``"argmax"``: the most probable of the 7 classes;
- ``"threshold"``: fracture when P(fracture) >= the validation threshold (the same
  decision the fracture-level metrics score), then the most probable type;
- ``"balanced"``: as ``"threshold"``, then the type maximising P(type) / prior(type),
  the post-hoc logit adjustment of Menon et al. (2021) with the class shares the
  model was trained on (``type_prior``). It trades the frequent types' precision for
  the rare types' recall, which is what a macro average over types rewards.
"""

from __future__ import annotations

import math

import torch

from pipeline.registry import check_choice
from pipeline.train.tasks import Task

THRESHOLD_METRICS = ("f2", "f1", "balanced_accuracy", "youden")
TYPE_DECISIONS = ("argmax", "threshold", "balanced")
ECE_BINS = 15
#: keys of :func:`classification_metrics` for every task, and those 7-class tasks add
METRIC_KEYS = (
    "auroc",
    "ap",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "precision",
    "f1",
    "f2",
    "macro_f1",
    "accuracy",
    "ece",
    "threshold",
    "n",
    "prevalence",
)
TYPE_METRIC_KEYS = ("kappa", "auroc_types", "type_balanced_accuracy")


def metric_keys(task: Task) -> tuple[str, ...]:
    """The keys :func:`classification_metrics` returns for ``task``."""
    return METRIC_KEYS + (TYPE_METRIC_KEYS if task.is_multiclass else ())


def _fbeta(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, beta: float) -> torch.Tensor:
    b2 = beta * beta
    return ((1 + b2) * tp) / ((1 + b2) * tp + b2 * fn + fp).clamp_min(1e-12)


def choose_threshold(scores: torch.Tensor, positives: torch.Tensor, metric: str = "f2") -> float:
    """Threshold on ``scores`` (N,) maximising ``metric`` for ``positives`` (N,) bool.

    Candidates are the distinct scores (predict positive when score >= t); ties go to
    the highest threshold. Without both classes the metric is undefined: 0.5.
    """
    check_choice("threshold metric", metric, THRESHOLD_METRICS)
    scores = scores.detach().double().flatten()
    positives = positives.detach().bool().flatten()
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = torch.argsort(scores, descending=True, stable=True)
    s, p = scores[order], positives[order].double()
    tp = torch.cumsum(p, 0)
    fp = torch.cumsum(1.0 - p, 0)
    last = torch.ones_like(s, dtype=torch.bool)  # last index of each run of equal scores
    last[:-1] = s[1:] != s[:-1]
    tp, fp, s = tp[last], fp[last], s[last]
    fn = n_pos - tp
    tpr, tnr = tp / n_pos, 1.0 - fp / n_neg
    value = {
        "f2": lambda: _fbeta(tp, fp, fn, 2.0),
        "f1": lambda: _fbeta(tp, fp, fn, 1.0),
        "balanced_accuracy": lambda: (tpr + tnr) / 2,
        "youden": lambda: tpr + tnr - 1,
    }[metric]()
    return float(s[int(torch.argmax(value))])


def type_predictions(
    probs: torch.Tensor,
    *,
    threshold: float,
    decision: str = "argmax",
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class indices (N,) from class probabilities (N, C), class 0 = no fracture.

    ``decision`` is one of ``TYPE_DECISIONS`` (module docstring); ``threshold`` applies
    to P(fracture) = 1 - P(class 0); ``prior`` (C,) are the class shares the model was
    trained on (``"balanced"`` only; without it the rule is ``"threshold"``).
    """
    check_choice("type decision", decision, TYPE_DECISIONS)
    probs = probs.detach().float()
    if decision == "argmax":
        return probs.argmax(dim=1)
    scores = torch.log(probs[:, 1:].clamp_min(1e-12))  # (N, C-1) type scores
    if decision == "balanced" and prior is not None:
        prior = torch.as_tensor(prior, dtype=torch.float32, device=probs.device)
        scores = scores - torch.log(prior[1:].clamp_min(1e-12))[None, :]
    kind = scores.argmax(dim=1) + 1  # (N,) 1..C-1
    fracture = (1.0 - probs[:, 0]) >= threshold
    return torch.where(fracture, kind, torch.zeros_like(kind))


def _safe(fn, *args, **kwargs) -> float:
    try:
        v = fn(*args, **kwargs)
    except (ValueError, RuntimeError):
        return float("nan")
    return float(v)


def classification_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    task: Task,
    threshold: float | None = None,
    threshold_metric: str = "f2",
    type_decision: str = "argmax",
    type_prior: torch.Tensor | None = None,
) -> dict[str, float]:
    """Metrics of class probabilities (N, C) against class indices (N,) of ``task``.

    With ``threshold`` None the threshold is chosen here (validation); pass the
    validation threshold when scoring a test set. ``type_decision`` and ``type_prior``
    turn 7-class probabilities into one class (:func:`type_predictions`). Keys: ``auroc``, ``ap``,
    ``sensitivity``, ``specificity``, ``balanced_accuracy``, ``precision``, ``f1``,
    ``f2``, ``macro_f1``, ``accuracy``, ``ece``, ``threshold``, ``n``, ``prevalence``;
    for 7-class tasks also ``kappa``, ``auroc_types`` and ``type_balanced_accuracy``.
    """
    import torchmetrics.functional.classification as tmc  # heavy import, only when scoring

    probs = probs.detach().float().cpu()
    targets = targets.detach().long().cpu()
    if probs.dim() != 2 or probs.shape[1] != task.num_classes or len(probs) != len(targets):
        raise ValueError(
            f"probs {tuple(probs.shape)} and targets {tuple(targets.shape)} do not fit task "
            f"{task.name!r} ({task.num_classes} classes)"
        )
    score = task.fracture_probability(probs)  # (N,)
    positive = targets > 0  # (N,)
    if threshold is None:
        threshold = choose_threshold(score, positive, threshold_metric)
    pred = score >= threshold
    both = bool(positive.any()) and bool((~positive).any())
    tp = float((pred & positive).sum())
    fp = float((pred & ~positive).sum())
    fn = float((~pred & positive).sum())
    tn = float((~pred & ~positive).sum())
    nan = float("nan")
    sens = tp / (tp + fn) if tp + fn else nan
    spec = tn / (tn + fp) if tn + fp else nan
    pos_i = positive.long()
    out = {
        "auroc": _safe(tmc.binary_auroc, score, pos_i) if both else nan,
        "ap": _safe(tmc.binary_average_precision, score, pos_i) if both else nan,
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "f1": _safe(tmc.binary_fbeta_score, pred.long(), pos_i, beta=1.0),
        "f2": _safe(tmc.binary_fbeta_score, pred.long(), pos_i, beta=2.0),
        "ece": _safe(
            tmc.multiclass_calibration_error, probs, targets, task.num_classes, n_bins=ECE_BINS
        ),
        "threshold": float(threshold),
        "n": float(len(targets)),
        "prevalence": float(positive.float().mean()) if len(targets) else nan,
    }
    if task.is_multiclass:
        kind = type_predictions(
            probs, threshold=float(threshold), decision=type_decision, prior=type_prior
        )
        c = task.num_classes
        out["macro_f1"] = _safe(tmc.multiclass_f1_score, kind, targets, c, average="macro")
        out["accuracy"] = _safe(tmc.multiclass_accuracy, kind, targets, c, average="micro")
        out["kappa"] = _safe(tmc.multiclass_cohen_kappa, kind, targets, c, weights="quadratic")
        out["type_balanced_accuracy"] = _safe(
            tmc.multiclass_recall, kind, targets, c, average="macro"
        )
        present = torch.unique(targets)
        out["auroc_types"] = (
            _safe(tmc.multiclass_auroc, probs, targets, c, average="macro")
            if len(present) == c
            else nan
        )
    else:
        out["macro_f1"] = _safe(tmc.multiclass_f1_score, pred.long(), pos_i, 2, average="macro")
        out["accuracy"] = (tp + tn) / len(targets) if len(targets) else nan
    return {k: (float(v) if not isinstance(v, float) else v) for k, v in out.items()}


def is_better(value: float, best: float | None) -> bool:
    """Higher is better; NaN never improves."""
    if math.isnan(value):
        return False
    return best is None or math.isnan(best) or value > best
