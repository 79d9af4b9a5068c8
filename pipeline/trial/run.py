"""Running a trial: train (one fold, or every fold side by side), report, keep its model."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.train import fit, model_info, save_model
from pipeline.train.loop import report_keys
from pipeline.train.runtime import using_threads
from pipeline.trial.config import TrialConfig, TrialConfigError, TrialError, _plain
from pipeline.trial.data import LoadedData, PreparedData, cache_root, load_data, split_data

Report = Callable[[dict[str, Any]], None]


def run_trial(config: Mapping[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run one trial from DICOM to validation metrics (see the module docstring).

    ``report(row)`` is called once per epoch with a flat dict (``epoch``, ``val/auroc``,
    ``val/auroc_sem``, ``val/loss``, ...). Returns the metrics of the kept epoch plus
    ``data/*`` counts. Raises :class:`TrialConfigError` for a bad configuration and
    :class:`TrialError` (with the cause chained) for anything that stops the run.
    """
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
