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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.experiment import (
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
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
    """What every trial worker needs besides Ax's parameters (sent to Ray workers)."""

    trainable: Trainable
    base: dict[str, Any]
    threads: int
    tracking: TrackingSetup
    experiment: str
    resume_from: dict[int, str] = field(default_factory=dict)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plain_scalar(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if _finite(value) or isinstance(value, bool):
        return value
    return None


def run_trial_in_worker(config: dict[str, Any], setup: TrialSetup) -> None:
    """The body of one Ray trial (runs in a Ray worker process)."""
    import ray
    from ray import tune

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
    report_seconds = 0.0

    def report(metrics: Mapping[str, Any]) -> None:
        nonlocal epochs, last, report_seconds
        t0 = time.perf_counter()
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
        tune.report({**scalars, "node": node, INDEX_KEY: index}, checkpoint=checkpoint)
        report_seconds += time.perf_counter() - t0

    t_start = time.perf_counter()
    try:
        final = setup.trainable(trial_config, report)
    except SystemExit as e:  # Ray ends a trial its scheduler stopped with sys.exit(0) in report()
        stopped = e.code in (0, None)
        if stopped:
            run.summary({**last, "stopped_early": True})
        run.finish(failed=not stopped)
        raise
    except BaseException:
        run.finish(failed=True)
        raise
    trainable_s = time.perf_counter() - t_start - report_seconds
    final_scalars = {
        k: v for k, v in ((k, _plain_scalar(v)) for k, v in (final or {}).items()) if v is not None
    }
    result = {**last, **final_scalars}
    if epochs:  # "epoch" counts the epochs run; a trainable's own "epoch" (its best) is kept apart
        if final_scalars.get("epoch", epochs) != epochs:
            result["best_epoch"] = final_scalars["epoch"]
        result["epoch"] = epochs
    result.setdefault("epoch", 0)
    run.summary(result)
    run.finish()
    tune.report(
        {**result, "node": node, INDEX_KEY: index, FINAL_KEY: 1, "search/trainable_s": trainable_s}
    )


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


def fit_concurrency(space: SpaceConfig, resources: Mapping[str, float]) -> tuple[int, str | None]:
    """How many trials fit the cluster at once (at most the budget's concurrency)."""
    budget = space.budget
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if budget.gpus_per_trial > 0 and gpus <= 0:
        raise SearchError(
            f"the space asks for {budget.gpus_per_trial:g} GPU per trial but the Ray cluster "
            "has no GPU: use --gpus-per-trial 0, or join a cluster with GPUs (--address)"
        )
    fits = math.floor(cpus / budget.cpus_per_trial + 1e-9)
    if budget.gpus_per_trial > 0:
        fits = min(fits, math.floor(gpus / budget.gpus_per_trial + 1e-9))
    if fits < 1:
        raise SearchError(
            f"one trial needs {budget.cpus_per_trial:g} CPUs and {budget.gpus_per_trial:g} GPUs; "
            f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: lower --cpus-per-trial"
        )
    concurrency = min(budget.concurrency, fits)
    note = None
    if concurrency < budget.concurrency:
        note = (
            f"concurrency {budget.concurrency} -> {concurrency}: that is what fits the cluster "
            f"({cpus:g} CPUs, {gpus:g} GPUs; {budget.cpus_per_trial:g} CPUs and "
            f"{budget.gpus_per_trial:g} GPUs per trial)"
        )
    return concurrency, note


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
    folder = ExperimentFolder.create(Path(results_dir) / name, space)
    trainable = trainable or default_trainable()
    with folder.locked():
        client = build_client(space)
        folder.save_ax(client)
        return _execute(
            folder,
            space,
            client,
            rerun=[],
            trainable=trainable,
            address=address,
            progress=progress,
            command=command or f"run {space.source}",
            num_cpus=num_cpus,
        )


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
    with folder.locked():
        space = folder.space()
        if any(v is not None for v in overrides.values()):
            space = space.with_overrides(**overrides)
            folder.save_space(space)
        client = folder.load_ax()
        rerun = reconcile(folder, client)
        return _execute(
            folder,
            space,
            client,
            rerun=rerun,
            trainable=trainable,
            address=address,
            progress=progress,
            command=command or f"resume {folder.display}",
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
            mode = space.tracking.resolved_mode()
            tracking = TrackingSetup(
                mode=mode,
                project=space.tracking.project,
                entity=space.tracking.entity,
                group=folder.name,
                root=str(folder.path),
                log_images=space.tracking.log_images,
            )
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
        raise SearchError(
            f"the search stopped with an error: {e}\nfix the cause, then continue with "
            f"`{resume_command(folder.path)}`"
        ) from e
    finally:
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
    mode = space.tracking.resolved_mode()
    if mode == "disabled":
        return
    setup = TrackingSetup(
        mode=mode,
        project=space.tracking.project,
        entity=space.tracking.entity,
        group=folder.name,
        root=str(folder.path),
        log_images=space.tracking.log_images,
    )
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
