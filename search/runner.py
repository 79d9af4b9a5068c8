"""Run and resume searches: Ax proposes, Ray Tune schedules, the folder records.

:func:`run_search` creates ``results/<name>/`` and runs the budget; :func:`resume_search`
continues an experiment whose driver stopped (Ctrl-C, a crash, SIGKILL). The truth lives
in the experiment folder, written atomically after every change: the Ax state
(``ax_state.json``) and the trial records (``experiment.json`` / ``trials.csv``). On
resume, trials Ax knows as finished stay finished; trials that were running are run
again with the same Ax index and parameters, from their last checkpoint when Ray kept
one; then the rest of the budget runs. Each run or resume is one Ray Tune session
(``ray/session-N``).

Each trial runs in a Ray worker: the wrapper gives the trainable (``pipeline.run_trial``
by default) its config (fixed settings + Ax's parameters + ``checkpoint_dir`` inside the
Ray trial folder + ``threads`` = its CPUs), forwards every per-epoch report to Ray (and
its checkpoint folder, for trial-level retries), opens the trial's W&B run, and reports
the trainable's final metrics marked as final, so a trial a scheduler stopped is never
taken for a finished one.

Faults, and where each is handled:

- a trial that raises: failed (reason: the last line of its traceback); Ray first retries
  it ``budget.max_failures`` times from its last checkpoint, as it does for a worker
  process that dies (``on_trial_recover`` records each retry);
- a trial whose loss diverges (:func:`divergence`: a non-finite loss, or a training
  loss above 10x its first value) is stopped by the worker at that report and ends
  early-stopped with the reason (failed when it had no score yet);
- a trial that returns a non-finite objective: failed, never completed with an
  earlier epoch's score;
- out of memory: the worker retries once with half the batch size, then the trial
  fails with the reason; the retry and the batch size are in ``trials.csv``;
- a space whose trial does not fit the cluster (or any one node of it) is refused
  before the experiment folder is written, naming what the cluster has;
- a second driver on one experiment folder is refused by the folder's lock, naming
  the driver that holds it; a full disk stops the driver with the path and the free
  space, and the folder keeps its last good state (see ``search.experiment``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.experiment import (
    AX_FILE,
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    INTERRUPTED,
    LOCK_FILE,
    LOCK_OWNER_FILE,
    QUEUED,
    RUNNING,
    ExperimentDiskFull,
    ExperimentError,
    ExperimentFolder,
    now_iso,
    resume_command,
)
from search.searcher import (
    FINAL_KEY,
    INDEX_KEY,
    AxSearcher,
    ax_metric_name,
    ax_trial_statuses,
    build_client,
    quiet_ax,
)
from search.space import SpaceConfig, load_space
from search.tracking import TrackingSetup, TrialRun, log_summary_run

log = logging.getLogger(__name__)

Trainable = Callable[[dict, Callable[[dict], None]], dict]


class SearchError(RuntimeError):
    """A search that could not start or stopped with an error; says what to do next."""


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """What a run or resume left: the folder, its status, the best trial, the counts."""

    path: Path
    status: str
    best: dict[str, Any] | None
    counts: dict[str, int]
    seconds: float
    concurrency: int
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------
# The trainable
# ------------------------------------------------------------------------------------------
def default_trainable() -> Trainable:
    """``pipeline.run_trial``, the trial entry point (imported when first needed)."""
    try:
        from pipeline import run_trial  # type: ignore[attr-defined]
    except ImportError as e:
        raise SearchError(
            "pipeline.run_trial (the trial entry point) is not available in this installation; "
            "pass another trainable with the same signature (--trainable module:function)"
        ) from e
    return run_trial  # type: ignore[no-any-return]


def load_trainable(spec: str) -> Trainable:
    """``package.module:function`` or ``path/to/file.py:function`` -> the callable.

    A function from a file is sent to Ray workers by value, so the file need not be
    importable there.
    """
    if ":" not in spec:
        raise SearchError(f"--trainable {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    target, func = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise SearchError(f"--trainable {spec!r}: file not found: {path}")
        name = f"_radsearch_trainable_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise SearchError(f"--trainable {spec!r}: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise SearchError(f"--trainable {spec!r}: cannot import {target}: {e}") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise SearchError(f"--trainable {spec!r}: {target} has no function {func!r}")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class TrialSetup:
    """What every trial worker needs besides Ax's parameters (sent to Ray workers).

    ``default_batch_size``: the trainable's batch size when the config does not set one
    (``run_trial``'s default), halved once when a trial runs out of memory.
    ``divergence_factor``: see :func:`divergence`.
    """

    trainable: Trainable
    base: dict[str, Any]
    threads: int
    tracking: TrackingSetup
    experiment: str
    resume_from: dict[int, str] = field(default_factory=dict)
    default_batch_size: int | None = None
    divergence_factor: float = 10.0


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plain_scalar(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if _finite(value) or isinstance(value, bool):
        return value
    return None


# ------------------------------------------------------------------------------------------
# Faults inside a trial: divergence, running out of memory
# ------------------------------------------------------------------------------------------
#: the training loss a trial reports each epoch (the first of these present)
TRAIN_LOSS_KEYS = ("train/loss", "loss")
#: losses that must stay finite (any non-finite value is a divergence)
LOSS_KEYS = ("train/loss", "loss", "val/loss")


def divergence(
    row: Mapping[str, Any], first_loss: float | None, *, factor: float = 10.0
) -> str | None:
    """Why one per-epoch report shows that training diverged, or ``None``.

    Diverged means: a loss (``train/loss``, ``loss``, ``val/loss``) is not finite, or
    the training loss exceeds ``factor`` times its first finite (positive) value. The
    rule is applied by the search to every trial's reports, so any trainable stops on it.
    """
    epoch = row.get("epoch")
    at = f" at epoch {int(epoch)}" if _finite(epoch) else ""
    for key in LOSS_KEYS:
        value = _number(row.get(key))
        if isinstance(value, float) and not math.isfinite(value):
            return f"diverged: {key} is {value}{at}"
    loss = next((_number(row[k]) for k in TRAIN_LOSS_KEYS if _finite(_number(row.get(k)))), None)
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


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _out_of_memory(exc: BaseException) -> BaseException | None:
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
    return _out_of_memory(exc) is not None


def _free_memory() -> None:
    """Release what an out-of-memory attempt left before the retry."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def run_trial_in_worker(config: dict[str, Any], setup: TrialSetup) -> None:
    """The body of one Ray trial (runs in a Ray worker process).

    Faults it handles itself, reported to the driver in the final result:

    - a report whose loss diverged (:func:`divergence`) stops the trainable; the trial
      ends ``early_stopped`` with the reason (``failed`` when no epoch had a score);
    - out of memory: one retry with half the batch size (from scratch), then ``failed``
      with the reason; the retry and the reduced batch are recorded for the trial;
    - values the trainable returns that are not finite are never replaced by an
      earlier epoch's (a NaN objective fails the trial).

    Anything else it raises fails the Ray trial (retried by Ray's ``max_failures``, from
    the last checkpoint reported with ``tune.report``).
    """
    import ray
    from ray import tune

    from search.searcher import BATCH_KEY, NONFINITE_KEY, OUTCOME_KEY, REASON_KEY, RETRY_KEY

    index = int(config[INDEX_KEY])
    params = {k: v for k, v in config.items() if k != INDEX_KEY}
    trial_dir = Path(tune.get_context().get_trial_dir())
    checkpoint_dir = trial_dir / "checkpoint"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    restored = tune.get_checkpoint()
    if restored is not None:  # Ray retries this trial (FailureConfig): continue from its checkpoint
        restored.to_directory(str(checkpoint_dir))
    elif index in setup.resume_from and Path(setup.resume_from[index]).is_dir():
        shutil.copytree(setup.resume_from[index], checkpoint_dir, dirs_exist_ok=True)
    trial_config = {
        **setup.base,
        **params,
        "checkpoint_dir": str(checkpoint_dir),
        "threads": setup.threads,
    }
    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"

    run = TrialRun(
        setup.tracking,
        name=f"{setup.experiment}-trial-{index:03d}",
        config={**trial_config, "trial": index},
        tags=("trial",),
    )
    epochs = 0
    last: dict[str, Any] = {}
    first_loss: float | None = None
    retry: dict[str, Any] = {}
    report_seconds = 0.0

    def report(metrics: Mapping[str, Any]) -> None:
        nonlocal epochs, last, report_seconds, first_loss
        t0 = time.perf_counter()
        reason = divergence(metrics, first_loss, factor=setup.divergence_factor)
        if reason is not None:
            run.log(metrics, step=epochs + 1)
            raise TrialDiverged(reason)
        if first_loss is None:
            first_loss = next(
                (
                    float(_number(metrics[k]))
                    for k in TRAIN_LOSS_KEYS
                    if _finite(_number(metrics.get(k)))
                ),
                None,
            )
        epoch = metrics.get("epoch")
        epochs = int(epoch) if _finite(epoch) else epochs + 1
        scalars = {
            k: v for k, v in ((k, _plain_scalar(v)) for k, v in metrics.items()) if v is not None
        }
        scalars["epoch"] = epochs
        last = scalars
        run.log(metrics, step=epochs)
        checkpoint = None
        if any(checkpoint_dir.iterdir()):
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
        tune.report({**scalars, **retry, "node": node, INDEX_KEY: index}, checkpoint=checkpoint)
        report_seconds += time.perf_counter() - t0

    def end(outcome: str, reason: str) -> None:
        """Report the trial's own verdict as its final result (no Ray retry)."""
        run.summary({**last, "stopped": reason})
        run.finish(failed=outcome == "failed")
        tune.report(
            {
                **last,
                **retry,
                "node": node,
                INDEX_KEY: index,
                FINAL_KEY: 1,
                OUTCOME_KEY: outcome,
                REASON_KEY: reason,
            }
        )

    t_start = time.perf_counter()
    final: Mapping[str, Any] | None = None
    for attempt in (1, 2):
        try:
            final = setup.trainable(trial_config, report)
            break
        except (
            SystemExit
        ) as e:  # Ray ends a trial its scheduler stopped with sys.exit(0) in report()
            stopped = e.code in (0, None)
            if stopped:
                run.summary({**last, "stopped_early": True})
            run.finish(failed=not stopped)
            raise
        except BaseException as e:
            diverged = _find(e, TrialDiverged)
            if diverged is not None:
                end("early_stopped", diverged.reason)  # type: ignore[attr-defined]
                return
            oom = None if isinstance(e, KeyboardInterrupt) else _out_of_memory(e)
            if oom is None:
                run.finish(failed=True)
                raise
            batch = trial_config.get("batch_size", setup.default_batch_size)
            text = str(oom).splitlines()[0] if str(oom) else ""
            what = f"{type(oom).__name__}: {text}".rstrip(": ")
            if attempt == 2 or not isinstance(batch, int) or batch < 2:
                tried = f" (after a retry: {retry[RETRY_KEY]})" if retry else ""
                hint = (
                    "lower batch_size or image_size, or give each trial more memory "
                    "(--gpus-per-trial, --cpus-per-trial)"
                )
                end(
                    "failed",
                    f"out of memory at batch_size {batch}{tried}: {what}; {hint}",
                )
                return
            smaller = batch // 2
            retry = {
                RETRY_KEY: f"out of memory at batch_size {batch}; retried with batch_size {smaller}",
                BATCH_KEY: smaller,
            }
            log.warning("trial %s: %s", index, retry[RETRY_KEY])
            trial_config = {**trial_config, "batch_size": smaller}
            # from scratch: a checkpoint of the larger batch does not carry over
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            epochs, last, first_loss = 0, {}, None
            _free_memory()
    trainable_s = time.perf_counter() - t_start - report_seconds
    final_scalars = {
        k: v for k, v in ((k, _plain_scalar(v)) for k, v in (final or {}).items()) if v is not None
    }
    nonfinite = {
        k: v
        for k, v in (final or {}).items()
        if k not in final_scalars and isinstance(_number(v), float)
    }
    result = {k: v for k, v in last.items() if k not in nonfinite}
    result.update(final_scalars)
    if epochs:  # "epoch" counts the epochs run; a trainable's own "epoch" (its best) is kept apart
        if final_scalars.get("epoch", epochs) != epochs:
            result["best_epoch"] = final_scalars["epoch"]
        result["epoch"] = epochs
    result.setdefault("epoch", 0)
    run.summary(result)
    run.finish()
    extra: dict[str, Any] = dict(retry)
    if nonfinite:
        extra[NONFINITE_KEY] = ", ".join(f"{k}={_number(v)}" for k, v in nonfinite.items())
    tune.report(
        {
            **result,
            **extra,
            "node": node,
            INDEX_KEY: index,
            FINAL_KEY: 1,
            "search/trainable_s": trainable_s,
        }
    )


def _number(value: Any) -> Any:
    """A float for any real number (numpy included), else the value unchanged."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def trial_dirname(trial: Any) -> str:
    """``trial-0007-<ray id>``: Ray trial folders named by the Ax trial index."""
    index = (trial.config or {}).get(INDEX_KEY)
    return (
        f"trial-{int(index):04d}-{trial.trial_id}"
        if index is not None
        else f"trial-{trial.trial_id}"
    )


def make_trial_function(setup: TrialSetup) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable bound to ``setup``."""

    def trial(config: dict[str, Any]) -> None:
        run_trial_in_worker(config, setup)

    return trial


# ------------------------------------------------------------------------------------------
# Schedulers and the driver-side callback
# ------------------------------------------------------------------------------------------
def _schedulers() -> tuple[type, type]:
    """The two scheduler classes (defined on first use: Ray Tune imports lazily)."""
    global _ASHA, _AxStopping
    if _ASHA is not None:
        return _ASHA, _AxStopping
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    class StoppingASHA(ASHAScheduler):
        """Ray's ASHA on the objective per epoch; records the trials it stops."""

        def __init__(self, *, stopped: set[str], **kwargs: Any):
            super().__init__(**kwargs)
            self.stopped = stopped

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if result.get(FINAL_KEY):
                return TrialScheduler.CONTINUE
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped.add(trial.trial_id)
            return decision

    class AxEarlyStopping(FIFOScheduler):
        """Ax's early-stopping strategy (``Client.should_stop_trial_early``) as a Ray scheduler."""

        def __init__(self, *, searcher: AxSearcher, stopped: set[str]):
            super().__init__()
            self.searcher = searcher
            self.stopped = stopped

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if result.get(FINAL_KEY) or not self.searcher.should_stop(trial.trial_id, result):
                return TrialScheduler.CONTINUE
            self.stopped.add(trial.trial_id)
            return TrialScheduler.STOP

    _ASHA, _AxStopping = StoppingASHA, AxEarlyStopping
    return _ASHA, _AxStopping


_ASHA: Any = None
_AxStopping: Any = None


def build_scheduler(space: SpaceConfig, searcher: AxSearcher, stopped: set[str]) -> Any:
    """ASHA (default), Ax's percentile early stopping, or none; each records the trials
    it stops in ``stopped`` so the searcher marks them early-stopped in Ax."""
    from ray.tune.schedulers import FIFOScheduler

    budget = space.budget
    asha, ax_stopping = _schedulers()
    if budget.scheduler == "asha":
        # stop_last_trials=False: a trial that reaches max_t finishes on its own and
        # reports its final metrics, instead of being stopped at its last epoch.
        return asha(
            stopped=stopped,
            time_attr="epoch",
            metric=space.objective.metric,
            mode="min" if space.objective.minimize else "max",
            max_t=max(space.max_epochs(), budget.grace_period),
            grace_period=budget.grace_period,
            reduction_factor=budget.reduction_factor,
            stop_last_trials=False,
        )
    if budget.scheduler == "ax":
        from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy

        searcher.client.set_early_stopping_strategy(
            PercentileEarlyStoppingStrategy(
                metric_signatures=[ax_metric_name(space.objective.metric)],
                percentile_threshold=50.0,
                min_progression=budget.grace_period,
                min_curves=max(2, min(5, budget.trials // 3)),
            )
        )
        return ax_stopping(searcher=searcher, stopped=stopped)
    return FIFOScheduler()


def _index(trial: Any) -> int | None:
    value = (getattr(trial, "config", None) or {}).get(INDEX_KEY)
    return int(value) if value is not None else None


def _error_text(trial: Any) -> str | None:
    """The last line of the trial's traceback (``RuntimeError: ...``), from Ray's error file."""
    text = None
    with contextlib.suppress(Exception):
        path = trial.error_file
        if path and Path(path).is_file():
            text = Path(path).read_text(encoding="utf-8", errors="replace")
    if text is None:
        with contextlib.suppress(Exception):
            err = trial.get_error()
            text = str(err) if err is not None else None
    if not text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else None


def _recorder(folder: ExperimentFolder, on_event: Callable[[], None]) -> Any:
    """A Ray Tune callback in the driver: errors, checkpoints and the live table."""
    from ray.tune import Callback

    class Recorder(Callback):
        def __init__(self) -> None:
            self.folder, self.on_event = folder, on_event

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self.on_event()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.on_event()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            index = _index(trial)
            if index is not None:
                self.folder.trial_note(
                    index, error=_error_text(trial) or "the trial raised an exception"
                )
                self.folder.write_tables()
            self.on_event()

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            """Ray restarts a crashed trial (``max_failures``) from its last checkpoint."""
            index = _index(trial)
            if index is not None:
                rec = self.folder.trials.get(index, {})
                why = _error_text(trial) or "the trial's worker died"
                notes = [n for n in str(rec.get("retry_reason") or "").split("; ") if n]
                self.folder.trial_note(
                    index,
                    retries=int(rec.get("retries") or 0) + 1,
                    retry_reason="; ".join([*notes, f"restarted from its last checkpoint: {why}"]),
                )
                self.folder.write_tables()
            self.on_event()

        def on_checkpoint(
            self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
        ) -> None:
            index = _index(trial)
            if index is not None and getattr(checkpoint, "path", None):
                self.folder.trial_note(index, checkpoint=str(checkpoint.path))

        # Ray pickles its callbacks into its own experiment folder; ours hold live
        # objects (the folder, the terminal) that are not needed there.
        def __reduce__(self) -> tuple[Any, ...]:
            return (Callback, ())

    return Recorder()


# ------------------------------------------------------------------------------------------
# Ray
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None
) -> Iterator[dict[str, float]]:
    """Start a local Ray (or join ``address``) for the search and shut it down after.

    When Ray is already initialized in this process it is used as is and left running.
    Yields the cluster's resources.
    """
    import ray

    if ray.is_initialized():
        yield dict(ray.cluster_resources())
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise SearchError(
            f"cannot reach the Ray cluster at {address!r}: {e}. Start it with "
            "`ray start --head` (see results/README.md) or leave out --address"
        ) from e
    try:
        yield dict(ray.cluster_resources())
    finally:
        ray.shutdown()


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the connected Ray cluster."""
    import ray

    return [
        {k: float(v) for k, v in (n.get("Resources") or {}).items()}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def _plural(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def fit_concurrency(
    space: SpaceConfig,
    resources: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> tuple[int, str | None]:
    """How many trials fit the cluster at once (at most the budget's concurrency).

    Refuses (:class:`SearchError`, naming what the cluster has) a space whose trial
    does not fit the cluster at all, or, given ``nodes``, no single node of it: such
    a trial would wait forever.
    """
    budget = space.budget
    cpt, gpt = budget.cpus_per_trial, budget.gpus_per_trial
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    has = f"this cluster has {_plural(gpus, 'GPU')}, {_plural(cpus, 'CPU')}"
    if nodes is not None and len(nodes) > 1:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
        has += (
            f" over {len(nodes)} nodes (the largest: {_plural(biggest.get('GPU', 0.0), 'GPU')}, "
            f"{_plural(biggest.get('CPU', 0.0), 'CPU')})"
        )
    if gpt > 0 and gpus <= 0:
        raise SearchError(
            f"the space asks {_plural(gpt, 'GPU')} per trial; {has}: use --gpus-per-trial 0, "
            "or join a cluster with GPUs (--address)"
        )
    if gpt > gpus or cpt > cpus:
        what = _plural(gpt, "GPU") if gpt > gpus else _plural(cpt, "CPU")
        raise SearchError(
            f"the space asks {what} per trial; {has}: lower --gpus-per-trial / "
            "--cpus-per-trial, or join a larger cluster (--address)"
        )

    def fits_in(c: float, g: float) -> int:
        n = math.floor(c / cpt + 1e-9)
        if gpt > 0:
            n = min(n, math.floor(g / gpt + 1e-9))
        return n

    if nodes:  # a trial runs on one node: count what fits node by node
        fits = sum(fits_in(n.get("CPU", 0.0), n.get("GPU", 0.0)) for n in nodes)
    else:
        fits = fits_in(cpus, gpus)
    if fits < 1:
        raise SearchError(
            f"one trial needs {_plural(cpt, 'CPU')} and {_plural(gpt, 'GPU')} on one node; "
            f"{has}: lower --cpus-per-trial / --gpus-per-trial"
        )
    concurrency = min(budget.concurrency, fits)
    note = None
    if concurrency < budget.concurrency:
        note = (
            f"concurrency {budget.concurrency} -> {concurrency}: that is what fits the cluster "
            f"({cpus:g} CPUs, {gpus:g} GPUs; {cpt:g} CPUs and {gpt:g} GPUs per trial)"
        )
    return concurrency, note


def _default_batch_size(space: SpaceConfig) -> int | None:
    """``run_trial``'s default batch size (halved on out of memory) when the space runs it."""
    if not space.check_names:
        return None
    try:
        from pipeline import trial_keys  # type: ignore[attr-defined]

        value = trial_keys().get("batch_size")
    except ImportError:  # no pipeline here: a config without batch_size is not retried
        return None
    return int(value) if isinstance(value, int) else None


def _default_cache_dir() -> str:
    env = os.environ.get("RADSEARCH_CACHE")
    return str(Path(env).resolve() if env else (Path.cwd() / ".cache" / "radsearch").resolve())


# ------------------------------------------------------------------------------------------
# Run and resume
# ------------------------------------------------------------------------------------------
def run_search(
    space: SpaceConfig | str | os.PathLike[str],
    *,
    name: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
    trainable: Trainable | None = None,
    address: str | None = None,
    progress: bool = True,
    command: str | None = None,
    num_cpus: int | None = None,
) -> SearchResult:
    """Run a search space to the end of its budget in a new ``results_dir/<name>/``.

    Args:
        space: a :class:`SpaceConfig` or the path of a space YAML file.
        name: the experiment folder's name (default: the space's name and the time).
        trainable: ``fn(config, report) -> metrics`` (default ``pipeline.run_trial``).
        address: a Ray cluster to join (``auto`` or ``HOST:PORT``); default a local Ray.
        progress: show the live table on the terminal (one line per trial elsewhere).
    """
    if not isinstance(space, SpaceConfig):
        space = load_space(space)
    name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = ExperimentFolder(Path(results_dir) / name)
    folder.check_new()
    trainable = trainable or default_trainable()
    command = command or f"run {space.source}"
    # the lock first: of two drivers started at once with one name, one runs and the
    # other refuses before it writes anything
    with folder.locked(command=command):
        created = False
        try:
            folder.check_new()
            with ray_session(address, num_cpus=num_cpus) as resources:
                # a trial that can never be placed is refused before anything is written
                fit_concurrency(space, resources, cluster_nodes())
                client = build_client(space)
                folder.save_ax(client)  # before experiment.json, which makes it an experiment
                folder.initialize(space)
                created = True
                return _execute(
                    folder,
                    space,
                    client,
                    rerun=[],
                    trainable=trainable,
                    address=address,
                    progress=progress,
                    command=command,
                    num_cpus=num_cpus,
                )
        finally:
            if not created:
                _remove_if_empty(folder.path)


def _remove_if_empty(path: Path) -> None:
    """Remove a folder a refused ``run`` made (called with its lock held; it holds at
    most the lock, its owner record and Ax's state)."""
    with contextlib.suppress(OSError):
        if {p.name for p in path.iterdir()} <= {LOCK_FILE, LOCK_OWNER_FILE, AX_FILE}:
            for name in (AX_FILE, LOCK_OWNER_FILE, LOCK_FILE):
                with contextlib.suppress(FileNotFoundError):
                    (path / name).unlink()
            path.rmdir()


def resume_search(
    path: str | os.PathLike[str],
    *,
    trainable: Trainable | None = None,
    address: str | None = None,
    progress: bool = True,
    command: str | None = None,
    num_cpus: int | None = None,
    **overrides: Any,
) -> SearchResult:
    """Continue an experiment: keep what finished, re-run what was running, run the rest.

    ``overrides`` (``trials``, ``concurrency``, ``gpus_per_trial``, ...) change the
    budget for this and later sessions, as on the command line.
    """
    folder = ExperimentFolder.open(path)
    trainable = trainable or default_trainable()
    command = command or f"resume {folder.display}"
    with folder.locked(command=command):
        folder.recover()
        space = folder.space()
        if any(v is not None for v in overrides.values()):
            space = space.with_overrides(**overrides)
            folder.save_space(space)
        if folder.ax_path.is_file() or folder.trials:
            client = folder.load_ax()
        else:  # a driver stopped between creating the folder and its first Ax write
            client = build_client(space)
            folder.save_ax(client)
        rerun = reconcile(folder, client)
        return _execute(
            folder,
            space,
            client,
            rerun=rerun,
            trainable=trainable,
            address=address,
            progress=progress,
            command=command,
            num_cpus=num_cpus,
        )


def reconcile(folder: ExperimentFolder, client: Any) -> list[int]:
    """Bring the folder's records and the Ax state into agreement after a stop.

    Both are written after every change, so at most the last change is in one and not
    yet in the other. Returns the Ax indices to run again (those that were running).
    """
    statuses = ax_trial_statuses(client)
    objective = folder.space().objective
    rerun: list[int] = []
    with quiet_ax():
        for index, rec in sorted(folder.trials.items()):
            ax_status = statuses.get(index)
            status = rec.get("status")
            if ax_status is None:  # proposed, then the driver stopped before Ax's state was written
                del folder.state["trials"][str(index)]
                continue
            if ax_status in ("RUNNING", "CANDIDATE", "STAGED"):
                metrics = rec.get("metrics") or {}
                if status == COMPLETED and _finite(metrics.get(objective.metric)):
                    data = {
                        ax_metric_name(m): float(metrics[m])
                        for m in objective.metrics
                        if _finite(metrics.get(m))
                    }
                    client.complete_trial(
                        index, raw_data=data, progression=rec.get("epochs") or None
                    )
                elif status == FAILED:
                    client.mark_trial_failed(index, failed_reason=rec.get("error") or "failed")
                elif status == EARLY_STOPPED:
                    try:
                        client.mark_trial_early_stopped(index)
                    except Exception:
                        client.mark_trial_abandoned(index)
                else:
                    rerun.append(index)
                    folder.state["trials"][str(index)]["status"] = INTERRUPTED
            elif ax_status == "COMPLETED" and status != COMPLETED:
                folder.state["trials"][str(index)].update(
                    status=COMPLETED, metrics=rec.get("metrics") or rec.get("last") or {}
                )
            elif ax_status == "FAILED" and status != FAILED:
                folder.state["trials"][str(index)]["status"] = FAILED
            elif ax_status in ("EARLY_STOPPED", "ABANDONED") and status not in (
                EARLY_STOPPED,
                FAILED,
            ):
                folder.state["trials"][str(index)]["status"] = EARLY_STOPPED
    folder.save_state()
    folder.save_ax(client)
    folder.write_tables()
    return rerun


def _execute(
    folder: ExperimentFolder,
    space: SpaceConfig,
    client: Any,
    *,
    rerun: list[int],
    trainable: Trainable,
    address: str | None,
    progress: bool,
    command: str,
    num_cpus: int | None,
) -> SearchResult:
    from ray import tune

    from search.progress import Progress
    from search.searcher import make_proposer

    t0 = time.time()
    # Ray Tune's own console reporter would print beside our table: keep it quiet
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # one checkpoint kept per trial forces a snapshot of Ray's state per epoch: expected here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a result without the objective (a trial that failed or diverged before its first
    # score, a NaN it returned) is the searcher's to record as failed, not a reason for
    # Ray Tune to end the whole search
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    session = folder.begin_session(address=address, command=command)
    notes: list[str] = []
    status = "failed"
    concurrency = space.budget.concurrency
    try:
        with ray_session(address, num_cpus=num_cpus) as resources:
            concurrency, note = fit_concurrency(space, resources)
            if note:
                notes.append(note)
            base = space.trial_base()
            if space.check_names and not base.get("cache_dir"):
                base["cache_dir"] = (
                    _default_cache_dir()
                )  # shared by every trial: one preprocessing cache
            tracking = TrackingSetup.for_experiment(space.tracking, folder.name, folder.path)
            resume_from = {
                i: str(folder.trials[i]["checkpoint"])
                for i in rerun
                if folder.trials.get(i, {}).get("checkpoint")
            }
            setup = TrialSetup(
                trainable=trainable,
                base=base,
                threads=space.budget.threads,
                tracking=tracking,
                experiment=folder.name,
                resume_from=resume_from,
                default_batch_size=_default_batch_size(space),
            )
            n_new = max(0, space.budget.trials - len(folder.trials))
            n_samples = len(rerun) + n_new
            if n_samples > 0:
                stopped: set[str] = set()
                searcher = AxSearcher(
                    client,
                    space,
                    folder=folder,
                    max_trials=space.budget.trials,
                    concurrency=concurrency,
                    rerun=rerun,
                    session=session,
                    proposer=make_proposer(space),
                    stopped=stopped,
                )
                view = Progress(folder, space, enabled=progress)
                resources_per_trial = {"cpu": space.budget.cpus_per_trial}
                if space.budget.gpus_per_trial > 0:
                    resources_per_trial["gpu"] = space.budget.gpus_per_trial
                tuner = tune.Tuner(
                    tune.with_resources(make_trial_function(setup), resources_per_trial),
                    tune_config=tune.TuneConfig(
                        search_alg=searcher,
                        scheduler=build_scheduler(space, searcher, stopped),
                        num_samples=n_samples,
                        reuse_actors=True,
                        trial_dirname_creator=trial_dirname,
                        trial_name_creator=trial_dirname,
                    ),
                    run_config=tune.RunConfig(
                        name=f"session-{session}",
                        storage_path=str(folder.ray_dir),
                        verbose=0,
                        callbacks=[_recorder(folder, view.update)],
                        failure_config=tune.FailureConfig(max_failures=space.budget.max_failures),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    ),
                )
                view.start()
                try:
                    tuner.fit()
                finally:
                    view.stop()
        open_trials = [
            i for i, r in folder.trials.items() if r.get("status") in (RUNNING, QUEUED, INTERRUPTED)
        ]
        status = "interrupted" if open_trials else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except SearchError:
        status = "failed"
        raise
    except Exception as e:
        status = "failed"
        full = next((c for c in _chain(e) if isinstance(c, ExperimentDiskFull)), None)
        if full is not None:  # Ray may wrap it: say it plainly
            raise SearchError(str(full)) from e
        raise SearchError(
            f"the search stopped with an error: {e}\nfix the cause, then continue with "
            f"`{resume_command(folder.path)}`"
        ) from e
    finally:
        # on a full disk these writes fail too: the last good state stays as it is
        with contextlib.suppress(ExperimentDiskFull):
            folder.set_status(status, ended=now_iso())
            folder.write_tables()
    if status == "finished":
        _summary_run(folder, space)
    return SearchResult(
        path=folder.path,
        status=status,
        best=folder.best(),
        counts=folder.counts(),
        seconds=time.time() - t0,
        concurrency=concurrency,
        notes=tuple(notes),
    )


def _summary_run(folder: ExperimentFolder, space: SpaceConfig) -> None:
    setup = TrackingSetup.for_experiment(space.tracking, folder.name, folder.path)
    if not setup.enabled:
        return
    report = folder.path / "report.html"
    try:
        from search.report import write_report

        report = write_report(folder)
    except Exception as e:  # the summary run is still useful without the report
        log.warning("could not write the report for the W&B summary run: %s", e)
    log_summary_run(
        setup,
        name=folder.name,
        rows=folder.rows(),
        best=folder.best(),
        space=space.to_dict(),
        report_html=report if report.is_file() else None,
    )


def open_experiment(path: str | os.PathLike[str]) -> ExperimentFolder:
    """An existing experiment folder (for status, best, report, promote)."""
    return ExperimentFolder.open(path)


__all__ = [
    "ExperimentError",
    "SearchError",
    "SearchResult",
    "load_trainable",
    "open_experiment",
    "resume_search",
    "run_search",
]
