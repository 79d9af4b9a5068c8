"""The Lightning module every training method runs in: what the methods share.

``TrainModule`` owns the optimiser and its cosine schedule, the EMA weights, per-epoch
seeding, the validation metrics with the threshold chosen on validation and their
bootstrap standard errors, the kept epoch (best or last), early stopping, the time
budget, the checkpoint written before each report, and ``report``; the method object
(``pipeline.train.methods``) supplies only the math of a step.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pipeline.io import atomic_write_bytes
from pipeline.registry import unknown_name_message
from pipeline.train.bootstrap import bootstrap_sem
from pipeline.train.config import TrainConfig
from pipeline.train.losses import Loss
from pipeline.train.methods import Method, StepContext
from pipeline.train.metrics import classification_metrics, is_better
from pipeline.train.models import Classifier
from pipeline.train.runtime import derive_seed, generator, peak_memory_mib, reset_peak_memory

Report = Callable[[dict[str, float]], None]


#: the attributes of ``TrainModule`` a checkpoint carries besides the weights
_RUN_STATE = (
    "history",
    "best_value",
    "best_epoch",
    "best_row",
    "best_state",
    "bad_epochs",
    "ema_steps",
    "elapsed_s",
    "stop_reason",
)


class TrainError(RuntimeError):
    """A training run that cannot start or go on; the message says why and what to do."""


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
        # state kept in checkpoints (_RUN_STATE)
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
            **{key: getattr(self, key) for key in _RUN_STATE},
            "method": self.method.state_dict(),
            "config": self.config.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("radsearch")
        if extra is None:
            raise TrainError("checkpoint was not written by pipeline.train (no 'radsearch' entry)")
        for key in _RUN_STATE:
            setattr(self, key, extra[key])
        self.method.load_state_dict(extra["method"])


# ----------------------------------------------------------------------------- checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O through ``pipeline.io.atomic_write_bytes`` (temp file, fsync, rename)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
