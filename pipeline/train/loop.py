"""The one training loop: supervised, FixMatch and MixMatch share data path and loop.

``fit`` builds the model (through the cached pretraining stages), the imbalance loss
and sampler, and the method, then runs a Lightning ``Trainer`` on ``TrainModule``.
The module owns what every method shares (optimiser and schedule, EMA weights,
per-epoch seeding, validation metrics with the threshold chosen on validation,
early stopping, the time budget, ``report``), and asks the method object only for
the math of a step.

Reproducibility: every random stream (sampler, augmentation, MixUp, dropout) is
seeded from ``(seed, stream, epoch)`` at the start of each epoch, so a run resumed
from an end-of-epoch checkpoint follows the same path as one that never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset

from pipeline.io import atomic_write_bytes
from pipeline.registry import unknown_name_message
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
from pipeline.train.bootstrap import bootstrap_keys, bootstrap_sem
from pipeline.train.config import TrainConfig
from pipeline.train.losses import Loss, build_loss
from pipeline.train.methods import METHODS, Method, StepContext, build_method
from pipeline.train.metrics import classification_metrics, is_better, metric_keys
from pipeline.train.models import Classifier, ModelSpec, build_model
from pipeline.train.resident import choose_data_path, resident_loaders
from pipeline.train.runtime import (
    derive_seed,
    generator,
    peak_memory_mib,
    reset_peak_memory,
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


class TrainError(RuntimeError):
    """A training run that cannot start or go on; the message says why and what to do."""


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


# ----------------------------------------------------------------------------- module


class TrainModule(L.LightningModule):
    """Shared training step scaffolding; ``method.step`` supplies the loss math."""

    def __init__(
        self,
        *,
        config: TrainConfig,
        model: Classifier,
        loss_x: Loss,
        method: Method,
        steps_per_epoch: int,
        monitor: str,
        report: Report | None = None,
        channels_last: bool = False,
        checkpoint_path: Path | None = None,
        type_prior: torch.Tensor | None = None,
        val_groups: list[str] | None = None,
    ):
        super().__init__()
        self.config = config
        self.val_groups = val_groups  # (N_val,) patients: the bootstrap's unit
        self.type_prior = type_prior  # (C,) class shares the sampler draws
        self.model = model
        self.loss_x = loss_x
        self.method = method
        self.task = model.task
        self.steps_per_epoch = steps_per_epoch
        self.monitor = monitor
        self.report_fn = report
        self.channels_last = channels_last
        self.checkpoint_path = checkpoint_path
        self.ema: Classifier | None = None
        if method.uses_ema and config.ema_decay > 0:
            self.ema = copy.deepcopy(model)
            self.ema.requires_grad_(False)
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        # state kept in checkpoints
        self.history: list[dict[str, float]] = []
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_row: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.ema_steps = 0
        self.elapsed_s = 0.0
        self.stop_reason = ""
        # per-epoch scratch
        self._monitors: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._val_row: dict[str, float] = {}
        self._images = 0
        self._labeled = 0
        self._train_s = 0.0
        self._mark = 0.0

    # --- model plumbing

    def eval_model(self) -> Classifier:
        return self.ema if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.config.compile:
            if self._compiled is None:
                # kept out of the module tree: its weights are self.model's, saved once
                object.__setattr__(self, "_compiled", torch.compile(self.model))
            return self._compiled(x)
        return self.model(x)

    def configure_optimizers(self):
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay
            )
        else:
            opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        total = max(1, c.epochs * self.steps_per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- training

    def on_train_start(self) -> None:
        reset_peak_memory(self.device)  # the peak of this run: data, model, steps
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema.to(memory_format=torch.channels_last)
        if self.stop_reason in ("early_stop", "time_budget"):  # resumed after a stop
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        seed = self.config.seed
        self._generator = generator(seed, "augment", epoch)
        self._rng = np.random.default_rng(derive_seed(seed, "mix", epoch))
        self._monitors = defaultdict(list)
        self._images = self._labeled = 0
        self._train_s = 0.0
        self._mark = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # dropout / drop-path draw from the global generator: seed it per step so nothing
        # else that touches it (data-loader start-up, Lightning) can shift a run
        torch.manual_seed(derive_seed(self.config.seed, "torch", self.current_epoch, batch_idx))
        ctx = StepContext(
            model=self,
            loss_x=self.loss_x,
            generator=self._generator,
            rng=self._rng,
            progress=self.current_epoch + batch_idx / self.steps_per_epoch,
        )
        loss, monitors = self.method.step(ctx, batch)
        self._monitors["loss"].append(loss.detach())
        for key, value in monitors.items():
            self._monitors[key].append(torch.as_tensor(value).detach())
        self._labeled += len(batch["x"])
        self._images += len(batch["x"]) + (len(batch["u"]) if "u" in batch else 0)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self._update_ema()
        now = time.perf_counter()
        self._train_s += now - self._mark
        self.elapsed_s += now - self._mark
        self._mark = now
        budget = self.config.time_budget_s
        if budget is not None and self.elapsed_s >= budget and not self.trainer.should_stop:
            self.stop_reason = "time_budget"
            self.trainer.should_stop = True

    @torch.no_grad()
    def _update_ema(self) -> None:
        """EMA of the weights with a warm-up (decay min(d, (1 + n) / (10 + n)), as in timm),
        so short runs are not evaluated on near-initial weights; buffers are copied."""
        self.ema_steps += 1
        d = min(self.config.ema_decay, (1.0 + self.ema_steps) / (10.0 + self.ema_steps))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # --- validation

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = batch["x"]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.eval_model()(x).float()
        self._val.append((logits.cpu(), batch["y"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        logits = torch.cat([lg for lg, _ in self._val])  # (N, C)
        y = torch.cat([t for _, t in self._val])  # (N,)
        metrics = classification_metrics(
            torch.softmax(logits, dim=1),
            y,
            task=self.task,
            threshold_metric=self.config.threshold_metric,
            type_decision=self.config.type_decision,
            type_prior=self.type_prior,
        )
        row = {f"val/{k}": v for k, v in metrics.items()}
        row["val/loss"] = float(F.cross_entropy(logits, y))
        # how much of each score is noise: patient-level bootstrap, decision held fixed
        sem = bootstrap_sem(
            torch.softmax(logits, dim=1),
            y,
            self.val_groups,
            task=self.task,
            threshold=metrics["threshold"],
            seed=derive_seed(self.config.seed, "bootstrap", self.current_epoch),
            type_decision=self.config.type_decision,
            type_prior=self.type_prior,
        )
        row.update({f"val/{k}_sem": v for k, v in sem.items()})
        self._val_row = row

    # --- epoch end: report, select, stop

    def on_train_epoch_end(self) -> None:
        row: dict[str, float] = {"epoch": float(self.current_epoch + 1)}
        for key, values in self._monitors.items():
            v = torch.stack([t.float().cpu() for t in values])
            row[f"train/{key}"] = float(torch.nanmean(v)) if len(v) else float("nan")
        row["train/lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        row["train/epoch_s"] = self._train_s
        row["train/images_per_s"] = self._images / max(self._train_s, 1e-9)
        row["train/labeled_per_s"] = self._labeled / max(self._train_s, 1e-9)
        row["train/steps"] = float(len(self._monitors.get("loss", [])))
        # what this run needs of a GPU it may share with other trials (0 on the CPU)
        row["train/gpu_mem_mib"] = peak_memory_mib(self.device)
        row["time/elapsed_s"] = self.elapsed_s
        row.update(self._val_row)
        if self.monitor not in row:
            raise TrainError(unknown_name_message("monitored metric", self.monitor, sorted(row)))
        self.history.append(row)
        value = row[self.monitor]
        improved = is_better(value, self.best_value)
        if improved or self.best_state is None or self.config.select == "last":
            self.best_value = value if improved else self.best_value
            self.best_epoch = int(row["epoch"])
            self.best_row = dict(row)
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self.eval_model().state_dict().items()
            }
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        patience = self.config.early_stop_patience
        if patience is not None and self.bad_epochs >= patience and not self.stop_reason:
            self.stop_reason = "early_stop"
            self.trainer.should_stop = True
        if int(row["epoch"]) >= self.config.epochs and not self.stop_reason:
            self.stop_reason = "epochs"
        if self.checkpoint_path is not None:  # before reporting: a reported epoch is never lost
            self.trainer.save_checkpoint(self.checkpoint_path)
        if self.report_fn is not None:
            self.report_fn(dict(row))

    # --- checkpoint extras

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["radsearch"] = {
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_row": self.best_row,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "ema_steps": self.ema_steps,
            "elapsed_s": self.elapsed_s,
            "stop_reason": self.stop_reason,
            "method": self.method.state_dict(),
            "config": self.config.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("radsearch")
        if extra is None:
            raise TrainError("checkpoint was not written by pipeline.train (no 'radsearch' entry)")
        self.history = list(extra["history"])
        self.best_value = extra["best_value"]
        self.best_epoch = int(extra["best_epoch"])
        self.best_row = dict(extra["best_row"])
        self.best_state = extra["best_state"]
        self.bad_epochs = int(extra["bad_epochs"])
        self.ema_steps = int(extra["ema_steps"])
        self.elapsed_s = float(extra["elapsed_s"])
        self.stop_reason = str(extra["stop_reason"])
        self.method.load_state_dict(extra["method"])


# ----------------------------------------------------------------------------- checkpoints


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O through ``pipeline.io.atomic_write_bytes`` (temp file, fsync, rename)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        import io

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- fit


def _accelerator(device: torch.device) -> tuple[str, Any]:
    if device.type == "cuda":
        return "gpu", [device.index or 0]
    return "cpu", 1


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
    raw = dataset_labels(dataset)
    y = task.encode_many(raw)
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
    prior = class_priors(counts)
    loss_x = build_loss(
        config.loss, torch.as_tensor(counts), focal_gamma=config.focal_gamma, cb_beta=config.cb_beta
    )
    method = build_method(
        config.method,
        num_classes=task.num_classes,
        prior=prior,
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
        model = build_model(
            spec, priors=prior if loss_x.prior_bias else None, backbone_state=backbone_state
        )

    steps = config.steps_per_epoch or max(1, math.ceil(len(y) / config.batch_size))
    labeled_sampler = build_sampler(
        config.sampler,
        y,
        config.batch_size,
        steps,
        seed=derive_seed(config.seed, "sampler"),
        ratio=config.sampler_ratio,
    )
    type_prior = torch.as_tensor(
        labeled_sampler.class_shares(task.num_classes), dtype=torch.float32
    )  # (C,) the class prior the model is trained on
    unlabeled_sampler, u_y = None, None
    if method.uses_unlabeled:
        u_y = task.encode_many(hidden_labels(data.unlabeled))
        unlabeled_sampler = UniformSampler(
            np.zeros(len(data.unlabeled), dtype=np.int64),
            method.unlabeled_batch_size(config.batch_size),
            steps,
            seed=derive_seed(config.seed, "sampler/unlabeled"),
        )
    step_sampler = StepSampler(labeled_sampler, unlabeled_sampler)
    unlabeled = data.unlabeled if method.uses_unlabeled else None
    eval_batch = max(EVAL_BATCH, config.batch_size)
    device = resolve_device(config.device)
    # the same draws either way: read from the cache per step, or gathered on the device
    data_path, why = choose_data_path(config.data_path, device, data.labeled, unlabeled, data.val)
    log.info("data path: %s (%s)", data_path, why)
    if data_path == "device":
        train_loader, val_loader = resident_loaders(
            step_sampler,
            data.labeled,
            y,
            data.val,
            y_val,
            device=device,
            eval_batch_size=eval_batch,
            unlabeled=unlabeled,
            u_y=u_y,
        )
    else:
        train_loader = DataLoader(
            StepDataset(data.labeled, y, unlabeled, u_y),
            sampler=step_sampler,
            batch_size=None,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            generator=generator(config.seed, "loader/train"),
        )
        val_loader = DataLoader(
            EvalDataset(data.val, y_val),
            batch_size=eval_batch,
            shuffle=False,
            num_workers=config.num_workers,
            collate_fn=collate_eval,
            generator=generator(config.seed, "loader/val"),
        )

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
    accelerator, devices = _accelerator(device)
    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            precision=precision,
            max_epochs=min(config.epochs, until_epoch or config.epochs),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            plugins=[_AtomicCheckpointIO()],
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            default_root_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
            log_every_n_steps=max(1, steps),
        )
        trainer.fit(
            module,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
            ckpt_path=str(ckpt) if resuming else None,
            weights_only=False,
        )

    final = module.eval_model()
    if module.best_state is not None:
        final.load_state_dict(module.best_state)
    # the EMA copy was built without gradients; heat maps (GradCAM) need them
    final = final.cpu().eval().requires_grad_(True)
    if channels_last:
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
        runtime={
            "device": str(device),
            "precision": precision,
            "channels_last": channels_last,
            "compile": config.compile,
            "threads": torch.get_num_threads(),
            "data_path": data_path,
        },
        type_decision=config.type_decision,
        type_prior=type_prior,
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
