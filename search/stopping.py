"""Early stopping that never acts on noise: ASHA and Ax's percentile rule, gated by the SEM.

A validation score measured on a few hundred crops moves by a few hundredths from one
crop to the next. Plain ASHA stops every trial below its rung's cutoff, so with a small
validation split it stops trials on noise, and the search then ranks survivors on
noise. Here a trial is stopped only when it is *clearly* worse than the cutoff: by more
than ``STOP_Z`` standard errors of the difference, ``sqrt(sem_trial^2 + sem_ref^2)``,
with each score's ``<metric>_sem`` as the trial reports it (``pipeline``'s patient-level
bootstrap). Without a reported SEM the rule is plain ASHA's.

- ``scheduler: asha`` -> :class:`NoiseAwareASHA` (asynchronous successive halving:
  rungs at ``grace_period * reduction_factor**k`` epochs; at each rung the top
  ``1 / reduction_factor`` go on, the rest only when within the noise of the cutoff);
- ``scheduler: ax`` -> :class:`AxEarlyStopping`: Ax's percentile rule
  (``Client.should_stop_trial_early``), and the same noise gate against the median of
  the other trials at that epoch;
- ``scheduler: none`` -> every trial runs its epochs.

Each scheduler records the trials it stops with the reason (``stopped``: Ray trial id ->
text), which the searcher writes to ``trials.csv`` and tells Ax as early-stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.axclient import ax_metric_name
from search.keys import FINAL_KEY, SEM_SUFFIX
from search.space import SpaceConfig
from search.values import finite

if TYPE_CHECKING:
    from search.searcher import AxSearcher

#: a trial must be worse than the cutoff by this many standard errors to be stopped
STOP_Z = 2.0


def clearly_worse(
    value: float, sem: float | None, reference: float, reference_sem: float | None
) -> bool:
    """True when ``value`` (higher is better) is below ``reference`` by more than
    ``STOP_Z`` standard errors of their difference (a missing SEM counts as 0)."""
    se = math.hypot(sem or 0.0, reference_sem or 0.0)
    return reference - value > STOP_Z * se


class _Scores:
    """Scores per epoch of every trial: (signed value, sem), higher is better."""

    def __init__(self, metric: str, *, minimize: bool):
        self.metric, self.sign = metric, -1.0 if minimize else 1.0
        self.by_epoch: dict[int, dict[str, tuple[float, float | None]]] = {}

    def add(
        self, trial_id: str, result: Mapping[str, Any]
    ) -> tuple[int, float, float | None] | None:
        epoch, value = result.get("epoch"), result.get(self.metric)
        if not (finite(epoch) and finite(value)):
            return None
        sem = result.get(f"{self.metric}{SEM_SUFFIX}")
        sem = float(sem) if finite(sem) else None
        score = (self.sign * float(value), sem)
        self.by_epoch.setdefault(int(epoch), {})[trial_id] = score
        return int(epoch), *score

    def shown(self, signed: float) -> str:
        return f"{self.sign * signed:.4g}"


def _median_sem(scores: Mapping[str, tuple[float, float | None]]) -> float | None:
    sems = [s for _, s in scores.values() if s is not None]
    return float(np.median(sems)) if sems else None


class NoiseAwareASHA(FIFOScheduler):
    """Asynchronous successive halving on the objective per epoch, gated by the noise.

    A trial reaching a rung is compared with the trials recorded at that rung so far
    (itself included): it goes on when it is in the top ``1 / reduction_factor``, when
    fewer than ``reduction_factor`` trials were recorded there (too few to compare), or
    when its shortfall from the cutoff is within ``STOP_Z`` standard errors.
    """

    def __init__(
        self,
        *,
        metric: str,
        minimize: bool,
        max_t: int,
        grace_period: int,
        reduction_factor: int,
        stopped: dict[str, str],
    ):
        super().__init__()
        self.scores = _Scores(metric, minimize=minimize)
        self.rf = int(reduction_factor)
        self.rungs: list[int] = []
        rung = int(grace_period)
        while rung < max_t:
            self.rungs.append(rung)
            rung *= self.rf
        self.recorded: dict[int, dict[str, tuple[float, float | None]]] = {
            r: {} for r in self.rungs
        }
        self.stopped = stopped

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(FINAL_KEY):
            return TrialScheduler.CONTINUE
        added = self.scores.add(trial.trial_id, result)
        if added is None:
            return TrialScheduler.CONTINUE
        epoch, value, sem = added
        reached = [r for r in self.rungs if r <= epoch and trial.trial_id not in self.recorded[r]]
        if not reached:
            return TrialScheduler.CONTINUE
        rung = reached[-1]
        self.recorded[rung][trial.trial_id] = (value, sem)
        reason = self.decide(rung, trial.trial_id)
        if reason is None:
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = reason
        return TrialScheduler.STOP

    def decide(self, rung: int, trial_id: str) -> str | None:
        """Why the trial stops at ``rung``, or ``None`` when it goes on."""
        at_rung = self.recorded[rung]
        if len(at_rung) < self.rf:
            return None
        value, sem = at_rung[trial_id]
        cutoff = float(np.percentile([v for v, _ in at_rung.values()], 100 * (1 - 1 / self.rf)))
        if value >= cutoff:
            return None
        ref_sem = _median_sem(at_rung)
        if not clearly_worse(value, sem, cutoff, ref_sem):
            return None
        show = self.scores.shown
        return (
            f"stopped by ASHA after epoch {rung}: {self.scores.metric} {show(value)} below the "
            f"rung's top-1/{self.rf} cutoff {show(cutoff)} by more than {STOP_Z:g} standard "
            f"errors ({math.hypot(sem or 0.0, ref_sem or 0.0):.3g})"
        )


class AxEarlyStopping(FIFOScheduler):
    """Ax's early-stopping strategy (``Client.should_stop_trial_early``) as a Ray
    scheduler, acting only when the trial is clearly worse than the median of the other
    trials at the same epoch (the noise gate of the module docstring)."""

    def __init__(
        self, *, searcher: AxSearcher, metric: str, minimize: bool, stopped: dict[str, str]
    ):
        super().__init__()
        self.searcher = searcher
        self.scores = _Scores(metric, minimize=minimize)
        self.stopped = stopped

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(FINAL_KEY):
            return TrialScheduler.CONTINUE
        added = self.scores.add(trial.trial_id, result)
        if not self.searcher.should_stop(trial.trial_id, result) or added is None:
            return TrialScheduler.CONTINUE
        epoch, value, sem = added
        others = {t: s for t, s in self.scores.by_epoch[epoch].items() if t != trial.trial_id}
        if not others:
            return TrialScheduler.CONTINUE
        median = float(np.median([v for v, _ in others.values()]))
        if not clearly_worse(value, sem, median, _median_sem(others)):
            return TrialScheduler.CONTINUE
        show = self.scores.shown
        self.stopped[trial.trial_id] = (
            f"stopped by Ax's percentile rule after epoch {epoch}: {self.scores.metric} "
            f"{show(value)} below the other trials' median {show(median)} by more than "
            f"{STOP_Z:g} standard errors"
        )
        return TrialScheduler.STOP


def build_scheduler(space: SpaceConfig, searcher: AxSearcher, stopped: dict[str, str]) -> Any:
    """The space's scheduler (``budget.scheduler``), recording what it stops in ``stopped``."""
    budget, objective = space.budget, space.objective
    if budget.scheduler == "asha":
        return NoiseAwareASHA(
            metric=objective.metric,
            minimize=objective.minimize,
            max_t=max(space.max_epochs(), budget.grace_period),
            grace_period=budget.grace_period,
            reduction_factor=budget.reduction_factor,
            stopped=stopped,
        )
    if budget.scheduler == "ax":
        searcher.client.set_early_stopping_strategy(
            PercentileEarlyStoppingStrategy(
                metric_signatures=[ax_metric_name(objective.metric)],
                percentile_threshold=50.0,
                min_progression=budget.grace_period,
                min_curves=max(2, min(5, budget.trials // 3)),
            )
        )
        return AxEarlyStopping(
            searcher=searcher, metric=objective.metric, minimize=objective.minimize, stopped=stopped
        )
    return FIFOScheduler()
