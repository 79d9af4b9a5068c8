"""Proposers other than Ax's generation strategy, for comparisons: uniform random search
and Optuna's TPE. Their trials are attached to the same Ax experiment, so every algorithm
leaves the same records and can resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ax.core.parameter_constraint import ParameterConstraint

from search.parameters import RangeParameter
from search.space import SpaceConfig
from search.values import plain


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
