"""Classifiers: a timm backbone by name plus a task head.

Backbones are timm names (checked with ``timm.list_models``, never re-registered),
built with ``num_classes=0`` so they return pooled features; the head comes from
the task (``pipeline.train.tasks``), which also fixes the class order of the output
and of the prior-initialised bias.

ImageNet weights are loaded only from the local timm / Hugging Face cache: the
run never reaches for the network. When they are absent the run says so once per
backbone and starts from random weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.registry import UnknownNameError, check_choice
from pipeline.train.tasks import Task, get_task

log = logging.getLogger(__name__)

PRETRAINED_CHOICES = ("imagenet", "none")
_ANNOUNCED: set[str] = set()


def check_backbone(name: str) -> str:
    """Return ``name`` if timm knows it (with or without a ``.tag``), else raise with suggestions."""
    if not isinstance(name, str) or not timm.is_model(name):
        raise UnknownNameError("backbone", name, timm.list_models())
    return name


def list_backbones(pattern: str = "*") -> list[str]:
    return timm.list_models(pattern)


def cached_imagenet_weights(name: str) -> Path | None:
    """Path of the backbone's default pretrained weights in the local cache, or None.

    Looks in the Hugging Face hub cache (timm's default source) and in timm's legacy
    torch-hub cache; never touches the network.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.exists(found):
                return Path(found)
    if cfg.url:
        from timm.models._hub import get_cache_dir

        candidate = Path(get_cache_dir()) / os.path.basename(cfg.url)
        if candidate.exists():
            return candidate
    return None


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled features a ``num_classes=0`` timm backbone returns.

    ``head_hidden_size`` when the model has one (MobileNetV3's conv head turns 576
    channels into 1024 features), else ``num_features``.
    """
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def _announce_once(name: str, message: str) -> None:
    if name not in _ANNOUNCED:
        _ANNOUNCED.add(name)
        log.warning(message)


def build_backbone(
    name: str, *, in_chans: int, pretrained: str = "imagenet", drop_rate: float = 0.0
) -> tuple[nn.Module, bool]:
    """timm backbone returning pooled features (B, F); True when ImageNet weights were loaded."""
    check_backbone(name)
    check_choice("pretrained", pretrained, PRETRAINED_CHOICES)
    kwargs = {"in_chans": in_chans, "num_classes": 0, "drop_rate": drop_rate}
    if pretrained == "imagenet":
        path = cached_imagenet_weights(name)
        if path is None:
            _announce_once(
                name,
                f"no ImageNet weights for {name!r} in the local cache; starting from random "
                "weights (download them once with timm.create_model(name, pretrained=True) "
                "on a machine with network access to use them)",
            )
        else:
            try:
                model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
                )
                return model, True
            except (RuntimeError, OSError, ValueError) as e:
                _announce_once(
                    name, f"could not load cached ImageNet weights for {name!r} ({e}); random init"
                )
    return timm.create_model(name, pretrained=False, **kwargs), False


class LinearHead(nn.Module):
    """One softmax over the task's classes; bias starts at the log class priors."""

    def __init__(self, in_features: int, num_classes: int, priors: torch.Tensor | None = None):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(
                torch.log(priors) if priors is not None else torch.zeros(num_classes)
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)  # (B, C)


class HierarchicalHead(nn.Module):
    """P(fracture), then P(type | fracture); returns the 7 joint log-probabilities.

    The output is a valid logit vector: ``softmax(out) == [P(no), P(frac) P(I|frac), ...]``,
    so every loss, method and metric treats it like any other head.
    """

    def __init__(self, in_features: int, num_classes: int, priors: torch.Tensor | None = None):
        super().__init__()
        self.fracture = nn.Linear(in_features, 2)
        self.kind = nn.Linear(in_features, num_classes - 1)
        for layer in (self.fracture, self.kind):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if priors is not None:
            with torch.no_grad():
                p_fracture = priors[1:].sum()
                self.fracture.bias.copy_(torch.log(torch.stack([priors[0], p_fracture])))
                self.kind.bias.copy_(torch.log(priors[1:] / p_fracture))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        log_fracture = F.log_softmax(self.fracture(features), dim=1)  # (B, 2)
        log_kind = F.log_softmax(self.kind(features), dim=1)  # (B, C-1)
        return torch.cat([log_fracture[:, :1], log_fracture[:, 1:] + log_kind], dim=1)  # (B, C)


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead, "hierarchical": HierarchicalHead}


class Classifier(nn.Module):
    """Backbone + head. ``forward(x (B, C_in, H, W)) -> logits (B, num_classes)``."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, task: Task, backbone_name: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.task = task
        self.backbone_name = backbone_name

    @property
    def num_features(self) -> int:
        return feature_dim(self.backbone)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What ``build_model`` builds: timm backbone name, task, input channels, init."""

    backbone: str = "resnet18"
    task: str = "binary"
    in_chans: int = 1
    pretrained: str = "imagenet"
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        check_backbone(self.backbone)
        get_task(self.task)
        check_choice("pretrained", self.pretrained, PRETRAINED_CHOICES)
        if not (isinstance(self.in_chans, int) and self.in_chans >= 1):
            raise ValueError(f"in_chans must be a positive int, got {self.in_chans!r}")
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")


def build_model(
    spec: ModelSpec,
    *,
    priors: torch.Tensor | None = None,
    backbone_state: dict[str, torch.Tensor] | None = None,
) -> Classifier:
    """Build the classifier; ``priors`` (C,) in the task's class order set the output bias.

    ``backbone_state`` (from a pretraining stage) replaces the backbone weights.
    """
    task = get_task(spec.task)
    if priors is not None and priors.shape != (task.num_classes,):
        raise ValueError(
            f"priors have shape {tuple(priors.shape)}, task {task.name!r} has {task.num_classes} classes"
        )
    pretrained = "none" if backbone_state is not None else spec.pretrained
    backbone, _ = build_backbone(
        spec.backbone, in_chans=spec.in_chans, pretrained=pretrained, drop_rate=spec.drop_rate
    )
    if backbone_state is not None:
        backbone.load_state_dict(backbone_state)
    head = HEADS[task.head](feature_dim(backbone), task.num_classes, priors)
    return Classifier(backbone, head, task=task, backbone_name=spec.backbone)
