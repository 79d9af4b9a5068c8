"""Our Ray Tune ``Searcher`` on Ax's ``Client`` (``ax.api``).

Ray's own ``AxSearch`` wraps the removed ``AxClient`` and does not work with
ax-platform 1.3, so the platform talks to ``ax.Client`` directly:

- ``suggest`` asks Ax for new trials, ``k`` at once when ``k`` slots are free (Ax then
  proposes a batch that accounts for the pending trials); trials that a crashed driver
  left running are handed out again first (same Ax index, same parameters).
- every per-epoch report goes to Ax as a progression (``attach_data(..., progression=)``),
  each metric as its mean and standard error when the trial reports ``<metric>_sem``
  (``pipeline``'s patient-level bootstrap, or the spread over folds), so the GP's
  noise model knows how much of a difference between two trials is noise,
- a trial that returns is completed, one that raises (or returns a non-finite
  objective) is marked failed, one that a scheduler stopped, or that stopped itself
  because its loss diverged, is marked early-stopped (its truncated score is never
  taken as final; with no score at all it is marked failed), and the reason goes to
  ``trials.csv``.
- after every change the Ax state is written atomically to the experiment folder.

Proposals come from the platform's Ax generation strategy
(``search.axclient.generation_strategy``: centre, seeded Sobol, then BoTorch with a
Matern-5/2 GP and qLogNEI) or, for comparison, from a uniform random or Optuna TPE
proposer (``search.proposers``); their trials are attached to the same Ax experiment,
so every algorithm leaves the same records and can resume.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ax import Client
from ax.exceptions.core import AxError
from ray.tune.search import Searcher

from search.axclient import (
    ax_metric_name,
    ax_trial_statuses,
    build_client,
    from_ax,
    generation_strategy,
    quiet_ax,
    to_ax,
)
from search.keys import (
    BATCH_KEY,
    FINAL_KEY,
    INDEX_KEY,
    NONFINITE_KEY,
    OUTCOME_KEY,
    REASON_KEY,
    RETRY_KEY,
    SEM_SUFFIX,
)
from search.proposers import RandomProposer, TPEProposer, make_proposer
from search.space import SpaceConfig
from search.values import finite, plain

if TYPE_CHECKING:
    from search.experiment import ExperimentFolder

log = logging.getLogger(__name__)
#: how a trial ended, as the searcher records it: (status, metrics, stop reason); each
#: ``_failed`` / ``_completed`` / ``_stopped_*`` method tells Ax and returns one
Ending = tuple[str, dict[str, Any] | None, str | None]
# Seconds between Ax state saves caused by intermediate results alone (see on_trial_result).
PROGRESSION_SAVE_S = 30.0


# ------------------------------------------------------------------------------------------
class AxSearcher(Searcher):
    """Ray Tune searcher that asks an Ax ``Client`` for trials and tells it the results.

    Args:
        client: a configured (or restored) ``ax.Client``.
        space: the experiment's space (objective, fixed settings, budget).
        folder: the experiment folder, written after every change (``None``: in memory).
        max_trials: the experiment's total budget (Ax trials, whatever their state).
        concurrency: slots Ray runs at once (the size of a batch proposal).
        rerun: Ax trial indices to hand out before new ones (left running by a crash).
        session: the run/resume session number, recorded per trial.
        proposer: an alternative proposer (random, TPE); ``None`` = Ax's strategy.
        stopped: Ray trial id -> reason, for the trials a scheduler stopped (filled by
            the scheduler); a trial that ends without its final report and is not in it
            was interrupted (the driver is stopping) and stays running in Ax, to be run
            again on resume.
        baseline: the space's hand-set configuration, run as the first trial of a new
            experiment (attached to Ax like any proposal).
    """

    def __init__(
        self,
        client: Client,
        space: SpaceConfig,
        *,
        folder: ExperimentFolder | None = None,
        max_trials: int,
        concurrency: int,
        rerun: Sequence[int] = (),
        session: int = 1,
        proposer: RandomProposer | TPEProposer | None = None,
        stopped: dict[str, str] | None = None,
        on_change: Callable[[], None] | None = None,
        baseline: Mapping[str, Any] | None = None,
    ):
        objective = space.objective
        super().__init__(metric=objective.metric, mode="min" if objective.minimize else "max")
        self._client = client
        self._space = space
        self._folder = folder
        self._max_trials = max_trials
        self._concurrency = max(1, concurrency)
        self._queue: deque[int] = deque(rerun)
        self._session = session
        self._proposer = proposer
        self._tokens: dict[int, Any] = {}
        self._on_change = on_change
        self._saved_at = time.monotonic()
        self._stopped = stopped if stopped is not None else {}
        self._live: dict[str, int] = {}
        self._params: dict[int, dict[str, Any]] = {}
        if folder is not None:
            for index, rec in folder.trials.items():
                self._params[index] = dict(rec.get("params") or {})
        self._attached: dict[int, int] = {}
        self._stalls = 0
        self._ax_metrics = {m: ax_metric_name(m) for m in objective.metrics}
        self._baseline = dict(baseline or {})

    # ---- Ray's Searcher interface -------------------------------------------------------
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return True  # the space already fixed the metric, the mode and the parameters

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self._concurrency = max(1, int(max_concurrent))
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self._live) >= self._concurrency:
            return None  # Ray would queue more pending trials than the slots we run at once
        if not self._queue:
            remaining = self._max_trials - len(self._params)
            if remaining <= 0:
                return Searcher.FINISHED
            free = max(1, self._concurrency - len(self._live))
            new = self._generate(min(free, remaining))
            if not new:
                self._stalls += 1
                if not self._live and self._stalls > 50:
                    log.warning(
                        "Ax proposes no further trial and none is running; ending the search"
                    )
                    return Searcher.FINISHED
                return None
            self._stalls = 0
            self._queue.extend(new)
        index = self._queue.popleft()
        self._live[trial_id] = index
        if self._folder is not None:
            self._folder.trial_started(index, ray_trial=trial_id, session=self._session)
        return {INDEX_KEY: index, **self._params[index]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        index = self._live.get(trial_id)
        if index is None or result.get(FINAL_KEY):
            return
        attached = self._attach(index, result)
        if self._folder is not None:
            self._note_retry(index, result)
            self._folder.trial_result(index, _scalars(result))
        if attached:
            # A progression alone need not reach the disk at once: a trial running when
            # the driver stops is run again on resume (from its checkpoint) and reports
            # again. Saving the whole Ax state costs more the longer the search runs, so
            # progressions are saved with the next proposal or completion, or after
            # PROGRESSION_SAVE_S.
            self._changed(save=time.monotonic() - self._saved_at >= PROGRESSION_SAVE_S)

    def _note_retry(self, index: int, result: Mapping[str, Any]) -> None:
        """Record a retry the trial made inside its worker (out of memory: a smaller batch)."""
        reason = result.get(RETRY_KEY)
        if not reason or self._folder is None:
            return
        rec = self._folder.trials.get(index, {})
        batch = plain(result.get(BATCH_KEY))
        if rec.get("reduced_batch_size") == batch and reason in str(rec.get("retry_reason") or ""):
            return
        self._folder.trial_retried(index, str(reason), reduced_batch_size=batch)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        index = self._live.pop(trial_id, None)
        if index is None:
            return
        result = dict(result or {})
        trainable_s = result.pop("search/trainable_s", None)
        timing = {"trainable_s": round(float(trainable_s), 4)} if finite(trainable_s) else {}
        if self._folder is not None:
            self._note_retry(index, result)
        outcome = result.get(OUTCOME_KEY) if result.get(FINAL_KEY) else None
        with quiet_ax():
            if error:
                ending = self._failed(index, "the trial raised an exception", None)
            elif outcome == "early_stopped":
                ending = self._stopped_itself(index, result)
            elif outcome == "failed":
                reason = str(result.get(REASON_KEY) or "") or "the trial failed"
                ending = self._failed(index, reason, result)
            elif result.get(FINAL_KEY):
                ending = self._completed(index, result)
            elif trial_id not in self._stopped:  # the driver is stopping: run it again on resume
                if self._folder is not None:
                    self._folder.trial_finished(index, "interrupted", metrics=None, **timing)
                self._changed()
                return
            else:
                ending = self._stopped_by_scheduler(index, trial_id, result)
        status, metrics, stop_reason = ending
        if self._proposer is not None:
            value = result.get(self._space.objective.metric) if status == "completed" else None
            self._proposer.observe(self._tokens.pop(index, None), value if finite(value) else None)
        if self._folder is not None:
            if stop_reason:
                timing["stop_reason"] = stop_reason
            self._folder.trial_finished(index, status, metrics=metrics, **timing)
        self._changed()

    def _failed(self, index: int, reason: str, result: Mapping[str, Any] | None) -> Ending:
        self._client.mark_trial_failed(index, failed_reason=reason)
        if self._folder is not None and result is not None:
            self._folder.trial_note(index, error=reason)
        return "failed", None if result is None else _scalars(result), None

    def _stopped_itself(self, index: int, result: Mapping[str, Any]) -> Ending:
        """The trial stopped itself (its loss diverged): the last good epoch's score is a
        truncated one, never final; with no score at all it failed."""
        reason = str(result.get(REASON_KEY) or "")
        self._attach(index, result)
        if index not in self._attached:
            return self._failed(index, reason, result)
        self._client.mark_trial_early_stopped(index)
        return "early_stopped", _scalars(result), reason or "the trial stopped itself"

    def _completed(self, index: int, result: Mapping[str, Any]) -> Ending:
        metric = self._space.objective.metric
        data = self._data(result)
        if ax_metric_name(metric) not in data:
            reason = f"the trial returned no finite '{metric}'"
            if result.get(NONFINITE_KEY):
                reason += f" ({result[NONFINITE_KEY]})"
            return self._failed(index, reason, result)
        self._client.complete_trial(
            index, raw_data=data, progression=self._step(result, final=True)
        )
        return "completed", _scalars(result), None

    def _stopped_by_scheduler(self, index: int, trial_id: str, result: Mapping[str, Any]) -> Ending:
        """Truncated by the scheduler: never a final score."""
        self._attach(index, result)
        step = self._step(result)
        recorded = int(
            (self._folder.trials.get(index, {}) if self._folder else {}).get("epochs") or 0
        )
        if self._folder is not None and step is not None and step > recorded:
            self._folder.trial_result(index, _scalars(result))  # the report that decided the stop
        if index in self._attached:
            self._client.mark_trial_early_stopped(index)
        else:
            self._client.mark_trial_abandoned(index)
        reason = self._stopped.get(trial_id) or (
            f"stopped by the {self._space.budget.scheduler} scheduler"
            + (f" after epoch {step}" if step is not None else "")
        )
        return "early_stopped", _scalars(result), reason

    def save(self, checkpoint_path: str) -> None:
        """Ray's own searcher checkpoint is not used: the Ax state in the experiment
        folder is written after every change and is what ``resume`` reads."""
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None

    # ---- Ax-specific helpers ---------------------------------------------------------------
    def should_stop(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Ax's early-stopping decision for a running trial (after attaching ``result``)."""
        index = self._live.get(trial_id)
        if index is None:
            return False
        if self._attach(index, result):
            self._changed()
        with quiet_ax():
            try:
                return bool(self._client.should_stop_trial_early(index))
            except Exception as e:  # a strategy that cannot decide yet must not kill the search
                log.debug("Ax early stopping could not decide for trial %s: %s", index, e)
                return False

    @property
    def client(self) -> Client:
        return self._client

    # ---- internals -------------------------------------------------------------------------
    def _generate(self, k: int) -> list[int]:
        t0 = time.perf_counter()
        new: dict[int, dict[str, Any]] = {}
        with quiet_ax():
            if self._baseline and not self._params:  # a new experiment: the baseline first
                index = int(
                    self._client.attach_trial(parameters=to_ax(self._space, self._baseline))
                )
                new[index] = dict(self._baseline)
            try:
                new.update(self._propose(k - len(new)))
            except AxError as e:
                log.debug("Ax cannot propose a trial now: %s", e)
        self._params.update(new)
        if new:
            if self._folder is not None:
                seconds = (time.perf_counter() - t0) / len(new)
                self._folder.trials_queued(new, proposal_s=round(seconds, 4))
            self._changed()
        return list(new)

    def _propose(self, k: int) -> dict[int, dict[str, Any]]:
        """``k`` new trials from Ax's generation strategy or the alternative proposer."""
        if k <= 0:
            return {}
        if self._proposer is None:
            return {
                int(i): from_ax(self._space, p)
                for i, p in self._client.get_next_trials(max_trials=k).items()
            }
        new = {}
        for _ in range(k):
            params, token = self._proposer.propose()
            index = int(self._client.attach_trial(parameters=to_ax(self._space, params)))
            self._tokens[index] = token
            new[index] = params
        return new

    def _data(self, result: Mapping[str, Any]) -> dict[str, float | tuple[float, float]]:
        return observation(result, self._ax_metrics)

    def _step(self, result: Mapping[str, Any], *, final: bool = False) -> int | None:
        epoch = result.get("epoch")
        if finite(epoch):
            return int(epoch)
        if final:
            return None
        it = result.get("training_iteration")
        return int(it) if finite(it) else None

    def _attach(self, index: int, result: Mapping[str, Any]) -> bool:
        data = self._data(result)
        step = self._step(result)
        if not data or step is None or self._attached.get(index) == step:
            return False
        with quiet_ax():
            self._client.attach_data(index, raw_data=data, progression=step)
        self._attached[index] = step
        return True

    def _changed(self, *, save: bool = True) -> None:
        if self._folder is not None and save:
            self._folder.save_ax(self._client)
            self._saved_at = time.monotonic()
        if self._on_change is not None:
            self._on_change()

    # Ray pickles the Tuner's configuration (search algorithm included) into its
    # experiment folder; the Ax client is not needed there and is left out.
    def __getstate__(self) -> dict[str, Any]:
        return {"_metric": self._metric, "_mode": self._mode, "_detached": True}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def observation(
    result: Mapping[str, Any], names: Mapping[str, str]
) -> dict[str, float | tuple[float, float]]:
    """Ax's raw data of one report: ``{ax name: (mean, sem)}`` for each metric in
    ``names`` (our name -> Ax's) with a finite ``<metric>_sem``, ``{ax name: mean}``
    (noise left to Ax to infer) for one without."""
    data: dict[str, float | tuple[float, float]] = {}
    for metric, ax in names.items():
        value = result.get(metric)
        if not finite(value):
            continue
        sem = result.get(f"{metric}{SEM_SUFFIX}")
        data[ax] = (float(value), float(sem)) if finite(sem) and sem >= 0 else float(value)
    return data


#: Ray's bookkeeping keys in a result (with ``config/...`` and our ``search/...``)
_RAY_KEYS = {
    "config",
    "trial_id",
    "experiment_tag",
    "date",
    "timestamp",
    "pid",
    "hostname",
    "node_ip",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "done",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "should_checkpoint",
    INDEX_KEY,
}


def _scalars(result: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's own metrics from a Ray result (Ray's bookkeeping keys left out)."""
    return {
        k: plain(v)
        for k, v in result.items()
        if k not in _RAY_KEYS
        and not k.startswith(("config/", "search/"))
        and (finite(v) or isinstance(v, str))
    }


__all__ = [
    "AxSearcher",
    "RandomProposer",
    "TPEProposer",
    "ax_metric_name",
    "ax_trial_statuses",
    "build_client",
    "generation_strategy",
    "make_proposer",
    "observation",
    "quiet_ax",
]
