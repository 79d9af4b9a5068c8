"""``TrainConfig``: the training keys of a trial configuration, validated.

The field names are exactly the trial configuration keys of docs/architecture.md
(model, pretraining, method, imbalance, optimisation and runtime groups), so
``pipeline.trial`` passes its flat dict's training part straight through
``TrainConfig.from_dict``.

``data_path`` (runtime group, default ``"auto"``): where training batches come from.
``"loader"``: a ``DataLoader`` reads each step's crops from the preprocessing cache on
the CPU (``num_workers`` processes); ``"device"``: every crop is loaded once onto the
training device and batches are gathered there (``pipeline.train.resident``: same
indices, same values, no workers); ``"auto"``: the device path on a GPU when the crops
fit a small share of its memory, the loader on the CPU. Both paths give the same
batches for a seed, so on the CPU they train the same weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.registry import UnknownNameError, check_choice, unknown_name_message
from pipeline.train.losses import LOSSES
from pipeline.train.methods import METHODS
from pipeline.train.metrics import THRESHOLD_METRICS, TYPE_DECISIONS
from pipeline.train.models import PRETRAINED_CHOICES, check_backbone
from pipeline.train.resident import DATA_PATHS
from pipeline.train.samplers import SAMPLERS
from pipeline.train.ssl import SSL_METHODS
from pipeline.train.tasks import TASKS

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "bf16-if-native", "32", "bf16", "16")
#: Which epoch's weights ``fit`` keeps: the best validation monitor, or the last epoch.
SELECTIONS = ("best", "last")


#: range rules of the numeric keys (their types are checked by :func:`coerce`):
#: (keys, test, what the test asks for)
_RULES: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (("drop_rate", "ema_decay", "cb_beta"), lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    (("pseudo_label_threshold", "sampler_ratio"), lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    (("ssl_lr", "T", "lr"), lambda v: v > 0, "> 0"),
    (("metadata_epochs", "ssl_epochs", "rampup_epochs", "num_workers"), lambda v: v >= 0, ">= 0"),
    (("lambda_u", "alpha", "focal_gamma", "weight_decay"), lambda v: v >= 0, ">= 0"),
    (("mu", "K"), lambda v: v >= 1, ">= 1"),
    (("batch_size", "epochs"), lambda v: v >= 1, "an int >= 1"),
    (("steps_per_epoch",), lambda v: v is None or v >= 1, "None or an int >= 1"),
    (("time_budget_s",), lambda v: v is None or v > 0, "None or > 0"),
    (("early_stop_patience", "threads"), lambda v: v is None or v >= 1, "None or >= 1"),
)


class ConfigError(ValueError):
    """A training configuration value that cannot be used; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one training run needs besides its data and its folders."""

    # model
    backbone: str = "resnet18"
    pretrained: str = "imagenet"
    task: str = "binary"
    drop_rate: float = 0.0
    # pretraining stages
    metadata_epochs: int = 0
    ssl_method: str = "none"
    ssl_epochs: int = 0
    ssl_lr: float = 1e-3
    # method (paper defaults: FixMatch 0.95 / 1 / 7, MixMatch T 0.5, K 2, alpha 0.75)
    method: str = "supervised"
    pseudo_label_threshold: float = 0.95  # FixMatch: the confidence a pseudo-label needs
    lambda_u: float = 1.0
    mu: int = 7
    dist_align: bool = False
    ema_decay: float = 0.999
    T: float = 0.5
    K: int = 2
    alpha: float = 0.75
    rampup_epochs: float = 16
    # imbalance
    loss: str = "ce"
    focal_gamma: float = 2.0
    cb_beta: float = 0.999
    sampler: str = "uniform"
    sampler_ratio: float = 0.25
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 10
    steps_per_epoch: int | None = None
    time_budget_s: float | None = None
    early_stop_patience: int | None = None
    select: str = "best"  # the weights kept: "best" validation epoch or the "last" one
    threshold_metric: str = "f2"
    type_decision: str = "argmax"  # 7-class tasks: "argmax", "threshold" or "balanced"
    # runtime
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    num_workers: int = 0
    data_path: str = "auto"  # "auto", "loader" or "device": see the module docstring

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a flat dict; unknown keys fail with the closest valid names."""
        known = cls.keys()
        for key in values:
            if key not in known:
                raise ConfigError(unknown_name_message("training key", key, sorted(known)))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, coerce(f.name, str(f.type), getattr(self, f.name)))
        try:
            check_backbone(self.backbone)
            check_choice("pretrained", self.pretrained, PRETRAINED_CHOICES)
            TASKS.get(self.task)
            SSL_METHODS.get(self.ssl_method)
            METHODS.get(self.method)
            LOSSES.get(self.loss)
            SAMPLERS.get(self.sampler)
            check_choice("optimizer", self.optimizer, OPTIMIZERS)
            check_choice("select", self.select, SELECTIONS)
            check_choice("threshold_metric", self.threshold_metric, THRESHOLD_METRICS)
            check_choice("type_decision", self.type_decision, TYPE_DECISIONS)
            check_choice("precision", self.precision, PRECISIONS)
            check_choice("data_path", self.data_path, DATA_PATHS)
        except UnknownNameError as e:
            raise ConfigError(str(e)) from e
        for keys, ok, rule in _RULES:
            for key in keys:
                if not ok(getattr(self, key)):
                    raise ConfigError(f"{key} must be {rule}, got {getattr(self, key)!r}")
        if not (self.device in ("auto", "cpu", "cuda", "gpu") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )


def coerce(key: str, kind: str, value: Any) -> Any:
    """Accept what YAML, Ax and numpy hand over (7.0 for an int, numpy scalars), reject
    the wrong type with the key's name."""
    if isinstance(value, np.generic):
        value = value.item()
    optional = kind.endswith("| None")
    base = kind.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must be a {base}, got None")
    if base == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an int, got {value!r}")
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
    elif base == "bool":
        if isinstance(value, int) and value in (0, 1):
            value = bool(value)
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif base == "str" and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value
