"""Training methods: the math of each in one pure function, the step in one small class.

Pure functions use the papers' names and return ``(loss, monitors)``:

- ``fixmatch_loss`` (Sohn et al., 2020), with optional ``distribution_alignment``
  (Berthelot et al., ReMixMatch, 2020), which matters under class imbalance;
- ``sharpen``, ``mixup``, ``linear_rampup`` and ``mixmatch_loss``
  (Berthelot et al., MixMatch, 2019).

``METHODS`` maps the names the search spaces use to ``Method`` classes. A method
only supplies the math of one step (augment, forward, pure loss); the shared loop
(``pipeline.train.loop``) owns data, optimisation, EMA, evaluation and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.registry import Registry
from pipeline.train.augment import strong_augment, weak_augment
from pipeline.train.losses import soft_cross_entropy

Monitors = dict[str, torch.Tensor]

# ----------------------------------------------------------------------------- pure math


def distribution_alignment(
    probs_u: torch.Tensor, p_model: torch.Tensor, p_target: torch.Tensor
) -> torch.Tensor:
    """Scale guesses (B, C) by p_target / p_model (C,) and renormalise (ReMixMatch)."""
    aligned = probs_u * (p_target / p_model.clamp_min(1e-6))[None, :]
    return aligned / aligned.sum(dim=1, keepdim=True)


def _nan() -> torch.Tensor:
    return torch.tensor(float("nan"))


def pseudo_label_accuracy(
    pseudo: torch.Tensor, y_u: torch.Tensor | None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of pseudo-labels equal to the true label, among samples whose label is known
    (``y_u >= 0``) and, when ``mask`` is given, that pass it. NaN when none qualify."""
    if y_u is None:
        return _nan()
    keep = y_u >= 0
    if mask is not None:
        keep = keep & (mask > 0)
    if not bool(keep.any()):
        return _nan()
    return (pseudo[keep] == y_u[keep]).float().mean()


def fixmatch_loss(
    logits_x: torch.Tensor,
    y: torch.Tensor,
    logits_u_weak: torch.Tensor,
    logits_u_strong: torch.Tensor,
    threshold: float = 0.95,
    lambda_u: float = 1.0,
    *,
    loss_x: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    p_model: torch.Tensor | None = None,
    p_target: torch.Tensor | None = None,
    y_u: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Monitors]:
    """FixMatch: ``loss = l_x + lambda_u * mean(1[max q >= threshold] * H(q_hat, p(strong)))``.

    logits_x (B, C), y (B,); logits_u_weak / logits_u_strong (mu B, C). The weak
    logits are treated as constants. ``loss_x`` replaces plain cross-entropy for the
    labeled term (imbalance losses). With ``p_model`` and ``p_target`` (C,), the
    weak-view probabilities are distribution-aligned before thresholding. ``y_u``
    (mu B,), true labels of the unlabeled batch where known (-1 otherwise), only
    feeds the ``pseudo_acc`` monitor.

    Monitors: ``loss_x``, ``loss_u``, ``mask_rate`` (share of unlabeled samples above
    the threshold) and ``pseudo_acc`` (accuracy of the masked pseudo-labels).
    """
    l_x = loss_x(logits_x, y) if loss_x is not None else F.cross_entropy(logits_x.float(), y)
    q = torch.softmax(logits_u_weak.detach().float(), dim=1)  # (mu B, C)
    if p_model is not None and p_target is not None:
        q = distribution_alignment(q, p_model, p_target)
    max_q, q_hat = q.max(dim=1)
    mask = (max_q >= threshold).float()
    l_u = (F.cross_entropy(logits_u_strong.float(), q_hat, reduction="none") * mask).mean()
    loss = l_x + lambda_u * l_u
    monitors = {
        "loss_x": l_x.detach(),
        "loss_u": l_u.detach(),
        "mask_rate": mask.mean(),
        "pseudo_acc": pseudo_label_accuracy(q_hat, y_u, mask),
    }
    return loss, monitors


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    """MixMatch's temperature sharpening: p ** (1/T), renormalised. (B, C)"""
    p = p.pow(1.0 / T)
    return p / p.sum(dim=1, keepdim=True)


def mixup(
    x: torch.Tensor, p: torch.Tensor, lam: float, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp with partner ``index`` (N,): lam * a + (1 - lam) * a[index] for images and targets.

    MixMatch passes ``lam' = max(lam, 1 - lam)`` so each mixed sample stays closer to
    its own origin (labeled stays mostly labeled).
    """
    index = index.to(x.device)
    return lam * x + (1.0 - lam) * x[index], lam * p + (1.0 - lam) * p[index]


def linear_rampup(progress: float, length: float) -> float:
    """Weight that grows linearly from 0 to 1 over ``length`` epochs (1 when length <= 0)."""
    if length <= 0:
        return 1.0
    return float(np.clip(progress / length, 0.0, 1.0))


def mixmatch_loss(
    logits_x: torch.Tensor,
    targets_x: torch.Tensor,
    logits_u: torch.Tensor,
    targets_u: torch.Tensor,
    lambda_u: float,
    rampup: float,
    *,
    loss_x: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, Monitors]:
    """MixMatch: ``l_x + lambda_u * rampup * ||softmax(logits_u) - targets_u||^2 / C``.

    logits_x (B, C) with mixed soft targets_x (B, C); logits_u (K B_u, C) with mixed
    guessed targets_u (K B_u, C). Monitors: ``loss_x``, ``loss_u``, ``rampup``.
    """
    l_x = (
        loss_x(logits_x, targets_x)
        if loss_x is not None
        else soft_cross_entropy(logits_x.float(), targets_x).mean()
    )
    l_u = F.mse_loss(torch.softmax(logits_u.float(), dim=1), targets_u.float())
    loss = l_x + lambda_u * rampup * l_u
    monitors = {
        "loss_x": l_x.detach(),
        "loss_u": l_u.detach(),
        "rampup": torch.tensor(float(rampup)),
    }
    return loss, monitors


# ----------------------------------------------------------------------------- methods


@dataclass
class StepContext:
    """What a method's step may use; the loop builds one per step."""

    model: Callable[[torch.Tensor], torch.Tensor]  # (B, C_in, H, W) -> logits (B, C)
    loss_x: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: torch.Generator  # CPU generator for augmentation draws
    rng: np.random.Generator  # for Beta draws (MixMatch)
    progress: float  # epochs done, fractional


class Method:
    """One training method: a step's math plus any state it keeps between steps."""

    uses_unlabeled: ClassVar[bool] = False
    uses_ema: ClassVar[bool] = False
    #: the monitors ``step`` returns (reported per epoch as ``train/<name>``)
    monitors: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, num_classes: int, prior: torch.Tensor, **params: Any):
        self.num_classes = num_classes
        self.prior = prior.float()

    def unlabeled_batch_size(self, batch_size: int) -> int:
        return 0

    def step(
        self, ctx: StepContext, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Monitors]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


METHODS: Registry[type[Method]] = Registry("method")


def list_methods() -> list[str]:
    return METHODS.names()


@METHODS.register("supervised")
class Supervised(Method):
    """Labeled data only, weak augmentation."""

    monitors = ("loss_x",)

    def step(
        self, ctx: StepContext, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Monitors]:
        x = weak_augment(batch["x"], ctx.generator)  # (B, C, H, W)
        loss = ctx.loss_x(ctx.model(x), batch["y"])
        return loss, {"loss_x": loss.detach()}


class _Aligner:
    """Running mean of the model's unlabeled predictions, for distribution alignment."""

    momentum = 0.99

    def __init__(self, num_classes: int):
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)

    def update(self, probs: torch.Tensor) -> None:
        batch_mean = probs.detach().float().mean(dim=0).cpu()
        self.p_model = self.momentum * self.p_model + (1.0 - self.momentum) * batch_mean


class _SemiSupervised(Method):
    """A method on unlabeled images too, with EMA weights and optional distribution
    alignment, whose running prediction mean is its state."""

    uses_unlabeled = True
    uses_ema = True

    def __init__(
        self, *, num_classes: int, prior: torch.Tensor, dist_align: bool = False, **params: Any
    ):
        super().__init__(num_classes=num_classes, prior=prior)
        self.aligner = _Aligner(num_classes) if dist_align else None

    def state_dict(self) -> dict[str, Any]:
        return {"p_model": None if self.aligner is None else self.aligner.p_model.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.aligner is not None and state.get("p_model") is not None:
            self.aligner.p_model = state["p_model"].clone()


@METHODS.register("fixmatch")
class FixMatch(_SemiSupervised):
    """Confident weak-view pseudo-labels train the strong view (Sohn et al., 2020)."""

    monitors = ("loss_x", "loss_u", "mask_rate", "pseudo_acc")

    def __init__(
        self,
        *,
        num_classes: int,
        prior: torch.Tensor,
        pseudo_label_threshold: float = 0.95,
        lambda_u: float = 1.0,
        mu: int = 7,
        dist_align: bool = False,
        **params: Any,
    ):
        super().__init__(num_classes=num_classes, prior=prior, dist_align=dist_align)
        self.threshold = float(pseudo_label_threshold)  # the paper's tau
        self.lambda_u, self.mu = float(lambda_u), int(mu)

    def unlabeled_batch_size(self, batch_size: int) -> int:
        return self.mu * batch_size

    def step(
        self, ctx: StepContext, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Monitors]:
        x, u = batch["x"], batch["u"]
        g = ctx.generator
        x_w = weak_augment(x, g)  # (B, C, H, W)
        u_w = weak_augment(u, g)  # (mu B, C, H, W)
        u_s = strong_augment(u, g)  # (mu B, C, H, W)
        with torch.no_grad():
            logits_u_weak = ctx.model(u_w)  # (mu B, K)
        logits = ctx.model(torch.cat([x_w, u_s]))  # (B + mu B, K)
        logits_x, logits_u_strong = logits[: len(x)], logits[len(x) :]
        p_model = p_target = None
        if self.aligner is not None:
            p_model = self.aligner.p_model.to(logits.device)
            p_target = self.prior.to(logits.device)
        loss, monitors = fixmatch_loss(
            logits_x,
            batch["y"],
            logits_u_weak,
            logits_u_strong,
            self.threshold,
            self.lambda_u,
            loss_x=ctx.loss_x,
            p_model=p_model,
            p_target=p_target,
            y_u=batch.get("u_y"),
        )
        if self.aligner is not None:
            self.aligner.update(torch.softmax(logits_u_weak.float(), dim=1))
        return loss, monitors


@METHODS.register("mixmatch")
class MixMatch(_SemiSupervised):
    """Sharpened guesses over K views, MixUp of labeled and unlabeled (Berthelot et al., 2019).

    The unlabeled batch has the labeled batch's size, as in the paper (``mu`` is FixMatch's).
    """

    monitors = ("loss_x", "loss_u", "rampup", "pseudo_acc")

    def __init__(
        self,
        *,
        num_classes: int,
        prior: torch.Tensor,
        T: float = 0.5,
        K: int = 2,
        alpha: float = 0.75,
        lambda_u: float = 1.0,
        rampup_epochs: float = 16,
        dist_align: bool = False,
        **params: Any,
    ):
        super().__init__(num_classes=num_classes, prior=prior, dist_align=dist_align)
        self.T, self.K, self.alpha = float(T), int(K), float(alpha)
        self.lambda_u, self.rampup_epochs = float(lambda_u), float(rampup_epochs)

    def unlabeled_batch_size(self, batch_size: int) -> int:
        return batch_size

    def step(
        self, ctx: StepContext, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Monitors]:
        x, u, g = batch["x"], batch["u"], ctx.generator
        b = len(x)
        x_w = weak_augment(x, g)  # (B, C, H, W)
        u_views = [weak_augment(u, g) for _ in range(self.K)]  # K x (B_u, C, H, W)
        with torch.no_grad():
            logits_views = [ctx.model(v) for v in u_views]  # K x (B_u, C)
            mean_p = torch.stack([torch.softmax(v.float(), 1) for v in logits_views]).mean(0)
            if self.aligner is not None:
                self.aligner.update(mean_p)
                mean_p = distribution_alignment(
                    mean_p, self.aligner.p_model.to(mean_p.device), self.prior.to(mean_p.device)
                )
            q = sharpen(mean_p, self.T)  # (B_u, C)
            monitors_guess = pseudo_label_accuracy(q.argmax(1), batch.get("u_y"))
        all_x = torch.cat([x_w, *u_views])  # (B + K B_u, C_in, H, W)
        p_x = F.one_hot(batch["y"], self.num_classes).float()
        all_p = torch.cat([p_x, *([q] * self.K)])  # (B + K B_u, C)
        lam = float(ctx.rng.beta(self.alpha, self.alpha)) if self.alpha > 0 else 1.0
        lam = max(lam, 1.0 - lam)
        index = torch.randperm(len(all_x), generator=g)
        mixed_x, mixed_p = mixup(all_x, all_p, lam, index)
        logits = ctx.model(mixed_x)  # (B + K B_u, C)
        rampup = linear_rampup(ctx.progress, self.rampup_epochs)
        loss, monitors = mixmatch_loss(
            logits[:b],
            mixed_p[:b],
            logits[b:],
            mixed_p[b:],
            self.lambda_u,
            rampup,
            loss_x=ctx.loss_x,
        )
        monitors["pseudo_acc"] = monitors_guess
        return loss, monitors


def build_method(name: str, *, num_classes: int, prior: torch.Tensor, **params: Any) -> Method:
    """The method ``name``; ``params`` are trial keys (pseudo_label_threshold, lambda_u, mu, T,
    K, ...)."""
    return METHODS.get(name)(num_classes=num_classes, prior=prior, **params)
