"""Run and resume searches: Ax proposes, Ray Tune schedules, the folder records.

:func:`run_search` creates ``results/<name>/`` and runs the budget; :func:`resume_search`
continues an experiment whose driver stopped (Ctrl-C, a crash, SIGKILL). The truth lives
in the experiment folder, written atomically after every change: the Ax state
(``ax_state.json``) and the trial records (``experiment.json`` / ``trials.csv``). On
resume, trials Ax knows as finished stay finished; trials that were running are run
again with the same Ax index and parameters, from their last checkpoint when Ray kept
one; then the rest of the budget runs. Each run or resume is one Ray Tune session
(``ray/session-N``).

Before the first trial, the driver prepares what every trial reads (the phantom and the
preprocessing cache, with all of its cores: ``pipeline.prepare``), counts the validation
crops and fractures, and warns when the validation split is too small to rank
configurations (:mod:`search.noise`). Each trial then runs in a Ray worker
(:mod:`search.worker`); Ray Tune's side lives in :mod:`search.tuner`, the cluster's in
:mod:`search.cluster`, early stopping in :mod:`search.stopping`.

Faults (``results/README.md`` lists them) and where each is handled: a trial that
diverges, runs out of memory or returns a non-finite objective, in the worker; a trial
that raises, by Ray's retries (``budget.max_failures``, from its last checkpoint), then
recorded failed with the last line of its traceback (:mod:`search.tuner`); a trial that
fits no node of the cluster, refused before the experiment folder is written
(:mod:`search.cluster`); a second driver or a full disk, by the experiment folder
(:mod:`search.experiment`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline
from search.axclient import ax_metric_name, ax_trial_statuses, build_client, quiet_ax
from search.cluster import cluster_nodes, fit_concurrency, ray_session
from search.errors import SearchError
from search.experiment import AX_FILE, LOCK_FILE, LOCK_OWNER_FILE, ExperimentFolder
from search.noise import prepared_warning
from search.progress import Progress
from search.proposers import make_proposer
from search.report import write_report
from search.searcher import AxSearcher, observation
from search.space import SpaceConfig, load_space
from search.statefiles import ExperimentDiskFull, ExperimentError, now_iso, resume_command
from search.stopping import build_scheduler
from search.tables import COMPLETED, EARLY_STOPPED, FAILED, INTERRUPTED, QUEUED, RUNNING
from search.tracking import TrackingSetup, log_summary_run
from search.tuner import build_tuner
from search.values import finite
from search.worker import (
    Trainable,
    TrialSetup,
    default_trainable,
    find_in_chain,
    load_trainable,
)

log = logging.getLogger(__name__)


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


def _default_batch_size(space: SpaceConfig) -> int | None:
    """``run_trial``'s default batch size (halved on out of memory) when the space runs it."""
    if not space.check_names:
        return None
    value = pipeline.trial_keys().get("batch_size")
    return int(value) if isinstance(value, int) else None


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
    echo: Callable[[str], None] | None = None,
) -> SearchResult:
    """Run a search space to the end of its budget in a new ``results_dir/<name>/``.

    Args:
        space: a :class:`SpaceConfig` or the path of a space YAML file.
        name: the experiment folder's name (default: the space's name and the time).
        trainable: ``fn(config, report) -> metrics`` (default ``pipeline.run_trial``).
        address: a Ray cluster to join (``auto`` or ``HOST:PORT``); default a local Ray.
        progress: show the live table on the terminal (one line per trial elsewhere).
        echo: where to say what happens before the trials start (data preparation, the
            small-validation warning); default silent (the result's notes keep it).
    """
    if not isinstance(space, SpaceConfig):
        space = load_space(space)
    name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = ExperimentFolder(Path(results_dir) / name)
    folder.check_new()
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
                    echo=echo,
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
    echo: Callable[[str], None] | None = None,
    **overrides: Any,
) -> SearchResult:
    """Continue an experiment: keep what finished, re-run what was running, run the rest.

    ``overrides`` (``trials``, ``concurrency``, ``gpus_per_trial``, ...) change the
    budget for this and later sessions, as on the command line.
    """
    folder = ExperimentFolder.open(path)
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
            echo=echo,
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
            ax_status, status = statuses.get(index), rec.get("status")
            stored = folder.state["trials"][str(index)]
            if ax_status is None:  # proposed, then the driver stopped before Ax's state was written
                del folder.state["trials"][str(index)]
                continue
            if ax_status in ("RUNNING", "CANDIDATE", "STAGED"):
                metrics = rec.get("metrics") or {}
                if status == COMPLETED and finite(metrics.get(objective.metric)):
                    data = observation(metrics, {m: ax_metric_name(m) for m in objective.metrics})
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
                    stored["status"] = INTERRUPTED
            elif ax_status == "COMPLETED" and status != COMPLETED:
                stored.update(status=COMPLETED, metrics=rec.get("metrics") or rec.get("last") or {})
            elif ax_status == "FAILED" and status != FAILED:
                stored["status"] = FAILED
            elif ax_status in ("EARLY_STOPPED", "ABANDONED") and status not in (
                EARLY_STOPPED,
                FAILED,
            ):
                stored["status"] = EARLY_STOPPED
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
    trainable: Trainable | None,
    address: str | None,
    progress: bool,
    command: str,
    num_cpus: int | None,
    echo: Callable[[str], None] | None = None,
) -> SearchResult:
    t0 = time.time()
    say = echo or (lambda _msg: None)
    notes: list[str] = []
    base = space.trial_base()
    if space.check_names:
        base.setdefault("cache_dir", str(pipeline.cache_home().resolve()))  # one shared cache
        _prepare_data(folder, space, base, say)
    session = folder.begin_session(address=address, command=command)
    status = "failed"
    concurrency = space.budget.concurrency
    try:
        with ray_session(address, num_cpus=num_cpus) as resources:
            concurrency, note = fit_concurrency(space, resources)
            if note:
                notes.append(note)
            setup = TrialSetup(
                trainable=trainable or default_trainable(),
                base=base,
                threads=space.budget.threads,
                tracking=TrackingSetup.for_experiment(space.tracking, folder.name, folder.path),
                experiment=folder.name,
                resume_from={
                    i: str(folder.trials[i]["checkpoint"])
                    for i in rerun
                    if folder.trials.get(i, {}).get("checkpoint")
                },
                default_batch_size=_default_batch_size(space),
            )
            samples = len(rerun) + max(0, space.budget.trials - len(folder.trials))
            if samples > 0:
                _run_tuner(
                    folder, space, client, setup, rerun, session, concurrency, samples, progress
                )
        open_trials = [
            i for i, r in folder.trials.items() if r.get("status") in (RUNNING, QUEUED, INTERRUPTED)
        ]
        status = "interrupted" if open_trials else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except SearchError:
        raise
    except Exception as e:  # status stays "failed"
        raise _search_error(e, folder) from e
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


def _search_error(e: Exception, folder: ExperimentFolder) -> SearchError:
    """What a user reads when the search stops on an error: the cause and the way on."""
    full = find_in_chain(e, ExperimentDiskFull)
    if full is not None:  # Ray may wrap it: say it plainly
        return SearchError(str(full))
    return SearchError(
        f"the search stopped with an error: {e}\nfix the cause, then continue with "
        f"`{resume_command(folder.path)}`"
    )


def _prepare_data(
    folder: ExperimentFolder, space: SpaceConfig, base: dict[str, Any], say: Callable[[str], None]
) -> None:
    """Build the phantom and the preprocessing cache with every core of this machine, record
    the split counts in the folder, and say the small-validation warning, if any.

    Skipped (the trials prepare their own data) when a preprocessing or data key is searched.
    """
    searched = {p.name for p in space.parameters.searched}
    if searched & set(pipeline.data_preparation_keys()):
        return
    t0 = time.time()
    say("preparing the data (phantom and preprocessing cache, all cores)...")
    counts = pipeline.prepare(base)
    warning = prepared_warning(space, counts)
    folder.note_data(counts, seconds=round(time.time() - t0, 1), warning=warning)
    say(
        f"data ready in {time.time() - t0:.0f}s: "
        + ", ".join(f"{n} {k}" for k, n in counts["splits"].items())
        + f" crops; {counts['val_fractures']} fractures among {counts['val']} validation crops"
        + _kept_out(counts)
    )
    if warning:
        say(f"warning: {warning}")


def _kept_out(counts: dict[str, Any]) -> str:
    """The files the out-of-scope decision kept out, by kind (``pipeline preprocess --data``
    lists them with their scores), and the files whose tags disagree with their pixels."""
    out = counts.get("out_of_scope") or {}
    if not out:
        return ""
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(out.items()))
    return (
        f"; {sum(out.values())} files out of scope by their pixels ({kinds}); "
        f"tags and pixels disagree on {counts.get('tag_pixel_disagreements', 0)}"
    )


def _run_tuner(
    folder: ExperimentFolder,
    space: SpaceConfig,
    client: Any,
    setup: TrialSetup,
    rerun: list[int],
    session: int,
    concurrency: int,
    samples: int,
    progress: bool,
) -> None:
    """Run ``samples`` trials through Ray Tune, the live table showing them."""
    stopped: dict[str, str] = {}
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
        baseline=space.baseline,
    )
    view = Progress(folder, space, enabled=progress)
    tuner = build_tuner(
        folder,
        space,
        setup=setup,
        searcher=searcher,
        scheduler=build_scheduler(space, searcher, stopped),
        session=session,
        samples=samples,
        on_event=view.update,
    )
    view.start()
    try:
        tuner.fit()
    finally:
        view.stop()


def _summary_run(folder: ExperimentFolder, space: SpaceConfig) -> None:
    setup = TrackingSetup.for_experiment(space.tracking, folder.name, folder.path)
    if not setup.enabled:
        return
    report = folder.path / "report.html"
    try:
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
