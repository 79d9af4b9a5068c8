"""Self-supervised pretraining of a timm backbone with ``lightly`` (SimCLR, BYOL).

Two views of each unlabeled radiograph come from ``augment.ssl_augment`` (crops,
flips, small rotations, brightness, contrast, gamma, blur, noise; no colour jitter).
``SSL_METHODS`` maps the names the search spaces use ("none", "simclr", "byol") to
the objective; ``pretrain_ssl`` trains and returns the backbone's state dict. Caching
by configuration lives in ``pipeline.train.stages``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.registry import Registry
from pipeline.train.augment import ssl_augment
from pipeline.train.models import feature_dim
from pipeline.train.runtime import pretrain_loop


class SSLObjective(nn.Module):
    """Wraps a backbone (B, C, H, W) -> (B, F) with the heads of one SSL method."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        return None


SSL_METHODS: Registry[type[SSLObjective] | None] = Registry("ssl method")
SSL_METHODS.register("none", doc="no self-supervised stage")(None)


def list_ssl_methods() -> list[str]:
    return SSL_METHODS.names()


@SSL_METHODS.register("simclr")
class SimCLR(SSLObjective):
    """SimCLR (Chen et al., 2020): NT-Xent between projections of two views."""

    def __init__(self, backbone: nn.Module, feature_dim: int, *, temperature: float = 0.2):
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import SimCLRProjectionHead

        super().__init__(backbone)
        hidden = max(128, feature_dim)
        self.projection = SimCLRProjectionHead(feature_dim, hidden, 128)
        self.criterion = NTXentLoss(temperature=temperature)

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        z = self.projection(self.backbone(torch.cat([view_a, view_b])))  # (2B, 128)
        z_a, z_b = z.float().chunk(2)
        return self.criterion(z_a, z_b)


@SSL_METHODS.register("byol")
class BYOL(SSLObjective):
    """BYOL (Grill et al., 2020): predict a momentum encoder's projection of the other view."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, hidden: int = 1024, out: int = 256
    ):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__(backbone)
        self.projection = BYOLProjectionHead(feature_dim, hidden, out)
        self.prediction = BYOLPredictionHead(out, hidden, out)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_momentum = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_momentum)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        views = torch.cat([view_a, view_b])  # (2B, C, H, W)
        p = self.prediction(self.projection(self.backbone(views))).float()
        with torch.no_grad():
            z = self.projection_momentum(self.backbone_momentum(views)).float()
        p_a, p_b = p.chunk(2)
        z_a, z_b = z.chunk(2)
        return 0.5 * (self.criterion(p_a, z_b) + self.criterion(p_b, z_a))

    def after_step(self, progress: float) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(int(progress * 10_000), 10_000, 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection, self.projection_momentum, m=m)


def pretrain_ssl(
    backbone: nn.Module,
    dataset: Dataset,
    *,
    method: str = "simclr",
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train ``backbone`` (timm, ``num_classes=0``) on ``dataset``'s images with ``method``.

    Returns the backbone's state dict (on the CPU) and the mean loss of each epoch.
    """
    cls = SSL_METHODS.get(method)
    if cls is None or epochs <= 0:
        return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}, []
    objective = cls(backbone, feature_dim(backbone))

    def step(x: torch.Tensor, _t: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        return objective.loss(ssl_augment(x, g), ssl_augment(x, g))

    history = pretrain_loop(
        objective,
        step,
        dataset,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        stream=f"ssl/{method}",
        device=device,
        precision=precision,
        after_step=objective.after_step,
    )
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    return state, history
