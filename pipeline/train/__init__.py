"""Training: models, imbalance losses and samplers, FixMatch / MixMatch, SSL and
metadata pretraining, metrics, and the one shared loop.

The trial calls::

    config = TrainConfig.from_dict(training_keys)          # names of the trial config
    data = TrainData(labeled=..., val=..., unlabeled=...)   # pipeline.data datasets
    result = fit(config, data, report=report, checkpoint_dir=..., cache_root=...)
    test = evaluate(result.model, test_set, threshold=result.threshold)

Registries (``list_*`` helpers list their names): ``LOSSES``, ``SAMPLERS``,
``METHODS``, ``SSL_METHODS``, ``TASKS``. Backbones are timm names.

Names are imported on first use, so ``import pipeline.train`` stays cheap for
command-line tools that only list registries (Lightning, lightly and torchmetrics
load when the code that needs them runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

#: module of pipeline.train -> the names it exports
_MODULES: dict[str, tuple[str, ...]] = {
    "batches": ("TrainData",),
    "bootstrap": ("BOOTSTRAP_METRICS", "bootstrap_ci", "bootstrap_sem"),
    "cache": ("cached_stage",),
    "config": ("ConfigError", "TrainConfig"),
    "loop": ("Evaluation", "FitResult", "evaluate", "fit", "predict"),
    "losses": ("LOSSES", "build_loss", "list_losses"),
    "metadata": ("METADATA_TARGETS", "metadata_targets", "pretrain_metadata"),
    "methods": (
        "METHODS",
        "distribution_alignment",
        "fixmatch_loss",
        "linear_rampup",
        "list_methods",
        "mixmatch_loss",
        "mixup",
        "sharpen",
    ),
    "metrics": ("THRESHOLD_METRICS", "choose_threshold", "classification_metrics"),
    "models": ("Classifier", "ModelSpec", "build_model", "check_backbone", "list_backbones"),
    "module": ("TrainError",),
    "resident": ("DATA_PATHS",),
    "samplers": ("SAMPLERS", "build_sampler", "list_samplers"),
    "saved": ("MODEL_FILE", "load_model", "model_info", "save_model"),
    "ssl": ("SSL_METHODS", "list_ssl_methods", "pretrain_ssl"),
    "stages": ("Pretrained", "pretrain"),
    "tasks": ("TASKS", "Task", "get_task", "list_tasks"),
}
_EXPORTS = {
    name: f"pipeline.train.{module}" for module, names in _MODULES.items() for name in names
}

__all__ = [
    "BOOTSTRAP_METRICS",
    "DATA_PATHS",
    "LOSSES",
    "METADATA_TARGETS",
    "METHODS",
    "MODEL_FILE",
    "SAMPLERS",
    "SSL_METHODS",
    "TASKS",
    "THRESHOLD_METRICS",
    "Classifier",
    "ConfigError",
    "Evaluation",
    "FitResult",
    "ModelSpec",
    "Pretrained",
    "Task",
    "TrainConfig",
    "TrainData",
    "TrainError",
    "bootstrap_ci",
    "bootstrap_sem",
    "build_loss",
    "build_model",
    "build_sampler",
    "cached_stage",
    "check_backbone",
    "choose_threshold",
    "classification_metrics",
    "distribution_alignment",
    "evaluate",
    "fit",
    "fixmatch_loss",
    "get_task",
    "linear_rampup",
    "list_backbones",
    "list_losses",
    "list_methods",
    "list_samplers",
    "list_ssl_methods",
    "list_tasks",
    "load_model",
    "metadata_targets",
    "mixmatch_loss",
    "mixup",
    "model_info",
    "predict",
    "pretrain",
    "pretrain_metadata",
    "pretrain_ssl",
    "save_model",
    "sharpen",
]


if TYPE_CHECKING:
    from pipeline.train.batches import TrainData
    from pipeline.train.bootstrap import BOOTSTRAP_METRICS, bootstrap_ci, bootstrap_sem
    from pipeline.train.cache import cached_stage
    from pipeline.train.config import ConfigError, TrainConfig
    from pipeline.train.loop import Evaluation, FitResult, TrainError, evaluate, fit, predict
    from pipeline.train.losses import LOSSES, build_loss, list_losses
    from pipeline.train.metadata import METADATA_TARGETS, metadata_targets, pretrain_metadata
    from pipeline.train.methods import (
        METHODS,
        distribution_alignment,
        fixmatch_loss,
        linear_rampup,
        list_methods,
        mixmatch_loss,
        mixup,
        sharpen,
    )
    from pipeline.train.metrics import THRESHOLD_METRICS, choose_threshold, classification_metrics
    from pipeline.train.models import (
        Classifier,
        ModelSpec,
        build_model,
        check_backbone,
        list_backbones,
    )
    from pipeline.train.resident import DATA_PATHS
    from pipeline.train.samplers import SAMPLERS, build_sampler, list_samplers
    from pipeline.train.saved import MODEL_FILE, load_model, model_info, save_model
    from pipeline.train.ssl import SSL_METHODS, list_ssl_methods, pretrain_ssl
    from pipeline.train.stages import Pretrained, pretrain
    from pipeline.train.tasks import TASKS, Task, get_task, list_tasks

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
