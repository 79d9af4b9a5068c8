"""The one training loop: supervised, FixMatch and MixMatch share data path and loop.

``fit`` builds the model (through the cached pretraining stages), the imbalance loss
and sampler, and the method, then runs a Lightning ``Trainer`` on ``TrainModule``
(:mod:`pipeline.train.module`: what every method shares).

Reproducibility: every random stream (sampler, augmentation, MixUp, dropout) is
seeded from ``(seed, stream, epoch)`` at the start of each epoch, so a run resumed
from an end-of-epoch checkpoint follows the same path as one that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.train.batches import (
    EvalDataset,
    StepDataset,
    StepSampler,
    TrainData,
    collate_eval,
    dataset_groups,
    dataset_labels,
    hidden_labels,
)
from pipeline.train.bootstrap import bootstrap_keys
from pipeline.train.config import TrainConfig
from pipeline.train.losses import Loss, build_loss
from pipeline.train.methods import METHODS, Method, build_method
from pipeline.train.metrics import classification_metrics, metric_keys
from pipeline.train.models import Classifier, ModelSpec, build_model
from pipeline.train.module import AtomicCheckpointIO, TrainError, TrainModule
from pipeline.train.resident import choose_data_path, resident_loaders
from pipeline.train.runtime import (
    derive_seed,
    generator,
    resolve_device,
    resolve_precision,
    seeded,
    using_threads,
)
from pipeline.train.samplers import UniformSampler, build_sampler
from pipeline.train.stages import Pretrained, pretrain
from pipeline.train.tasks import Task, class_priors, get_task

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float]], None]
CHECKPOINT_NAME = "last.pt"
EVAL_BATCH = 128


#: keys of every per-epoch report besides the method's monitors and the validation metrics
TRAIN_KEYS = (
    "epoch",
    "train/loss",
    "train/lr",
    "train/epoch_s",
    "train/images_per_s",
    "train/labeled_per_s",
    "train/steps",
    "train/gpu_mem_mib",
    "time/elapsed_s",
)


def report_keys(task: str, method: str) -> tuple[str, ...]:
    """Every key of the per-epoch report of a run of ``task`` with ``method``: the
    training monitors, ``val/<metric>``, ``val/loss`` and ``val/<metric>_sem``."""
    t = get_task(task)
    return (
        *TRAIN_KEYS,
        *(f"train/{k}" for k in METHODS.get(method).monitors),
        *(f"val/{k}" for k in metric_keys(t)),
        "val/loss",
        *(f"val/{k}_sem" for k in bootstrap_keys(t)),
    )


def default_monitor(task: Task) -> str:
    """The validation objective early stopping and model selection maximise."""
    return "val/macro_f1" if task.is_multiclass else "val/auroc"


# ----------------------------------------------------------------------------- result


@dataclass
class FitResult:
    """What ``fit`` returns: the model at its best validation epoch and how it got there.

    ``metrics``: the flat report row of the best epoch (``val/auroc``, ...);
    ``threshold``: the decision threshold chosen on validation at that epoch (pass it
    to ``evaluate`` on the test set); ``model``: the evaluated weights (EMA when the
    method keeps one), on the CPU, in eval mode. ``type_decision`` and ``type_prior``
    (C,): how 7-class probabilities become one class (``metrics.type_predictions``);
    the model carries both as attributes, so ``evaluate`` applies the same rule.
    """

    metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    threshold: float
    model: Classifier
    stop_reason: str
    monitor: str
    pretrained: Pretrained | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # device, precision, channels_last, compile, threads, data_path
    runtime: dict[str, Any] = field(default_factory=dict)
    type_decision: str = "argmax"
    type_prior: torch.Tensor | None = None


@dataclass
class Evaluation:
    """Metrics of a model on a labeled dataset, with the probabilities behind them."""

    metrics: dict[str, float]
    probs: torch.Tensor  # (N, C) in the task's class order
    targets: torch.Tensor  # (N,) class indices
    threshold: float


# ----------------------------------------------------------------------------- fit


@contextlib.contextmanager
def _quiet_lightning():
    """Keep Lightning's start-up banners and data-loader hints out of trial logs."""
    names = ["lightning.pytorch", "lightning.fabric", "pytorch_lightning"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*number of training batches.*")
        warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=r".*treespec.*")  # Lightning vs torch pytree API
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def _labels_of(task: Task, dataset: Dataset, what: str) -> np.ndarray:
    y = task.encode_many(dataset_labels(dataset))
    if len(y) == 0:
        raise TrainError(f"the {what} set is empty")
    if (y < 0).any():
        raise TrainError(
            f"the {what} set has {int((y < 0).sum())} unlabeled items (label -1); "
            "put them in TrainData.unlabeled"
        )
    return y


def fit(
    config: TrainConfig | dict[str, Any],
    data: TrainData,
    *,
    report: Report | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    cache_root: str | os.PathLike[str] | None = None,
    backbone_state: dict[str, torch.Tensor] | None = None,
    monitor: str | None = None,
    until_epoch: int | None = None,
) -> FitResult:
    """Train one model on ``data`` as ``config`` says; return the kept epoch's model.

    - ``report(row)`` gets one flat dict per epoch (``epoch``, ``train/loss``,
      ``val/auroc``, ``train/mask_rate``, ``train/images_per_s``, ...;
      ``train/gpu_mem_mib``: the run's peak GPU memory so far, 0 on the CPU).
    - ``config.data_path`` says where batches come from (the cache loader or the
      device-resident crops, ``pipeline.train.resident``); both give the same batches.
    - ``checkpoint_dir``: ``last.pt`` is written there atomically after each epoch; when
      it exists at start, the run resumes from it and ends with the same metrics as
      an uninterrupted run.
    - ``cache_root``: where pretraining stages are cached (default ``$RADSEARCH_CACHE``).
    - ``backbone_state``: start from these backbone weights instead of running the
      configured pretraining stages.
    - ``monitor``: the validation metric to maximise (default AUROC for the binary
      task, macro-F1 for the 7-class ones).
    - ``until_epoch``: stop after this epoch (with ``checkpoint_dir``, a later call
      continues from there): the schedule is still the one of ``config.epochs``.
      Cross-validation runs its folds side by side this way.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    with using_threads(config.threads):
        return _fit(
            config, data, report, checkpoint_dir, cache_root, backbone_state, monitor, until_epoch
        )


def _fit(
    config: TrainConfig,
    data: TrainData,
    report: Report | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    cache_root: str | os.PathLike[str] | None,
    backbone_state: dict[str, torch.Tensor] | None,
    monitor: str | None,
    until_epoch: int | None = None,
) -> FitResult:
    task = get_task(config.task)
    monitor = monitor or default_monitor(task)
    y = _labels_of(task, data.labeled, "labeled training")
    y_val = _labels_of(task, data.val, "validation")
    counts = np.bincount(y, minlength=task.num_classes)
    loss_x, method = _loss_and_method(config, task, counts, data)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    resuming = ckpt is not None and ckpt.exists()
    pretrained: Pretrained | None = None
    if backbone_state is None and not resuming:
        pretrained = pretrain(config, data, cache_root=cache_root)
        backbone_state = pretrained.state
    spec = ModelSpec(
        backbone=config.backbone,
        task=config.task,
        in_chans=data.in_chans(),
        pretrained="none" if resuming else config.pretrained,
        drop_rate=config.drop_rate,
    )
    with seeded(config.seed, "init/model"):
        prior = class_priors(counts) if loss_x.prior_bias else None
        model = build_model(spec, priors=prior, backbone_state=backbone_state)
    steps = config.steps_per_epoch or max(1, math.ceil(len(y) / config.batch_size))
    sampler, type_prior = _step_sampler(config, task, method, y, data, steps)
    device = resolve_device(config.device)
    loaders, data_path = _loaders(config, method, data, y, y_val, sampler, device)
    precision = resolve_precision(config.precision, device)
    channels_last = (
        config.channels_last if config.channels_last is not None else device.type == "cuda"
    )
    module = TrainModule(
        config=config,
        model=model,
        loss_x=loss_x,
        method=method,
        steps_per_epoch=steps,
        monitor=monitor,
        report=report,
        channels_last=channels_last,
        checkpoint_path=ckpt,
        type_prior=type_prior,
        val_groups=dataset_groups(data.val),
    )
    _train(module, loaders, device, precision, config, until_epoch, checkpoint_dir, ckpt, steps)
    runtime = {
        "device": str(device),
        "precision": precision,
        "channels_last": channels_last,
        "compile": config.compile,
        "threads": torch.get_num_threads(),
        "data_path": data_path,
    }
    return _result(module, config, monitor, pretrained, type_prior, runtime)


def _result(
    module: TrainModule,
    config: TrainConfig,
    monitor: str,
    pretrained: Pretrained | None,
    type_prior: torch.Tensor,
    runtime: dict[str, Any],
) -> FitResult:
    """The kept epoch's model (CPU, eval mode, contiguous) and how it got there."""
    final = module.eval_model()
    if module.best_state is not None:
        final.load_state_dict(module.best_state)
    # the EMA copy was built without gradients; heat maps (GradCAM) need them
    final = final.cpu().eval().requires_grad_(True)
    if runtime["channels_last"]:
        final = final.to(memory_format=torch.contiguous_format)
    final.type_decision, final.type_prior = config.type_decision, type_prior
    return FitResult(
        metrics=dict(module.best_row),
        history=list(module.history),
        best_epoch=module.best_epoch,
        threshold=float(module.best_row.get("val/threshold", 0.5)),
        model=final,
        stop_reason=module.stop_reason or "epochs",
        monitor=monitor,
        pretrained=pretrained,
        config=config.to_dict(),
        runtime=runtime,
        type_decision=config.type_decision,
        type_prior=type_prior,
    )


def _loss_and_method(
    config: TrainConfig, task: Task, counts: np.ndarray, data: TrainData
) -> tuple[Loss, Method]:
    """The labeled loss (imbalance-aware) and the method with its settings."""
    loss_x = build_loss(
        config.loss, torch.as_tensor(counts), focal_gamma=config.focal_gamma, cb_beta=config.cb_beta
    )
    method = build_method(
        config.method,
        num_classes=task.num_classes,
        prior=class_priors(counts),
        pseudo_label_threshold=config.pseudo_label_threshold,
        lambda_u=config.lambda_u,
        mu=config.mu,
        dist_align=config.dist_align,
        T=config.T,
        K=config.K,
        alpha=config.alpha,
        rampup_epochs=config.rampup_epochs,
    )
    if method.uses_unlabeled and (data.unlabeled is None or len(data.unlabeled) == 0):
        raise TrainError(
            f"method {config.method!r} needs unlabeled images; TrainData.unlabeled is empty"
        )
    return loss_x, method


def _step_sampler(
    config: TrainConfig, task: Task, method: Method, y: np.ndarray, data: TrainData, steps: int
) -> tuple[StepSampler, torch.Tensor]:
    """What each step draws (labeled indices, and unlabeled ones for semi-supervised
    methods), and the class prior the labeled draws make (C,)."""
    labeled = build_sampler(
        config.sampler,
        y,
        config.batch_size,
        steps,
        seed=derive_seed(config.seed, "sampler"),
        ratio=config.sampler_ratio,
    )
    type_prior = torch.as_tensor(labeled.class_shares(task.num_classes), dtype=torch.float32)
    unlabeled = None
    if method.uses_unlabeled:
        unlabeled = UniformSampler(
            np.zeros(len(data.unlabeled), dtype=np.int64),
            method.unlabeled_batch_size(config.batch_size),
            steps,
            seed=derive_seed(config.seed, "sampler/unlabeled"),
        )
    return StepSampler(labeled, unlabeled), type_prior


def _loaders(
    config: TrainConfig,
    method: Method,
    data: TrainData,
    y: np.ndarray,
    y_val: np.ndarray,
    sampler: StepSampler,
    device: torch.device,
) -> tuple[tuple[Any, Any], str]:
    """(train, validation) loaders and the data path: the same draws either way, read from
    the cache per step, or gathered on the device."""
    unlabeled = data.unlabeled if method.uses_unlabeled else None
    # the true labels an unlabeled set hides: for the pseudo-label accuracy monitor only
    u_y = None if unlabeled is None else get_task(config.task).encode_many(hidden_labels(unlabeled))
    eval_batch = max(EVAL_BATCH, config.batch_size)
    data_path, why = choose_data_path(config.data_path, device, data.labeled, unlabeled, data.val)
    log.info("data path: %s (%s)", data_path, why)
    if data_path == "device":
        loaders = resident_loaders(
            sampler,
            data.labeled,
            y,
            data.val,
            y_val,
            device=device,
            eval_batch_size=eval_batch,
            unlabeled=unlabeled,
            u_y=u_y,
        )
        return loaders, data_path
    train = DataLoader(
        StepDataset(data.labeled, y, unlabeled, u_y),
        sampler=sampler,
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        generator=generator(config.seed, "loader/train"),
    )
    val = DataLoader(
        EvalDataset(data.val, y_val),
        batch_size=eval_batch,
        shuffle=False,
        num_workers=config.num_workers,
        collate_fn=collate_eval,
        generator=generator(config.seed, "loader/val"),
    )
    return (train, val), data_path


def _train(
    module: TrainModule,
    loaders: tuple[Any, Any],
    device: torch.device,
    precision: str,
    config: TrainConfig,
    until_epoch: int | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    ckpt: Path | None,
    steps: int,
) -> None:
    """Lightning's Trainer over the module, resumed from ``ckpt`` when it exists."""
    on_gpu = device.type == "cuda"
    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator="gpu" if on_gpu else "cpu",
            devices=[device.index or 0] if on_gpu else 1,
            precision=precision,
            max_epochs=min(config.epochs, until_epoch or config.epochs),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            plugins=[AtomicCheckpointIO()],
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            default_root_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
            log_every_n_steps=max(1, steps),
        )
        trainer.fit(
            module,
            train_dataloaders=loaders[0],
            val_dataloaders=loaders[1],
            ckpt_path=str(ckpt) if ckpt is not None and ckpt.exists() else None,
            weights_only=False,
        )


# ----------------------------------------------------------------------------- evaluate


@torch.no_grad()
def predict(
    model: Classifier,
    dataset: Dataset,
    *,
    batch_size: int = EVAL_BATCH,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Class probabilities (N, C) of every item and the items' raw labels (N,)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    raw = dataset_labels(dataset)
    loader = DataLoader(
        EvalDataset(dataset, np.zeros(len(raw), dtype=np.int64)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_eval,
    )
    was_training = model.training
    model.eval().to(device)
    probs = [torch.softmax(model(b["x"].to(device)).float(), dim=1).cpu() for b in loader]
    model.train(was_training)
    return torch.cat(probs), raw


def evaluate(
    model: Classifier,
    dataset: Dataset,
    *,
    threshold: float | None = None,
    threshold_metric: str = "f2",
    batch_size: int = EVAL_BATCH,
    device: torch.device | str | None = None,
    type_decision: str | None = None,
    type_prior: torch.Tensor | None = None,
) -> Evaluation:
    """Metrics of ``model`` on a labeled ``dataset`` (items labeled -1 are left out).

    ``threshold`` None chooses it on this dataset (use only on validation); for a test
    set pass ``FitResult.threshold``. ``type_decision`` / ``type_prior`` default to the
    ones ``fit`` attached to the model (``"argmax"`` for a model built elsewhere).
    """
    if type_decision is None:
        type_decision = getattr(model, "type_decision", "argmax")
    if type_prior is None:
        type_prior = getattr(model, "type_prior", None)
    probs, raw = predict(model, dataset, batch_size=batch_size, device=device)
    y = model.task.encode_many(raw)
    keep = y >= 0
    probs, targets = probs[torch.as_tensor(keep)], torch.as_tensor(y[keep])
    metrics = classification_metrics(
        probs,
        targets,
        task=model.task,
        threshold=threshold,
        threshold_metric=threshold_metric,
        type_decision=type_decision,
        type_prior=type_prior,
    )
    return Evaluation(metrics, probs, targets, metrics["threshold"])
