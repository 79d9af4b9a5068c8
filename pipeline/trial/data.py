"""A trial's data: the phantom (generated once), the preprocessing cache, labels, splits.

``load_data`` builds what every trial of one data configuration reads (cached on disk);
``split_data`` gives one trial (one fold) its datasets; ``prepare`` is what the search
runs once before its trials, with every core; ``expected_validation`` estimates the
validation side's size without reading an image; ``labeled_set`` is another folder's
labeled crops for a model's one look at data from elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from pipeline.data import OUT_OF_SCOPE, CachedRadiographs, build_items, load_labels, make_splits
from pipeline.dicom import candidate_files
from pipeline.io import cache_home
from pipeline.preprocess import PreprocessConfig, build_cache
from pipeline.synth import generate, planned_labels
from pipeline.train import TrainData
from pipeline.trial.config import (
    PHANTOM_FRACTURE_RATE,
    PHANTOM_LABELED_FRACTION,
    DataConfig,
    TrialConfig,
    TrialError,
)


def cache_root(config: DataConfig) -> Path:
    """The trial's cache folder: ``cache_dir``, else ``$RADSEARCH_CACHE``."""
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
    found = {p.relative_to(data_dir).as_posix() for p in candidate_files(data_dir)}
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
    d = config.data
    workers = workers or d.preprocess_workers or config.train.threads or 1
    data_dir = data_folder(d, workers=workers)
    if not data_dir.is_dir():
        raise TrialError("data_dir is not a folder (data.data_dir in the space, or --data)")
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
    items = build_items(index, table, data_dir=data_dir, scope_policy=d.scope_policy)
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
                f"the {name} split is empty: {len(loaded.labels.labeled)} usable "
                f"labels in {loaded.labels_csv.name} are too few for "
                f"val_fraction={d.val_fraction}, test_fraction={d.test_fraction}"
            )

    sets = {name: _dataset(items, loaded, d) for name, items in selected.items()}
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
    other = TrialConfig.from_dict(
        {**config.to_dict(), "data_dir": str(data_dir), "labels": str(labels) if labels else None}
    )
    loaded = load_data(other, workers=workers)
    chosen = [i for i in loaded.items.items if i.labeled]
    if not chosen:
        raise TrialError(
            "the external data folder holds no labeled frontal-knee image to evaluate on"
        )
    return _dataset(chosen, loaded, other.data)


def _dataset(items: list[Any], loaded: LoadedData, d: DataConfig) -> Any:
    return CachedRadiographs(
        items, loaded.index, views=d.views, missing_view=d.missing_view, data_dir=loaded.data_dir
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
    items = loaded.items.summary()
    return {
        "splits": dict(first.summary["splits"]),
        # files kept out by the out-of-scope decision, by kind, and those whose tags disagree
        "out_of_scope": {
            k.removeprefix(OUT_OF_SCOPE): v
            for k, v in items["excluded_by_reason"].items()
            if k.startswith(OUT_OF_SCOPE)
        },
        "tag_pixel_disagreements": items["tag_pixel_disagreements"],
        "fractures": dict(first.summary["fractures"]),
        "classes": {
            name: dict(sorted(Counter(int(v) for v in getattr(first, name).labels).items()))
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
            for knee in rec.get("knees") or []:
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
