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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        if (self.fold is None) != (self.folds is None):
            raise TrialConfigError(
                "fold and folds go together: set both (fold in 0..folds-1) or neither"
            )
        if self.folds is not None and not 0 <= int(self.fold) < int(self.folds):
            raise TrialConfigError(f"fold must be in 0..{int(self.folds) - 1}, got {self.fold!r}")
        if self.labeled_limit is not None and int(self.labeled_limit) < 2:
            raise TrialConfigError(f"labeled_limit must be >= 2, got {self.labeled_limit!r}")


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
class PreparedData:
    """Datasets of one trial and the accounting of how they were made."""

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


def prepare_data(config: TrialConfig, *, progress: bool = False) -> PreparedData:
    """Read, preprocess (cached), join labels, filter views and split by patient."""
    from pipeline.data import CachedRadiographs, build_items, load_labels, make_splits
    from pipeline.preprocess import PreprocessConfig, build_cache

    d = config.data
    root = cache_root(d)
    data_dir = (
        Path(d.data_dir).expanduser().resolve()
        if d.data_dir
        else ensure_phantom(
            d.phantom_n,
            d.phantom_seed,
            d.phantom_size,
            root,
            labeled_fraction=d.phantom_labeled_fraction,
            fracture_rate=d.phantom_fracture_rate,
        )
    )
    if not data_dir.is_dir():
        raise TrialError(f"data_dir {data_dir} is not a folder")
    labels_csv = Path(d.labels).expanduser() if d.labels else data_dir / "labels.csv"
    table = load_labels(labels_csv, data_dir)
    pre = PreprocessConfig.from_trial(config.preprocess)
    files = dicom_files(data_dir, [r.file for r in table.rows])
    workers = d.preprocess_workers or config.train.threads or 1
    index = build_cache(
        files, pre, root / "preprocess", workers=workers, progress=progress, data_dir=data_dir
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
    fold = d.fold if d.folds else None
    selected = {
        name: splits.select(items.items, name, fold=fold if name in ("train", "val") else None)
        for name in ("train", "val", "test", "unlabeled")
    }
    if d.labeled_limit is not None and len(selected["train"]) > d.labeled_limit:
        selected["train"] = _limit_labeled(selected["train"], d.labeled_limit, d.split_seed)
    for name in ("train", "val"):
        if not selected[name]:
            raise TrialError(
                f"the {name} split is empty: {table.summary().get('usable', 0)} usable labels "
                f"in {labels_csv} are too few for val_fraction={d.val_fraction}, "
                f"test_fraction={d.test_fraction}"
            )

    def dataset(name: str) -> Any:
        return CachedRadiographs(
            selected[name], index, views=d.views, missing_view=d.missing_view, data_dir=data_dir
        )

    sets = {name: dataset(name) for name in selected}
    truth = _phantom_truth(data_dir)
    if truth:  # the phantom knows what it hides: feeds the pseudo-label accuracy monitor
        sets["unlabeled"].true_labels = [
            truth.get((i.file, i.laterality), -1) for i in sets["unlabeled"].items
        ]
    identity = _identity(pre.key(), selected)
    summary = {
        "data_dir": "phantom" if not d.data_dir else "user",
        "labels": table.summary(),
        "items": items.summary(),
        "cache": dict(getattr(index, "stats", {}) or {}),
        "cache_errors": len(index.errors),
        "splits": {name: len(sets[name]) for name in sets},
    }
    return PreparedData(
        data_dir=data_dir,
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        unlabeled=sets["unlabeled"],
        index=index,
        items=items,
        splits=splits,
        labels=table,
        identity=identity,
        summary=summary,
    )


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
    ``val/loss``, ...). Returns the metrics of the best validation epoch plus ``data/*``
    counts. Raises :class:`TrialConfigError` for a bad configuration and
    :class:`TrialError` (with the cause chained) for anything that stops the run.
    """
    from pipeline.train import fit
    from pipeline.train.runtime import using_threads

    cfg = TrialConfig.from_dict(config)
    try:
        with using_threads(cfg.train.threads):
            prepared = prepare_data(cfg)
            result = fit(
                cfg.train,
                prepared.train_data(),
                report=report,
                checkpoint_dir=cfg.checkpoint_dir,
                cache_root=cache_root(cfg.data) / "stages",
            )
    except (TrialError, TrialConfigError):
        raise
    except Exception as e:
        raise TrialError(f"trial failed: {type(e).__name__}: {e}") from e
    metrics: dict[str, Any] = dict(result.metrics)
    metrics.update(
        {
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "data/train_labeled": len(prepared.train),
            "data/unlabeled": len(prepared.unlabeled),
            "data/val": len(prepared.val),
            "data/test_held_out": len(prepared.test),
        }
    )
    return metrics
