"""One trial inside a Ray worker: the trainable, its reports, and the faults it handles itself.

The wrapper gives the trainable (``pipeline.run_trial`` by default) its config (fixed
settings + Ax's parameters + ``checkpoint_dir`` = the trial's checkpoint folder in the
experiment folder, ``checkpoints/trial-0007`` + ``threads`` = its CPUs), forwards every
per-epoch report to Ray (with its checkpoint folder, for trial-level retries), opens
the trial's W&B run, and reports the trainable's final metrics marked as final (with
the folder holding the trial's model of record), so a trial a scheduler stopped is
never taken for a finished one. What it tells Ray names no host: the node is Ray's
node id.

Faults it handles itself, reported to the driver in the final result:

- a report whose loss diverged (:func:`divergence`: a non-finite loss, or a training
  loss above ``divergence_factor`` times its first value) stops the trainable; the
  trial ends ``early_stopped`` with the reason (``failed`` when no epoch had a score);
- out of memory: one retry with half the batch size (from scratch), then ``failed``
  with the reason; the retry and the reduced batch are recorded for the trial;
- values the trainable returns that are not finite are never replaced by an earlier
  epoch's (a NaN objective fails the trial).

Anything else it raises fails the Ray trial (retried by Ray's ``max_failures``, from the
last checkpoint reported with ``tune.report``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.cloudpickle
from ray import tune

import pipeline
from search.errors import TrainableError
from search.keys import (
    BATCH_KEY,
    FINAL_KEY,
    INDEX_KEY,
    NONFINITE_KEY,
    OUTCOME_KEY,
    REASON_KEY,
    RETRY_KEY,
)
from search.tracking import TrackingSetup, TrialRun
from search.values import as_float, finite, finite_or_none

log = logging.getLogger(__name__)

Trainable = Callable[[dict, Callable[[dict], None]], dict]
#: the training loss a trial reports each epoch (the first of these present)
TRAIN_LOSS_KEYS = ("train/loss", "loss")
#: losses that must stay finite (any non-finite value is a divergence)
LOSS_KEYS = ("train/loss", "loss", "val/loss")
#: the trial's model of record in its checkpoint folder (``pipeline.train.saved``)
MODEL_FILE = "model.pt"


def default_trainable() -> Trainable:
    """``pipeline.run_trial``, the trial entry point."""
    return pipeline.run_trial  # type: ignore[no-any-return]


def load_trainable(spec: str) -> Trainable:
    """``package.module:function`` or ``path/to/file.py:function`` -> the callable.

    A function from a file is sent to Ray workers by value, so the file need not be
    importable there.
    """
    if ":" not in spec:
        raise TrainableError(f"--trainable {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    target, func = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise TrainableError(f"--trainable {spec!r}: file not found: {path}")
        name = f"_radsearch_trainable_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise TrainableError(f"--trainable {spec!r}: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        ray.cloudpickle.register_pickle_by_value(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise TrainableError(f"--trainable {spec!r}: cannot import {target}: {e}") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise TrainableError(f"--trainable {spec!r}: {target} has no function {func!r}")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class TrialSetup:
    """What every trial worker needs besides Ax's parameters (sent to Ray workers).

    ``default_batch_size``: the trainable's batch size when the config does not set one
    (``run_trial``'s default), halved once when a trial runs out of memory.
    ``divergence_factor``: see :func:`divergence`.
    ``checkpoints``: the folder of the trials' checkpoint folders (``trial-0007``), in the
    experiment folder; None: inside each Ray trial's folder.
    """

    trainable: Trainable
    base: dict[str, Any]
    threads: int
    tracking: TrackingSetup
    experiment: str
    resume_from: dict[int, str] = field(default_factory=dict)
    default_batch_size: int | None = None
    divergence_factor: float = 10.0
    checkpoints: str | None = None


def checkpoint_name(index: int) -> str:
    """The checkpoint folder of the trial with Ax index ``index``."""
    return f"trial-{index:04d}"


# ------------------------------------------------------------------------------------------
# Faults inside a trial: divergence, running out of memory
# ------------------------------------------------------------------------------------------
def divergence(
    row: Mapping[str, Any], first_loss: float | None, *, factor: float = 10.0
) -> str | None:
    """Why one per-epoch report shows that training diverged, or ``None``.

    Diverged means: a loss (``train/loss``, ``loss``, ``val/loss``) is not finite, or
    the training loss exceeds ``factor`` times its first finite (positive) value. The
    rule is applied by the search to every trial's reports, so any trainable stops on it.
    """
    epoch = row.get("epoch")
    at = f" at epoch {int(epoch)}" if finite(epoch) else ""
    for key in LOSS_KEYS:
        value = as_float(row.get(key))
        if isinstance(value, float) and not math.isfinite(value):
            return f"diverged: {key} is {value}{at}"
    loss = _train_loss(row)
    if (
        loss is not None
        and first_loss is not None
        and first_loss > 0
        and factor * first_loss < loss
    ):
        return (
            f"diverged: train loss {loss:.4g} > {factor:g} x its first value {first_loss:.4g}{at}"
        )
    return None


def _train_loss(row: Mapping[str, Any]) -> float | None:
    return next((float(as_float(row[k])) for k in TRAIN_LOSS_KEYS if finite(row.get(k))), None)


class TrialDiverged(Exception):
    """Raised from ``report`` to stop a trainable whose loss diverged."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (``raise ... from``) and contexts, each once."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend((e.__cause__, e.__context__))


def find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s chain, else ``None``."""
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def out_of_memory(exc: BaseException) -> BaseException | None:
    """The out-of-memory error in ``exc``'s chain (``torch.OutOfMemoryError``, CUDA's
    "out of memory" RuntimeError, or Python's ``MemoryError``), else ``None``."""
    for e in _chain(exc):
        if isinstance(e, MemoryError):
            return e
        if any(c.__name__ == "OutOfMemoryError" for c in type(e).__mro__):
            return e
        if isinstance(e, RuntimeError) and "CUDA out of memory" in str(e):
            return e
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` or one of its causes is an out-of-memory error."""
    return out_of_memory(exc) is not None


def _free_memory() -> None:
    """Release what an out-of-memory attempt left before the retry."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ((k, finite_or_none(v)) for k, v in metrics.items()) if v is not None}


# ------------------------------------------------------------------------------------------
# The trial
# ------------------------------------------------------------------------------------------
class TrialWorker:
    """One Ray trial: runs the trainable (retrying once on out of memory) and reports."""

    def __init__(self, config: dict[str, Any], setup: TrialSetup):
        self.setup = setup
        self.index = int(config[INDEX_KEY])
        params = {k: v for k, v in config.items() if k != INDEX_KEY}
        self.checkpoint_dir = (
            Path(setup.checkpoints) / checkpoint_name(self.index)
            if setup.checkpoints
            else Path(tune.get_context().get_trial_dir()) / "checkpoint"
        )
        restored = tune.get_checkpoint()
        resume_from = Path(setup.resume_from.get(self.index) or self.checkpoint_dir)
        if restored is not None:  # Ray retries this trial: continue from its checkpoint
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            restored.to_directory(str(self.checkpoint_dir))
        elif self.index in setup.resume_from and resume_from.is_dir():
            if resume_from.resolve() != self.checkpoint_dir.resolve():
                shutil.copytree(resume_from, self.checkpoint_dir, dirs_exist_ok=True)
        else:  # a first start: what an earlier attempt left is not this run's
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.config = {
            **setup.base,
            **params,
            "checkpoint_dir": str(self.checkpoint_dir),
            "threads": setup.threads,
        }
        # Ray's node id, not the host name or address: trials.csv may be shared
        self.node = ray.get_runtime_context().get_node_id()[:8]
        self.run = TrialRun(
            setup.tracking,
            name=f"{setup.experiment}-trial-{self.index:03d}",
            config={**self.config, "trial": self.index},
            tags=("trial",),
        )
        self.epochs = 0
        self.last: dict[str, Any] = {}
        self.first_loss: float | None = None
        self.retry: dict[str, Any] = {}
        self.report_seconds = 0.0
        self.ended = False  # the trial reported its own end (diverged, out of memory twice)

    def _tags(self) -> dict[str, Any]:
        return {**self.retry, "node": self.node, INDEX_KEY: self.index}

    def report(self, metrics: Mapping[str, Any]) -> None:
        """The trainable's per-epoch report: checked for divergence, logged, sent to Ray."""
        t0 = time.perf_counter()
        reason = divergence(metrics, self.first_loss, factor=self.setup.divergence_factor)
        if reason is not None:
            self.run.log(metrics, step=self.epochs + 1)
            raise TrialDiverged(reason)
        if self.first_loss is None:
            self.first_loss = _train_loss(metrics)
        epoch = metrics.get("epoch")
        self.epochs = int(epoch) if finite(epoch) else self.epochs + 1
        self.last = {**_scalars(metrics), "epoch": self.epochs}
        self.run.log(metrics, step=self.epochs)
        checkpoint = None
        if any(self.checkpoint_dir.iterdir()):
            checkpoint = tune.Checkpoint.from_directory(str(self.checkpoint_dir))
        tune.report({**self.last, **self._tags()}, checkpoint=checkpoint)
        self.report_seconds += time.perf_counter() - t0

    def end(self, outcome: str, reason: str) -> None:
        """Report the trial's own verdict as its final result (no Ray retry)."""
        self.run.summary({**self.last, "stopped": reason})
        self.run.finish(failed=outcome == "failed")
        tune.report(
            {**self.last, **self._tags(), FINAL_KEY: 1, OUTCOME_KEY: outcome, REASON_KEY: reason}
        )

    def __call__(self) -> None:
        t_start = time.perf_counter()
        final: Mapping[str, Any] | None = None
        for attempt in (1, 2):
            try:
                final = self.setup.trainable(self.config, self.report)
                break
            except SystemExit as e:  # Ray ends a trial its scheduler stopped: sys.exit(0)
                stopped = e.code in (0, None)
                if stopped:
                    self.run.summary({**self.last, "stopped_early": True})
                self.run.finish(failed=not stopped)
                raise
            except BaseException as e:
                if not self._handled(e, attempt):
                    self.run.finish(failed=True)
                    raise
                if self.ended:
                    return
        self._final(final or {}, time.perf_counter() - t_start - self.report_seconds)

    def _handled(self, e: BaseException, attempt: int) -> bool:
        """Divergence ends the trial; out of memory retries once with half the batch.

        Returns False for anything else (re-raised for Ray); sets ``ended`` when the trial
        has reported its own end."""
        diverged = find_in_chain(e, TrialDiverged)
        if diverged is not None:
            self.end("early_stopped", diverged.reason)  # type: ignore[attr-defined]
            self.ended = True
            return True
        oom = None if isinstance(e, KeyboardInterrupt) else out_of_memory(e)
        if oom is None:
            return False
        batch = self.config.get("batch_size", self.setup.default_batch_size)
        text = str(oom).splitlines()[0] if str(oom) else ""
        what = f"{type(oom).__name__}: {text}".rstrip(": ")
        if attempt == 2 or not isinstance(batch, int) or batch < 2:
            tried = f" (after a retry: {self.retry[RETRY_KEY]})" if RETRY_KEY in self.retry else ""
            hint = (
                "lower batch_size or image_size, or give each trial more memory "
                "(--gpus-per-trial, --cpus-per-trial)"
            )
            self.end("failed", f"out of memory at batch_size {batch}{tried}: {what}; {hint}")
            self.ended = True
            return True
        smaller = batch // 2
        self.retry = {
            RETRY_KEY: f"out of memory at batch_size {batch}; retried with batch_size {smaller}",
            BATCH_KEY: smaller,
        }
        log.warning("trial %s: %s", self.index, self.retry[RETRY_KEY])
        self.config = {**self.config, "batch_size": smaller}
        # from scratch: a checkpoint of the larger batch does not carry over
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.epochs, self.last, self.first_loss = 0, {}, None
        _free_memory()
        return True

    def _final(self, final: Mapping[str, Any], trainable_s: float) -> None:
        """The trainable returned: its metrics, marked final, with its model of record."""
        final_scalars = _scalars(final)
        nonfinite = {
            k: v
            for k, v in final.items()
            if k not in final_scalars and isinstance(as_float(v), float)
        }
        result = {k: v for k, v in self.last.items() if k not in nonfinite}
        result.update(final_scalars)
        if self.epochs:  # "epoch" counts the epochs run; a trainable's own "epoch" is its best
            if final_scalars.get("epoch", self.epochs) != self.epochs:
                result["best_epoch"] = final_scalars["epoch"]
            result["epoch"] = self.epochs
        result.setdefault("epoch", 0)
        self.run.summary(result)
        self.run.finish()
        extra: dict[str, Any] = {}
        if nonfinite:
            extra[NONFINITE_KEY] = ", ".join(f"{k}={as_float(v)}" for k, v in nonfinite.items())
        checkpoint = None
        if (self.checkpoint_dir / MODEL_FILE).is_file():  # promote compares against it
            checkpoint = tune.Checkpoint.from_directory(str(self.checkpoint_dir))
        tune.report(
            {**result, **extra, **self._tags(), FINAL_KEY: 1, "search/trainable_s": trainable_s},
            checkpoint=checkpoint,
        )


def make_trial_function(setup: TrialSetup) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable bound to ``setup`` (its body runs in a Ray worker)."""

    def trial(config: dict[str, Any]) -> None:
        TrialWorker(config, setup)()

    return trial
