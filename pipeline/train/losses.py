"""Supervised losses for imbalanced classes, registered by the names the YAML spaces use.

Every loss is built from the class counts of the labeled training set, in the task's
class order (``Task.class_counts``), and takes ``logits`` (B, C) with either hard
targets (B,) int64 or soft targets (B, C) (MixMatch mixes labels), so every method
can use every loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.registry import Registry
from pipeline.train.tasks import class_priors

LOSSES: Registry[type[Loss]] = Registry("loss")


def list_losses() -> list[str]:
    return LOSSES.names()


def as_probabilities(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels (B,) -> one-hot (B, C); soft targets (B, C) pass through as float."""
    if target.dim() == 1:
        return F.one_hot(target.long(), num_classes).float()
    return target.float()


class Loss(nn.Module):
    """Base: ``forward(logits (B, C), target (B,) or (B, C)) -> scalar``.

    ``prior_bias`` says whether the classifier's bias should start at the log priors;
    losses that add the priors themselves (logit adjustment) want a zero bias.
    """

    prior_bias = True

    def __init__(self, counts: torch.Tensor, **options: float):
        super().__init__()
        counts = torch.as_tensor(counts, dtype=torch.float32)
        self.register_buffer("counts", counts)
        self.num_classes = int(counts.numel())
        self.options = dict(options)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits.float(), as_probabilities(target, self.num_classes)).mean()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy with probability targets: -sum_c t_c log softmax(z)_c. (B,)"""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


class _Weighted(Loss):
    """Cross-entropy with per-class weights; the batch mean is weighted like torch's CE."""

    def class_weights(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = as_probabilities(target, self.num_classes)  # (B, C)
        w = (t * self.class_weights().to(t.device)).sum(dim=1)  # (B,)
        ce = soft_cross_entropy(logits.float(), t)
        return (w * ce).sum() / w.sum().clamp_min(1e-12)


@LOSSES.register("ce")
class CrossEntropy(Loss):
    """Plain cross-entropy."""

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, target)


@LOSSES.register("weighted_ce")
class WeightedCrossEntropy(_Weighted):
    """Cross-entropy weighted by inverse class frequency, N / (C n_c)."""

    def class_weights(self) -> torch.Tensor:
        n = self.counts.clamp_min(1.0)
        return n.sum() / (self.num_classes * n)


@LOSSES.register("class_balanced")
class ClassBalanced(_Weighted):
    """Cross-entropy weighted by the effective number of samples (Cui et al., 2019).

    w_c = (1 - beta) / (1 - beta ** n_c), normalised so the weights sum to C.
    """

    def class_weights(self) -> torch.Tensor:
        beta = float(self.options.get("cb_beta", 0.999))
        n = self.counts.clamp_min(1.0)
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta), n))
        return w * self.num_classes / w.sum()


@LOSSES.register("focal")
class Focal(Loss):
    """Focal loss (Lin et al., 2017): -sum_c t_c (1 - p_c) ** gamma log p_c."""

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        gamma = float(self.options.get("focal_gamma", 2.0))
        log_p = F.log_softmax(logits, dim=1)
        return -(target * (1.0 - log_p.exp()).pow(gamma) * log_p).sum(dim=1)


@LOSSES.register("logit_adjusted")
class LogitAdjusted(Loss):
    """Logit-adjusted cross-entropy (Menon et al., 2021): CE(z + tau log prior), tau = 1.

    The model's raw logits then estimate balanced posteriors, so the bias starts at 0.
    """

    prior_bias = False

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_prior = torch.log(class_priors(self.counts)).to(logits.device)  # (C,)
        return soft_cross_entropy(logits + log_prior, target)


@LOSSES.register("ldam")
class LDAM(Loss):
    """Label-distribution-aware margin loss (Cao et al., 2019).

    The true class's logit is lowered by m_c proportional to n_c ** -1/4, the largest
    margin being 0.5. The head is an ordinary linear layer, so the scale s is 1.
    """

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.counts.clamp_min(1.0).pow(-0.25)
        m = (m * (0.5 / m.max())).to(logits.device)  # (C,)
        return soft_cross_entropy(logits - target * m, target)


def build_loss(
    name: str, counts: torch.Tensor, *, focal_gamma: float = 2.0, cb_beta: float = 0.999
) -> Loss:
    """The loss ``name`` for labeled-set class ``counts`` (C,) in the task's class order."""
    return LOSSES.get(name)(counts, focal_gamma=focal_gamma, cb_beta=cb_beta)
