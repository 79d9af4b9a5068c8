"""A trial's configuration: one flat dict of keys (:mod:`pipeline.trial` lists their
groups), validated and split by concern."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.data import SCOPE_POLICIES
from pipeline.data.datasets import MISSING_VIEW, VIEWS
from pipeline.preprocess import TRIAL_DEFAULTS, PreprocessConfig
from pipeline.registry import UnknownNameError, check_choice, unknown_name_message
from pipeline.train import ConfigError, TrainConfig
from pipeline.train.config import coerce

# The phantom generator's own defaults (pipeline.synth.generate): a phantom made with
# them keeps the short cache folder name it always had.
PHANTOM_LABELED_FRACTION = 0.3
PHANTOM_FRACTURE_RATE = 0.25


class TrialError(RuntimeError):
    """A trial that could not run to the end; the cause is chained (``raise ... from``)."""


class TrialConfigError(ValueError):
    """A trial configuration key or value that cannot be used; the message names the key."""


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which images a trial sees and how they are split (the "data" and "split" keys)."""

    data_dir: str | None = None  # None: the synthetic phantom
    labels: str | None = None  # None: data_dir/labels.csv
    phantom_n: int = 600
    phantom_seed: int = 0
    phantom_size: int = 256
    phantom_labeled_fraction: float = PHANTOM_LABELED_FRACTION  # share of studies with labels
    phantom_fracture_rate: float = PHANTOM_FRACTURE_RATE  # share of patients with a fracture
    cache_dir: str | None = None  # None: $RADSEARCH_CACHE
    labeled_limit: int | None = None  # keep only this many labeled training crops
    views: str = "ap"
    missing_view: str = "zero"
    # which images are frontal knees: "pixels" (the out-of-scope decision from the
    # image, whatever its tags say), "tags" (the DICOM view filter) or "both"
    scope_policy: str = "pixels"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    fold: int | None = None
    folds: int | None = None
    leave_site_out: str | None = None
    split_seed: int = 0
    preprocess_workers: int | None = None  # None: the trial's threads

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            try:
                object.__setattr__(self, f.name, coerce(f.name, str(f.type), getattr(self, f.name)))
            except ConfigError as e:
                raise TrialConfigError(str(e)) from e
        try:
            check_choice("views", self.views, VIEWS)
            check_choice("missing_view", self.missing_view, MISSING_VIEW)
            check_choice("scope_policy", self.scope_policy, SCOPE_POLICIES)
        except UnknownNameError as e:
            raise TrialConfigError(str(e)) from e
        for key in ("phantom_n", "phantom_size"):
            if int(getattr(self, key)) < 1:
                raise TrialConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("phantom_labeled_fraction", "phantom_fracture_rate"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise TrialConfigError(f"{key} must be in [0, 1], got {getattr(self, key)!r}")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                raise TrialConfigError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.fold is not None and self.folds is None:
            raise TrialConfigError(
                "fold needs folds: set folds (fold in 0..folds-1), or folds alone to "
                "cross-validate over every fold"
            )
        if self.folds is not None and int(self.folds) < 2:
            raise TrialConfigError(f"folds must be >= 2, got {self.folds!r}")
        if self.fold is not None and not 0 <= int(self.fold) < int(self.folds):
            raise TrialConfigError(f"fold must be in 0..{int(self.folds) - 1}, got {self.fold!r}")
        if self.labeled_limit is not None and int(self.labeled_limit) < 2:
            raise TrialConfigError(f"labeled_limit must be >= 2, got {self.labeled_limit!r}")

    @property
    def cross_validates(self) -> bool:
        """``folds`` without ``fold``: train and score every fold, report their mean."""
        return self.folds is not None and self.fold is None


#: the data keys that say where the images come from (a search space's ``data`` section);
#: the other data keys (views, split fractions, folds, ...) are trial settings like any
DATA_SOURCE_KEYS = (
    "data_dir",
    "labels",
    "cache_dir",
    "phantom_n",
    "phantom_seed",
    "phantom_size",
    "phantom_labeled_fraction",
    "phantom_fracture_rate",
    "labeled_limit",
)
#: keys whose values are local folders or files, never written where results are shared
LOCAL_PATH_KEYS = ("data_dir", "labels", "cache_dir", "checkpoint_dir")
LOCAL_PATH = "<local path>"
#: keys the caller of a trial sets from its own resources and folders, not a space
RUNTIME_KEYS = ("checkpoint_dir", "threads", "preprocess_workers")


def data_preparation_keys() -> tuple[str, ...]:
    """The keys the prepared data depends on (the phantom and the preprocessing cache):
    when none is searched, one preparation before the trials serves them all."""
    return (*DATA_SOURCE_KEYS, *TRIAL_DEFAULTS)


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def trial_keys() -> dict[str, Any]:
    """Every key a trial configuration may hold, with its default."""
    keys = _field_defaults(DataConfig)
    keys.update(TRIAL_DEFAULTS)
    keys.update(_field_defaults(TrainConfig))
    keys["checkpoint_dir"] = None
    return keys


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """A validated trial configuration, split by concern."""

    data: DataConfig
    preprocess: Mapping[str, Any]  # the preprocessing keys (PreprocessConfig.from_trial)
    train: Any  # pipeline.train.TrainConfig
    checkpoint_dir: str | None = None
    flat: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrialConfig:
        """Validate a flat configuration; unknown keys fail with the closest valid names."""
        if not isinstance(config, Mapping):
            raise TrialConfigError(
                f"a trial configuration is a mapping, got {type(config).__name__}"
            )
        known = trial_keys()
        for key in config:
            if key not in known:
                raise TrialConfigError(unknown_name_message("trial key", key, sorted(known)))
        values = {k: _plain(v) for k, v in config.items()}
        data_keys = _field_defaults(DataConfig)
        try:
            data = DataConfig(**{k: v for k, v in values.items() if k in data_keys})
            train_keys = set(TrainConfig.keys())
            train = TrainConfig.from_dict({k: v for k, v in values.items() if k in train_keys})
            pre = {k: values.get(k, d) for k, d in TRIAL_DEFAULTS.items()}
            PreprocessConfig.from_trial(pre)  # validates
        except (ConfigError, TypeError, ValueError) as e:
            if isinstance(e, TrialConfigError):
                raise
            raise TrialConfigError(str(e)) from e
        resolved = {**known, **values}
        return cls(
            data=data,
            preprocess=pre,
            train=train,
            checkpoint_dir=values.get("checkpoint_dir"),
            flat=resolved,
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved flat configuration (every key, defaults filled in)."""
        return dict(self.flat)

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` fit to share: the data's location, the caches and the
        checkpoints (local folders, often named after patients or studies) recorded as
        ``<local path>``."""
        return {
            k: LOCAL_PATH if k in LOCAL_PATH_KEYS and v is not None else v
            for k, v in self.flat.items()
        }


def _plain(value: Any) -> Any:
    """numpy scalars (Ax, pandas) -> Python scalars."""
    item = getattr(value, "item", None)
    if item is not None and callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value
