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

Proposals come from the platform's Ax generation strategy (:func:`generation_strategy`:
centre, seeded Sobol, then BoTorch with a Matern-5/2 GP and qLogNEI) or, for
comparison, from a uniform random or Optuna TPE proposer; their trials are attached to
the same Ax experiment, so every algorithm leaves the same records and can resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ax import ChoiceParameterConfig, Client, RangeParameterConfig
from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
from ax.api.utils.structs import GenerationStrategyDispatchStruct
from ax.core.parameter_constraint import ParameterConstraint
from ax.exceptions.core import AxError
from ax.generators.torch.botorch_modular.kernels import DefaultMaternKernel
from ax.generators.torch.botorch_modular.utils import ModelConfig
from ax.utils.common.logger import set_ax_logger_levels
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from ray.tune.search import Searcher

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
from search.parameters import ChoiceParameter, RangeParameter
from search.space import SpaceConfig
from search.values import finite, plain

if TYPE_CHECKING:
    from ax.generation_strategy.generation_strategy import GenerationStrategy

    from search.experiment import ExperimentFolder

log = logging.getLogger(__name__)
# Seconds between Ax state saves caused by intermediate results alone (see on_trial_result).
PROGRESSION_SAVE_S = 30.0


def ax_metric_name(metric: str) -> str:
    """Ax parses objective strings as expressions: ``val/auroc`` -> ``val_auroc``."""
    return re.sub(r"\W", "_", metric)


@contextlib.contextmanager
def quiet_ax() -> Iterator[None]:
    """Ax logs every trial at INFO and BoTorch warns about fits; keep the terminal clean."""
    set_ax_logger_levels(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


#: how Ax names a parameter that several values of its parent activate: Ax's hierarchical
#: spaces are trees (one parent value per child), so such a parameter becomes one Ax
#: parameter per activating value (``ssl_epochs__when_simclr``, ``ssl_epochs__when_byol``),
#: and back to one name in every trial config and record
BRANCH = "__when_"


def _branches(p: RangeParameter | ChoiceParameter) -> list[tuple[str, Any]]:
    """(Ax name, activating parent value or None) of one of our parameters."""
    if p.when is None or len(p.when.values) == 1:
        return [(p.name, None)]
    return [(f"{p.name}{BRANCH}{v}", v) for v in p.when.values]


def from_ax(space: SpaceConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """Ax's parameters of a trial -> ours (the branch copies back to their one name)."""
    return {n.split(BRANCH, 1)[0]: plain(v) for n, v in params.items()}


def to_ax(space: SpaceConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """Our parameters of a trial -> Ax's (a multi-branch parameter under its branch's name)."""
    out = {}
    for p in space.parameters.searched:
        if p.name in params:
            branch = dict((v, n) for n, v in _branches(p))
            key = p.name if None in branch else branch.get(params.get(p.when.parent), p.name)
            out[key] = params[p.name]
    return out


def _ax_parameter(p: RangeParameter | ChoiceParameter, name: str, space: SpaceConfig) -> Any:
    if isinstance(p, RangeParameter):
        return RangeParameterConfig(
            name=name,
            bounds=(p.bounds[0], p.bounds[1]),
            parameter_type=p.value_type,
            scaling=p.scale,
            step_size=p.step,
        )
    children: dict[Any, list[str]] = {}
    for child in space.parameters.searched:
        if child.when is not None and child.when.parent == p.name:
            for ax_name, value in _branches(child):
                for v in [value] if value is not None else child.when.values:
                    children.setdefault(v, []).append(ax_name)
    return ChoiceParameterConfig(
        name=name,
        values=list(p.values),
        parameter_type=p.value_type,
        is_ordered=p.ordered,
        dependent_parameters={v: children.get(v, []) for v in p.values} if children else None,
    )


def build_client(space: SpaceConfig) -> Client:
    """An Ax client configured from a space: parameters (with conditions and linear
    constraints), objective and outcome constraints, and a seeded generation strategy."""
    with quiet_ax():
        client = Client(random_seed=space.seed)
        params = [
            _ax_parameter(p, name, space)
            for p in space.parameters.searched
            for name, _ in _branches(p)
        ]
        client.configure_experiment(
            parameters=params,
            parameter_constraints=list(space.parameters.constraints) or None,
            name=space.name,
            description=space.description or None,
        )
        sign = "-" if space.objective.minimize else ""
        client.configure_optimization(
            objective=sign + ax_metric_name(space.objective.metric),
            outcome_constraints=[
                f"{ax_metric_name(c.metric)} {c.op} {c.bound!r}"
                for c in space.objective.constraints
            ]
            or None,
        )
        if space.budget.algorithm == "botorch":
            client.set_generation_strategy(generation_strategy(space))
        else:
            client.configure_generation_strategy(
                method="random_search",
                initialization_random_seed=space.seed,
            )
    return client


#: BoTorch's acquisition optimizer: random starting points scored, best ones refined.
ACQF_OPTIMIZER = {"num_restarts": 20, "raw_samples": 1024}


def generation_strategy(space: SpaceConfig) -> GenerationStrategy:
    """The generation strategy of ``budget.algorithm: botorch``, built explicitly so that
    an Ax upgrade cannot change it silently (``Client.configure_generation_strategy``'s
    dispatch "is subject to change"):

    1. ``CenterOfSearchSpace``: the centre of the space (log-scaled parameters: the
       geometric centre), a sensible first training run;
    2. ``Sobol``: scrambled Sobol points seeded with ``space.seed`` until
       ``budget.initialization_trials()`` trials (the centre included) exist; while
       BoTorch waits for at least half of them to finish, free slots get more Sobol
       points rather than idling;
    3. ``MBM``: BoTorch on a single-task GP with a Matern-5/2 kernel and BoTorch's
       dimension-scaled log-normal lengthscale prior (Hvarfner et al. 2024; noise
       inferred, outcomes standardized), proposing with qLogNEI (Ament et al. 2023),
       optimized from ``ACQF_OPTIMIZER`` starts; several free slots get one batch
       proposal that accounts for the pending trials.

    The Matern-5/2 kernel instead of Ax's default RBF kernel: on Hartmann6 (see
    ``benchmarks/search_quality.py``) it left fewer seeds stuck in a local minimum, at
    the same proposal cost. The strategy is part of the Ax state (``ax_state.json``)
    and is restored with it on resume.
    """
    gs = choose_generation_strategy(
        GenerationStrategyDispatchStruct(
            method="custom",
            initialization_budget=space.budget.initialization_trials(),
            initialization_random_seed=space.seed,
            initialize_with_center=True,
            allow_exceeding_initialization_budget=True,  # keep free slots busy while BoTorch waits for data
        ),
        model_config=ModelConfig(
            covar_module_class=DefaultMaternKernel,
            covar_module_options={"nu": 2.5},
            name="Matern52",
        ),
        botorch_acqf_class=qLogNoisyExpectedImprovement,
    )
    for spec in gs.nodes_by_name["MBM"].generator_specs:
        spec.generator_gen_kwargs = {
            "model_gen_options": {"optimizer_kwargs": dict(ACQF_OPTIMIZER)}
        }
    return gs


def ax_trial_statuses(client: Client) -> dict[int, str]:
    """Trial index -> Ax status name (``COMPLETED``, ``RUNNING``, ``FAILED``, ...)."""
    with quiet_ax():
        df = client.summarize()
    if df is None or df.empty or "trial_status" not in df:
        return {}
    return {int(i): str(s).upper() for i, s in zip(df["trial_index"], df["trial_status"])}


# ------------------------------------------------------------------------------------------
# Proposers other than Ax's generation strategy (for comparisons); their trials are
# attached to the Ax experiment so that the records are the same.
# ------------------------------------------------------------------------------------------
class RandomProposer:
    """Uniform random search over the space (log-uniform on log scales), honouring
    conditions and, by rejection, linear constraints."""

    def __init__(self, space: SpaceConfig, seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed)

    def propose(self) -> tuple[dict[str, Any], Any]:
        for _ in range(10_000):
            params = self._draw()
            if _satisfies(params, self.space.parameters.constraints):
                return params, None
        raise RuntimeError("no random point satisfies the parameter constraints after 10000 draws")

    def _draw(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.space.parameters.searched:
            if p.when is not None and out.get(p.when.parent, object()) not in p.when.values:
                continue
            if isinstance(p, RangeParameter):
                lo, hi = p.bounds
                if p.scale == "log":
                    x = float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))
                else:
                    x = float(self.rng.uniform(lo, hi))
                if p.step is not None:
                    x = lo + round((x - lo) / p.step) * p.step
                out[p.name] = round(x) if p.value_type == "int" else x
            else:
                out[p.name] = plain(p.values[int(self.rng.integers(len(p.values)))])
        return out

    def observe(self, token: Any, value: float | None) -> None:
        return None


class TPEProposer:
    """Optuna's TPE sampler (ask/tell), define-by-run so conditions are natural."""

    def __init__(self, space: SpaceConfig, seed: int):
        import optuna  # an optional dependency (the dev extra): only TPE needs it

        self.optuna = optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.study = optuna.create_study(
            direction="minimize" if space.objective.minimize else "maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
        )

    def propose(self) -> tuple[dict[str, Any], Any]:
        for _ in range(1000):
            trial = self.study.ask()
            params: dict[str, Any] = {}
            for p in self.space.parameters.searched:
                if p.when is not None and params.get(p.when.parent, object()) not in p.when.values:
                    continue
                if isinstance(p, RangeParameter):
                    lo, hi = p.bounds
                    log_scale = p.scale == "log"
                    if p.value_type == "int":
                        params[p.name] = trial.suggest_int(
                            p.name, int(lo), int(hi), log=log_scale, step=int(p.step or 1)
                        )
                    else:
                        params[p.name] = trial.suggest_float(
                            p.name, lo, hi, log=log_scale, step=p.step
                        )
                else:
                    params[p.name] = trial.suggest_categorical(p.name, list(p.values))
            if _satisfies(params, self.space.parameters.constraints):
                return params, trial
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        raise RuntimeError("TPE found no point that satisfies the parameter constraints")

    def observe(self, token: Any, value: float | None) -> None:
        if token is None:
            return
        if value is None or not math.isfinite(value):
            self.study.tell(token, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(token, value)


def _satisfies(params: Mapping[str, Any], constraints: Sequence[str]) -> bool:
    """Check linear constraints such as ``x1 + 2*x2 <= 1`` (parsed by Ax) on a point."""
    if not constraints:
        return True
    for text in constraints:
        c = ParameterConstraint(inequality=text)
        total = sum(w * float(params.get(name, 0.0)) for name, w in c.constraint_dict.items())
        if total > c.bound + 1e-9:
            return False
    return True


def make_proposer(space: SpaceConfig) -> RandomProposer | TPEProposer | None:
    """``None`` means Ax's own generation strategy (``botorch`` or ``sobol``)."""
    if space.budget.algorithm == "random":
        return RandomProposer(space, space.seed)
    if space.budget.algorithm == "tpe":
        return TPEProposer(space, space.seed)
    return None


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
        self.proposal_seconds: dict[int, float] = {}
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
            remaining = self._max_trials - self._n_trials()
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
        if rec.get("reduced_batch_size") == result.get(BATCH_KEY) and reason in str(
            rec.get("retry_reason") or ""
        ):
            return
        notes = [n for n in str(rec.get("retry_reason") or "").split("; ") if n]
        self._folder.trial_note(
            index,
            retries=int(rec.get("retries") or 0) + 1,
            retry_reason="; ".join([*notes, str(reason)]),
            reduced_batch_size=plain(result.get(BATCH_KEY)),
        )

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        index = self._live.pop(trial_id, None)
        if index is None:
            return
        result = dict(result or {})
        trainable_s = result.pop("search/trainable_s", None)
        timing = {"trainable_s": round(float(trainable_s), 4)} if finite(trainable_s) else {}
        objective = self._space.objective
        value = result.get(objective.metric)
        if self._folder is not None:
            self._note_retry(index, result)
        outcome = result.get(OUTCOME_KEY) if result.get(FINAL_KEY) else None
        reason = str(result.get(REASON_KEY) or "")
        stop_reason = None
        with quiet_ax():
            if error:
                self._client.mark_trial_failed(index, failed_reason="the trial raised an exception")
                status, metrics = "failed", None
                value = None
            elif outcome == "early_stopped":
                # the trial stopped itself (its loss diverged): the last good epoch's
                # score is a truncated one, never final; no score at all -> failed
                self._attach(index, result)
                if index in self._attached:
                    self._client.mark_trial_early_stopped(index)
                    status, metrics, value = "early_stopped", _scalars(result), None
                    stop_reason = reason or "the trial stopped itself"
                else:
                    self._client.mark_trial_failed(index, failed_reason=reason)
                    status, metrics, value = "failed", _scalars(result), None
                    if self._folder is not None:
                        self._folder.trial_note(index, error=reason)
            elif outcome == "failed":
                self._client.mark_trial_failed(index, failed_reason=reason)
                status, metrics, value = "failed", _scalars(result), None
                if self._folder is not None:
                    self._folder.trial_note(index, error=reason or "the trial failed")
            elif result.get(FINAL_KEY):
                data = self._data(result)
                if ax_metric_name(objective.metric) not in data:
                    reason = f"the trial returned no finite '{objective.metric}'"
                    if result.get(NONFINITE_KEY):
                        reason += f" ({result[NONFINITE_KEY]})"
                    self._client.mark_trial_failed(index, failed_reason=reason)
                    status, metrics, value = "failed", _scalars(result), None
                    if self._folder is not None:
                        self._folder.trial_note(index, error=reason)
                else:
                    step = self._step(result, final=True)
                    self._client.complete_trial(index, raw_data=data, progression=step)
                    status, metrics = "completed", _scalars(result)
            elif trial_id not in self._stopped:  # the driver is stopping: run it again on resume
                if self._folder is not None:
                    self._folder.trial_finished(index, "interrupted", metrics=None, **timing)
                self._changed()
                return
            else:  # stopped by the scheduler: truncated, never a final score
                self._attach(index, result)
                step = self._step(result)
                if (
                    self._folder is not None
                    and step is not None
                    and step > int(self._folder.trials.get(index, {}).get("epochs") or 0)
                ):
                    self._folder.trial_result(
                        index, _scalars(result)
                    )  # the report that decided the stop
                if index in self._attached:
                    self._client.mark_trial_early_stopped(index)
                else:
                    self._client.mark_trial_abandoned(index)
                status, metrics, value = "early_stopped", _scalars(result), None
                stop_reason = self._stopped.get(trial_id) or (
                    f"stopped by the {self._space.budget.scheduler} scheduler"
                    + (f" after epoch {step}" if step is not None else "")
                )
        if self._proposer is not None:
            self._proposer.observe(self._tokens.pop(index, None), value if finite(value) else None)
        if self._folder is not None:
            if stop_reason:
                timing["stop_reason"] = stop_reason
            self._folder.trial_finished(index, status, metrics=metrics, **timing)
        self._changed()

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

    @property
    def live(self) -> dict[str, int]:
        return dict(self._live)

    def index_of(self, trial_id: str) -> int | None:
        return self._live.get(trial_id)

    # ---- internals -------------------------------------------------------------------------
    def _n_trials(self) -> int:
        return len(self._params)

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
        seconds = time.perf_counter() - t0
        for index, params in new.items():
            self._params[index] = params
            self.proposal_seconds[index] = seconds / max(1, len(new))
        if self._folder is not None and new:
            self._folder.trials_queued(new, proposal_s=round(seconds / max(1, len(new)), 4))
        if new:
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


def _scalars(result: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's own metrics from a Ray result (Ray's bookkeeping keys left out)."""
    skip = {
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
        FINAL_KEY,
        INDEX_KEY,
    }
    out = {}
    for k, v in result.items():
        if k in skip or k.startswith(("config/", "search/")):
            continue
        if finite(v) or isinstance(v, str):
            out[k] = plain(v)
    return out
