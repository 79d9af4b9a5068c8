"""Pretraining stages, each cached on disk by its configuration and its data.

A trial's backbone goes through "transfer learning in steps": ImageNet weights (when
cached locally), then metadata pretraining, then self-supervised pretraining, then
the task. Each stage's output (the backbone's state dict) is cached
(:mod:`pipeline.train.cache`) under a key that hashes the stage's settings, the key of
the stage before it and the identity of the images it trained on, so trials that
share a stage compute it once.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from pipeline.io import stable_hash
from pipeline.train.batches import TrainData, dataset_fingerprint
from pipeline.train.cache import StageRecord, StateDict, cached_stage
from pipeline.train.config import TrainConfig
from pipeline.train.metadata import pretrain_metadata
from pipeline.train.models import build_backbone, cached_imagenet_weights
from pipeline.train.runtime import resolve_device, resolve_precision, seeded, using_threads
from pipeline.train.ssl import SSL_METHODS, pretrain_ssl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pretrained:
    """The backbone weights a fit starts from (None: timm's own init) and how they came."""

    state: StateDict | None
    key: str
    imagenet: bool
    stages: list[StageRecord] = field(default_factory=list)


def pretraining_pool(data: TrainData) -> Dataset:
    """Images the pretraining stages see: the unlabeled pool plus the labeled training
    images (their labels unused); never validation or test images."""
    parts = [d for d in (data.unlabeled, data.labeled) if d is not None and len(d) > 0]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def pretrain(
    config: TrainConfig,
    data: TrainData,
    *,
    cache_root: str | os.PathLike[str] | None = None,
) -> Pretrained:
    """Run (or load) the pretraining stages ``config`` asks for; returns backbone weights.

    With no metadata or SSL stage, returns ``state=None`` and the model is built from
    ImageNet weights (when cached) or timm's seeded random init.
    """
    in_chans = data.in_chans()
    use_imagenet = (
        config.pretrained == "imagenet" and cached_imagenet_weights(config.backbone) is not None
    )
    base = {
        "backbone": config.backbone,
        "in_chans": in_chans,
        "init": "imagenet" if use_imagenet else f"random/{config.seed}",
    }
    key = stable_hash(base)
    want_meta = config.metadata_epochs > 0
    want_ssl = SSL_METHODS.get(config.ssl_method) is not None and config.ssl_epochs > 0
    if not (want_meta or want_ssl):
        return Pretrained(None, key, use_imagenet)
    with using_threads(config.threads):
        stages = _Stages(config, data, in_chans, use_imagenet, key, cache_root)
        if want_meta:
            stages.run("metadata", {"epochs": config.metadata_epochs}, pretrain_metadata)
        if want_ssl:
            stages.run(
                "ssl",
                {"method": config.ssl_method, "epochs": config.ssl_epochs},
                functools.partial(pretrain_ssl, method=config.ssl_method),
            )
    return Pretrained(stages.state, stages.key, use_imagenet, stages.records)


class _Stages:
    """The chain of cached stages of one run: each starts from the one before it."""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainData,
        in_chans: int,
        use_imagenet: bool,
        key: str,
        cache_root: str | os.PathLike[str] | None,
    ):
        self.config, self.in_chans, self.use_imagenet = config, in_chans, use_imagenet
        self.key, self.cache_root = key, cache_root
        self.pool = pretraining_pool(data)
        self.data_id = (
            stable_hash({"identity": data.identity, "pool": "unlabeled+labeled"})
            if data.identity
            else stable_hash(
                [dataset_fingerprint(data.unlabeled), dataset_fingerprint(data.labeled)]
            )
        )
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.state: StateDict | None = None
        self.records: list[StageRecord] = []

    def fresh_backbone(self) -> Any:
        with seeded(self.config.seed, "init/backbone"):
            backbone, _ = build_backbone(
                self.config.backbone,
                in_chans=self.in_chans,
                pretrained="imagenet" if self.use_imagenet else "none",
                drop_rate=0.0,
            )
        if self.state is not None:
            backbone.load_state_dict(self.state)
        return backbone

    def run(self, kind: str, settings: dict[str, Any], train: Callable[..., Any]) -> None:
        """Load the stage from the cache, or ``train(backbone, pool, ...)`` it once."""
        c = self.config
        spec = {
            "parent": self.key,
            **settings,
            "batch_size": c.batch_size,
            "lr": c.ssl_lr,
            "seed": c.seed,
            "data": self.data_id,
        }
        self.state, record = cached_stage(
            kind,
            spec,
            lambda: train(
                self.fresh_backbone(),
                self.pool,
                epochs=settings["epochs"],
                lr=c.ssl_lr,
                batch_size=c.batch_size,
                seed=c.seed,
                device=self.device,
                precision=self.precision,
            ),
            cache_root=self.cache_root,
        )
        self.key = record.key
        self.records.append(record)
