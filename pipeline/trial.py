"""One trial, end to end: DICOM files -> preprocessing cache -> splits -> training -> metrics.

This is the one entry point the search platform calls, and what ``python -m pipeline
train`` runs without Ray or W&B::

    metrics = run_trial({"method": "fixmatch", "backbone": "resnet10t", "epochs": 3}, print)

The configuration is a flat dict whose keys are listed in ``trial_keys()`` (and in
docs/architecture.md): data and split keys (:class:`DataConfig`), preprocessing keys
(``pipeline.preprocess.TRIAL_DEFAULTS``), training keys (``pipeline.train.TrainConfig``)
and ``checkpoint_dir``. With no ``data_dir`` the trial uses the synthetic phantom,
generated once per (n, seed, size, labeled and fracture fractions) in the
cache folder and shared by every trial.

Every validation score comes with its noise: the per-epoch reports carry
``val/<metric>_sem``, a patient-level bootstrap standard error. With ``folds: K`` and
no ``fold``, the trial cross-validates: it trains one model per fold, epoch by epoch
side by side, and reports the mean over folds with its standard error (K times the
cost of one fold). With ``checkpoint_dir`` the trial leaves its model of record there
(``model.pt``, :mod:`pipeline.train.saved`; fold 0's when it cross-validates), which
``promote`` compares the final model against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.registry import UnknownNameError, check_choice, unknown_name_message

Report = Callable[[dict[str, Any]], None]

# The phantom generator's own defaults (pipeline.synth.generate): a phantom made with
# them keeps the short cache folder name it always had.
PHANTOM_LABELED_FRACTION = 0.3
PHANTOM_FRACTURE_RATE = 0.25

# Files in a data folder that are never DICOM (labels, sidecars, notes, pictures).
NOT_DICOM_SUFFIXES = frozenset(
    {".csv", ".tsv", ".json", ".jsonl", ".txt", ".md", ".yaml", ".yml", ".xlsx", ".xls"}
    | {".png", ".jpg", ".jpeg", ".pdf", ".html", ".lock"}
)


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
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    fold: int | None = None
    folds: int | None = None
    leave_site_out: str | None = None
    split_seed: int = 0
    preprocess_workers: int | None = None  # None: the trial's threads

    def __post_init__(self) -> None:
        from pipeline.data.datasets import MISSING_VIEW, VIEWS
        from pipeline.train.config import ConfigError, coerce

        for f in dataclasses.fields(self):
            try:
                object.__setattr__(self, f.name, coerce(f.name, str(f.type), getattr(self, f.name)))
            except ConfigError as e:
                raise TrialConfigError(str(e)) from e
        try:
            check_choice("views", self.views, VIEWS)
            check_choice("missing_view", self.missing_view, MISSING_VIEW)
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

    @property
    def cross_validates(self) -> bool:
        """``folds`` without ``fold``: train and score every fold, report their mean."""
        return self.folds is not None and self.fold is None
        if self.labeled_limit is not None and int(self.labeled_limit) < 2:
            raise TrialConfigError(f"labeled_limit must be >= 2, got {self.labeled_limit!r}")


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
#: keys the caller of a trial sets from its own resources and folders, not a space
RUNTIME_KEYS = ("checkpoint_dir", "threads", "preprocess_workers")


def data_preparation_keys() -> tuple[str, ...]:
    """The keys the prepared data depends on (the phantom and the preprocessing cache):
    when none is searched, one preparation before the trials serves them all."""
    from pipeline.preprocess import TRIAL_DEFAULTS

    return (*DATA_SOURCE_KEYS, *TRIAL_DEFAULTS)


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def trial_keys() -> dict[str, Any]:
    """Every key a trial configuration may hold, with its default."""
    from pipeline.preprocess import TRIAL_DEFAULTS
    from pipeline.train import TrainConfig

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
        from pipeline.preprocess import TRIAL_DEFAULTS, PreprocessConfig
        from pipeline.train import ConfigError, TrainConfig

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


def _plain(value: Any) -> Any:
    """numpy scalars (Ax, pandas) -> Python scalars."""
    item = getattr(value, "item", None)
    if item is not None and callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value


# ----------------------------------------------------------------------------- data


def cache_root(config: DataConfig) -> Path:
    """The trial's cache folder: ``cache_dir``, else ``$RADSEARCH_CACHE``."""
    from pipeline.io import cache_home

    return Path(config.cache_dir) if config.cache_dir else cache_home()


def phantom_folder_name(
    n: int,
    seed: int,
    size: int,
    *,
    labeled_fraction: float = PHANTOM_LABELED_FRACTION,
    fracture_rate: float = PHANTOM_FRACTURE_RATE,
) -> str:
    """The cache folder name of one phantom parameter set (unique per set).

    ``n600-seed0-px256`` for the generator's default fractions, else with
    ``-lf<labeled_fraction>-fr<fracture_rate>`` appended.
    """
    name = f"n{n}-seed{seed}-px{size}"
    if (float(labeled_fraction), float(fracture_rate)) != (
        PHANTOM_LABELED_FRACTION,
        PHANTOM_FRACTURE_RATE,
    ):
        name += f"-lf{float(labeled_fraction):g}-fr{float(fracture_rate):g}"
    return name


def ensure_phantom(
    n: int,
    seed: int,
    size: int,
    root: Path,
    *,
    labeled_fraction: float = PHANTOM_LABELED_FRACTION,
    fracture_rate: float = PHANTOM_FRACTURE_RATE,
    workers: int = 1,
) -> Path:
    """The phantom set for (n, seed, size, labeled_fraction, fracture_rate), generated
    once under ``root/phantom``.

    Safe when several trials ask at once: one generates (in a temporary folder that is
    renamed into place), the others wait on a file lock and reuse it. ``workers``:
    rendering processes (spawned: a calling script needs the ``__main__`` guard).
    """
    from filelock import FileLock

    from pipeline.synth import generate

    name = phantom_folder_name(
        n, seed, size, labeled_fraction=labeled_fraction, fracture_rate=fracture_rate
    )
    target = root / "phantom" / name
    if (target / "synth.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "synth.json").exists():
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        generate(
            tmp,
            n=n,
            seed=seed,
            size=size,
            labeled_fraction=labeled_fraction,
            fracture_rate=fracture_rate,
            workers=workers,
        )
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, target.with_name(f".{target.name}.stale.{os.getpid()}"))
        os.replace(tmp, target)
    return target


def dicom_files(data_dir: Path, listed: list[str]) -> list[str]:
    """Files of the data folder to preprocess: those the labels CSV lists, plus every
    other file that is not obviously something else (DICOM files often have no suffix)."""
    from pipeline.dicom import iter_files

    found = {
        p.relative_to(data_dir).as_posix()
        for p in iter_files(data_dir)
        if p.suffix.lower() not in NOT_DICOM_SUFFIXES
    }
    return sorted(found | {f for f in listed if (data_dir / f).is_file()})


@dataclass
class LoadedData:
    """What every trial of one data configuration reads: the preprocessed crops, their
    labels and the patient-grouped splits (built once, cached on disk)."""

    data_dir: Path
    labels_csv: Path
    index: Any  # CacheIndex
    items: Any  # ItemSet
    splits: Any  # Splits
    labels: Any  # LabelTable
    preprocess_key: str
    truth: dict[tuple[str, str | None], int]  # the phantom's hidden labels, else empty


@dataclass
class PreparedData:
    """Datasets of one trial (one fold) and the accounting of how they were made."""

    data_dir: Path
    train: Any  # CachedRadiographs, labeled training crops
    val: Any
    test: Any
    unlabeled: Any
    index: Any  # CacheIndex
    items: Any  # ItemSet
    splits: Any  # Splits
    labels: Any  # LabelTable
    identity: str
    summary: dict[str, Any]

    def train_data(self) -> Any:
        from pipeline.train import TrainData

        return TrainData(
            labeled=self.train,
            val=self.val,
            unlabeled=self.unlabeled if len(self.unlabeled) else None,
            identity=self.identity,
        )


def data_folder(config: DataConfig, *, workers: int = 1) -> Path:
    """The data folder of a configuration: ``data_dir``, else the phantom (generated once)."""
    if config.data_dir:
        return Path(config.data_dir).expanduser().resolve()
    return ensure_phantom(
        config.phantom_n,
        config.phantom_seed,
        config.phantom_size,
        cache_root(config),
        labeled_fraction=config.phantom_labeled_fraction,
        fracture_rate=config.phantom_fracture_rate,
        workers=workers,
    )


def load_data(
    config: TrialConfig, *, progress: bool = False, workers: int | None = None
) -> LoadedData:
    """Read, preprocess (cached), join labels, filter views and split by patient.

    ``workers``: processes for the phantom and the preprocessing cache (default the
    trial's ``preprocess_workers``, else its threads).
    """
    from pipeline.data import build_items, load_labels, make_splits
    from pipeline.preprocess import PreprocessConfig, build_cache

    d = config.data
    workers = workers or d.preprocess_workers or config.train.threads or 1
    data_dir = data_folder(d, workers=workers)
    if not data_dir.is_dir():
        raise TrialError(f"data_dir {data_dir} is not a folder")
    labels_csv = Path(d.labels).expanduser() if d.labels else data_dir / "labels.csv"
    table = load_labels(labels_csv, data_dir)
    pre = PreprocessConfig.from_trial(config.preprocess)
    files = dicom_files(data_dir, [r.file for r in table.rows])
    index = build_cache(
        files,
        pre,
        cache_root(d) / "preprocess",
        workers=workers,
        progress=progress,
        data_dir=data_dir,
    )
    items = build_items(index, table, data_dir=data_dir)
    splits = make_splits(
        items.units,
        test=d.test_fraction,
        val=d.val_fraction,
        folds=d.folds,
        leave_site_out=d.leave_site_out,
        seed=d.split_seed,
    )
    return LoadedData(
        data_dir=data_dir,
        labels_csv=labels_csv,
        index=index,
        items=items,
        splits=splits,
        labels=table,
        preprocess_key=pre.key(),
        truth=_phantom_truth(data_dir),
    )


def split_data(loaded: LoadedData, config: TrialConfig, *, fold: int | None = None) -> PreparedData:
    """The datasets of one trial: train / val of ``fold`` (or of the configured fold or
    plain split), the held-out test set and the unlabeled pool."""
    from pipeline.data import CachedRadiographs

    d = config.data
    if d.folds is None:
        fold = None
    elif fold is None:
        fold = d.fold if d.fold is not None else 0
    selected = {
        name: loaded.splits.select(
            loaded.items.items, name, fold=fold if name in ("train", "val") else None
        )
        for name in ("train", "val", "test", "unlabeled")
    }
    if d.labeled_limit is not None and len(selected["train"]) > d.labeled_limit:
        selected["train"] = _limit_labeled(selected["train"], d.labeled_limit, d.split_seed)
    for name in ("train", "val"):
        if not selected[name]:
            raise TrialError(
                f"the {name} split is empty: {loaded.labels.summary().get('usable', 0)} usable "
                f"labels in {loaded.labels_csv.name} are too few for "
                f"val_fraction={d.val_fraction}, test_fraction={d.test_fraction}"
            )

    def dataset(name: str) -> Any:
        return CachedRadiographs(
            selected[name],
            loaded.index,
            views=d.views,
            missing_view=d.missing_view,
            data_dir=loaded.data_dir,
        )

    sets = {name: dataset(name) for name in selected}
    if loaded.truth:  # the phantom knows what it hides: feeds the pseudo-label accuracy monitor
        sets["unlabeled"].true_labels = [
            loaded.truth.get((i.file, i.laterality), -1) for i in sets["unlabeled"].items
        ]
    summary = {
        "data_dir": "phantom" if not d.data_dir else "user",
        "labels": loaded.labels.summary(),
        "items": loaded.items.summary(),
        "cache": dict(getattr(loaded.index, "stats", {}) or {}),
        "cache_errors": len(loaded.index.errors),
        "splits": {name: len(sets[name]) for name in sets},
        "fractures": {
            name: int((sets[name].labels > 0).sum()) for name in ("train", "val", "test")
        },
        "fold": fold,
    }
    return PreparedData(
        data_dir=loaded.data_dir,
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        unlabeled=sets["unlabeled"],
        index=loaded.index,
        items=loaded.items,
        splits=loaded.splits,
        labels=loaded.labels,
        identity=_identity(loaded.preprocess_key, selected),
        summary=summary,
    )


def prepare_data(
    config: TrialConfig,
    *,
    progress: bool = False,
    fold: int | None = None,
    workers: int | None = None,
) -> PreparedData:
    """:func:`load_data` then :func:`split_data` (``fold``: default the configured one,
    fold 0 when the trial cross-validates)."""
    return split_data(load_data(config, progress=progress, workers=workers), config, fold=fold)


def labeled_set(
    config: TrialConfig, data_dir: Path, labels: Path | None, *, workers: int = 1
) -> Any:
    """Every labeled frontal-knee crop of another data folder (a second site, an
    external phantom), preprocessed as ``config`` says: for a model's one look at data
    from elsewhere. No split: nothing here was ever trained on."""
    from pipeline.data import CachedRadiographs

    other = TrialConfig.from_dict(
        {**config.to_dict(), "data_dir": str(data_dir), "labels": str(labels) if labels else None}
    )
    loaded = load_data(other, workers=workers)
    chosen = [i for i in loaded.items.items if i.labeled]
    if not chosen:
        raise TrialError(f"{data_dir}: no labeled frontal-knee image to evaluate on")
    return CachedRadiographs(
        chosen,
        loaded.index,
        views=other.data.views,
        missing_view=other.data.missing_view,
        data_dir=loaded.data_dir,
    )


def prepare(config: Mapping[str, Any], *, workers: int | None = None) -> dict[str, Any]:
    """Build what every trial of ``config`` reads (the phantom, the preprocessing cache)
    with ``workers`` processes, and count what the trials will see: crops and fractures
    per split, and the crops the validation side scores (every fold's validation crops
    when the trial cross-validates). The search calls it once before its trials start,
    with every core of the driver's machine."""
    cfg = TrialConfig.from_dict(config)
    loaded = load_data(cfg, workers=workers or os.cpu_count() or 1)
    folds = range(int(cfg.data.folds)) if cfg.data.cross_validates else [None]
    parts = [split_data(loaded, cfg, fold=k) for k in folds]
    first = parts[0]
    return {
        "splits": dict(first.summary["splits"]),
        "fractures": dict(first.summary["fractures"]),
        "classes": {
            name: {int(k): int(v) for k, v in zip(*_unique(getattr(first, name).labels))}
            for name in ("train", "val", "test")
        },
        "val": sum(len(p.val) for p in parts),
        "val_fractures": sum(int((p.val.labels > 0).sum()) for p in parts),
        "folds": cfg.data.folds if cfg.data.cross_validates else None,
    }


def expected_validation(config: Mapping[str, Any]) -> dict[str, Any]:
    """About how many labeled crops (and fractures) the validation side of ``config``
    will score, without reading any image: from the phantom's plan, or from the labels
    CSV (before the view filter, so at most that many). With ``folds`` it is every
    non-test crop, each scored once by the fold that leaves it out."""
    from pipeline.data import load_labels
    from pipeline.synth import planned_labels

    cfg = TrialConfig.from_dict(config)
    d = cfg.data
    if d.data_dir:
        data_dir = Path(d.data_dir).expanduser()
        table = load_labels(Path(d.labels) if d.labels else data_dir / "labels.csv", data_dir)
        labels = [r.schatzker for r in table.rows if r.schatzker is not None]
        counts, source = {"labeled": len(labels), "fractured": sum(v > 0 for v in labels)}, "labels"
    else:
        counts = planned_labels(
            d.phantom_n,
            d.phantom_seed,
            size=d.phantom_size,
            labeled_fraction=d.phantom_labeled_fraction,
            fracture_rate=d.phantom_fracture_rate,
        )
        source = "phantom"
    share = (1.0 - d.test_fraction) if d.cross_validates else d.val_fraction
    return {
        "source": source,
        "labeled": counts["labeled"],
        "val": round(share * counts["labeled"]),
        "val_fractures": round(share * counts["fractured"]),
        "folds": d.folds if d.cross_validates else None,
    }


def _unique(labels: Any) -> tuple[Any, Any]:
    return np.unique(np.asarray(labels), return_counts=True)


def _limit_labeled(items: list[Any], limit: int, seed: int) -> list[Any]:
    """A seeded subset of ``limit`` labeled items that keeps at least one of each class."""
    rng = random.Random(seed)
    shuffled = sorted(items, key=lambda i: (i.file, i.laterality or ""))
    rng.shuffle(shuffled)
    by_class: dict[int, Any] = {}
    for item in shuffled:
        by_class.setdefault(item.label != 0, item)
    chosen = list(by_class.values())[:limit]
    rest = [i for i in shuffled if all(i is not c for c in chosen)]
    return chosen + rest[: limit - len(chosen)]


def _phantom_truth(data_dir: Path) -> dict[tuple[str, str | None], int]:
    """(file, laterality) -> true Schatzker grade, when the folder is a phantom set."""
    path = data_dir / "truth.jsonl"
    if not (data_dir / "synth.json").exists() or not path.exists():
        return {}
    truth: dict[tuple[str, str | None], int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            knees = rec.get("knees") or []
            for knee in knees:
                truth[(rec["file"], knee.get("laterality"))] = int(knee.get("schatzker", 0))
            truth[(rec["file"], None)] = int(rec.get("schatzker", 0))
    return truth


def _identity(pre_key: str, selected: Mapping[str, list[Any]]) -> str:
    """A stable name of what a trial trains on: preprocessing key + the split's images."""
    h = hashlib.sha256(pre_key.encode())
    for name in ("train", "unlabeled"):
        for item in sorted(selected[name], key=lambda i: (i.file, i.laterality or "")):
            h.update(f"{name}|{item.file}|{item.laterality}|{item.label}\n".encode())
    return h.hexdigest()[:24]


# ----------------------------------------------------------------------------- the trial


def run_trial(config: Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run one trial from DICOM to validation metrics (see the module docstring).

    ``report(row)`` is called once per epoch with a flat dict (``epoch``, ``val/auroc``,
    ``val/auroc_sem``, ``val/loss``, ...). Returns the metrics of the kept epoch plus
    ``data/*`` counts. Raises :class:`TrialConfigError` for a bad configuration and
    :class:`TrialError` (with the cause chained) for anything that stops the run.
    """
    from pipeline.train.runtime import using_threads

    cfg = TrialConfig.from_dict(config)
    try:
        with using_threads(cfg.train.threads):
            loaded = load_data(cfg)
            if cfg.data.cross_validates:
                return _cross_validate(cfg, loaded, report)
            prepared = split_data(loaded, cfg)
            result = _fit_fold(cfg, prepared, report, cfg.checkpoint_dir)
    except (TrialError, TrialConfigError):
        raise
    except Exception as e:
        raise TrialError(f"trial failed: {type(e).__name__}: {e}") from e
    metrics: dict[str, Any] = dict(result.metrics)
    metrics.update(_run_facts(result, prepared))
    return metrics


def _fit_fold(
    cfg: TrialConfig,
    prepared: PreparedData,
    report: Report | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    *,
    train: Any = None,
    until_epoch: int | None = None,
) -> Any:
    """Train on one fold's data; with a checkpoint folder, leave the model of record there."""
    from pipeline.train import fit

    result = fit(
        train or cfg.train,
        prepared.train_data(),
        report=report,
        checkpoint_dir=checkpoint_dir,
        cache_root=cache_root(cfg.data) / "stages",
        until_epoch=until_epoch,
    )
    if checkpoint_dir is not None and (until_epoch is None or until_epoch >= cfg.train.epochs):
        save_trial_model(result, prepared, cfg, Path(checkpoint_dir))
    return result


def save_trial_model(result: Any, prepared: PreparedData, cfg: TrialConfig, folder: Path) -> None:
    """The trial's model of record (``model.pt``, no export) with its validation threshold."""
    from pipeline.train import model_info, save_model

    info = model_info(
        result.model,
        in_chans=int(prepared.train.channels),
        drop_rate=cfg.train.drop_rate,
        threshold=result.threshold,
        threshold_source="validation (trial)",
        preprocess=cfg.preprocess,
        views=cfg.data.views,
        missing_view=cfg.data.missing_view,
    )
    save_model(result.model, folder, info)


#: what ``run_trial`` returns besides the kept epoch's report
RESULT_KEYS = (
    "best_epoch",
    "data/train_labeled",
    "data/unlabeled",
    "data/val",
    "data/val_fractures",
    "data/test_held_out",
    "cv/folds",
)


def trial_metrics(task: str, method: str) -> tuple[str, ...]:
    """Every metric a trial of ``task`` with ``method`` reports per epoch or returns:
    the names a search objective or outcome constraint may use."""
    from pipeline.train.loop import report_keys

    return (*report_keys(task, method), *RESULT_KEYS)


def _run_facts(result: Any, prepared: PreparedData) -> dict[str, Any]:
    return {
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "data/train_labeled": len(prepared.train),
        "data/unlabeled": len(prepared.unlabeled),
        "data/val": len(prepared.val),
        "data/val_fractures": int((prepared.val.labels > 0).sum()),
        "data/test_held_out": len(prepared.test),
    }


def _cross_validate(cfg: TrialConfig, loaded: LoadedData, report: Report | None) -> dict[str, Any]:
    """Train one model per fold, epoch by epoch side by side, and report after every
    epoch the mean over folds with its standard error (:func:`fold_mean`).

    Each fold keeps its own checkpoint (``checkpoint_dir/fold-K``), so a restarted
    trial continues every fold where it stopped; the time budget is shared equally.
    """
    folds = int(cfg.data.folds)
    data = [split_data(loaded, cfg, fold=k) for k in range(folds)]
    budget = cfg.train.time_budget_s
    train = cfg.train.replace(time_budget_s=budget / folds if budget else None)
    root = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    results: list[Any] = [None] * folds
    for epoch in range(1, cfg.train.epochs + 1):
        for k in range(folds):
            results[k] = _fit_fold(
                cfg,
                data[k],
                None,
                root / f"fold-{k}" if root is not None else None,
                train=train,
                until_epoch=epoch,
            )
        rows = [r.history[epoch - 1] for r in results if len(r.history) >= epoch]
        if len(rows) < folds:  # every fold stopped early (time budget): nothing new
            break
        if report is not None:
            report(fold_mean(rows))
    if root is not None and (root / "fold-0" / "model.pt").is_file():
        # the trial's model of record: fold 0's, beside the fold folders
        shutil.copy2(root / "fold-0" / "model.pt", root / "model.pt")
    metrics = fold_mean([r.metrics for r in results])
    metrics.update(_run_facts(results[0], data[0]))
    metrics["best_epoch"] = float(sum(r.best_epoch for r in results) / folds)
    metrics["cv/folds"] = folds
    metrics["data/val"] = sum(len(d.val) for d in data)
    metrics["data/val_fractures"] = sum(int((d.val.labels > 0).sum()) for d in data)
    return metrics


def fold_mean(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean over folds of every numeric key, and for each ``val/<m>`` its standard
    error ``val/<m>_sem``: the larger of the folds' spread (sd / sqrt K) and their
    pooled bootstrap errors (sqrt(sum sem_k^2) / K), so neither the training's nor the
    validation sample's noise is missed. ``epoch`` stays the epoch."""
    folds = len(rows)
    keys = [k for k in rows[0] if all(_number(r.get(k)) is not None for r in rows)]
    out: dict[str, Any] = {}
    for key in keys:
        if key.endswith("_sem"):
            continue
        values = [float(r[key]) for r in rows]
        mean = sum(values) / folds
        out[key] = mean
        if key.startswith("val/") and folds > 1:
            spread = (sum((v - mean) ** 2 for v in values) / (folds - 1)) ** 0.5 / folds**0.5
            sems = [_number(r.get(f"{key}_sem")) for r in rows]
            pooled = (
                (sum(v * v for v in sems) ** 0.5) / folds
                if all(v is not None for v in sems)
                else 0.0
            )
            out[f"{key}_sem"] = max(spread, pooled)
    if "epoch" in out:
        out["epoch"] = float(rows[0]["epoch"])
    return out


def _number(value: Any) -> float | None:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None
