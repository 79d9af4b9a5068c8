"""Search spaces: one YAML file -> frozen, keyword-only dataclasses split by concern.

A space file has these sections (see ``spaces/*.yaml`` and ``results/README.md``)::

    name: fixmatch                 # default: the file's stem
    seed: 0                        # seeds Ax (Sobol + BoTorch) and every trial
    data:      {...}               # DataSection: the phantom (default) or a DICOM folder + labels CSV
    objective: {...}               # ObjectiveConfig: metric, direction, outcome constraints
    parameters: {...}              # ParametersConfig: what Ax searches and what stays fixed
    parameter_constraints: [...]   # linear constraints between range parameters
    baseline:  {...}               # a hand-set configuration of the searched parameters, run first
    budget:    {...}               # BudgetConfig: trials, concurrency, resources, epochs, scheduler
    tracking:  {...}               # TrackingConfig: W&B project, mode, whether images may be logged

Every problem is reported with the file and the key path, and unknown names come with
the closest valid ones (``spaces/x.yaml: parameters.lr.bounds: lower must be < upper``).
All problems of a file are collected and raised together as one :class:`SpaceError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import pipeline
from search.parameters import (
    ChoiceParameter,
    FixedParameter,
    ParametersConfig,
    RangeParameter,
    trial_keys,
)
from search.problems import Problems, SpaceError, join, short_text
from search.sections import (
    BudgetConfig,
    DataSection,
    ObjectiveConfig,
    TrackingConfig,
)

TOP_KEYS = (
    "name",
    "description",
    "seed",
    "data",
    "objective",
    "parameters",
    "parameter_constraints",
    "baseline",
    "budget",
    "tracking",
)


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """A whole search space: what to search, how to run it and where to report it."""

    name: str
    description: str = ""
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    baseline: Mapping[str, Any] = field(default_factory=dict)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    parameters: ParametersConfig = field(default_factory=ParametersConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    source: str = field(default="<space>", compare=False)
    check_names: bool = True

    # ---- building ---------------------------------------------------------------
    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        source: str = "<space>",
        check_names: bool = True,
        known_keys: Mapping[str, Any] | None = None,
        check_choices: bool = True,
    ) -> SpaceConfig:
        """Validate a plain dict (a parsed YAML file) into a space; raise :class:`SpaceError`.

        ``check_names=False`` accepts parameter names that ``run_trial`` does not know,
        for a custom trainable.
        """
        problems = Problems()
        if not isinstance(d, Mapping):
            raise SpaceError(
                source,
                [("", "a search space is a YAML mapping with sections " + ", ".join(TOP_KEYS))],
            )
        problems.unknown_keys("", d, TOP_KEYS)
        name = d.get("name") or (Path(source).stem if not source.startswith("<") else "experiment")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", name):
            problems.add(
                "name", f"expected a folder-safe name (letters, digits, _ . -), got {name!r}"
            )
            name = "experiment"
        description = d.get("description") or ""
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            problems.add("seed", f"expected a non-negative integer, got {seed!r}")
            seed = 0
        data = DataSection.from_dict(d.get("data") or {}, problems=problems)
        objective = ObjectiveConfig.from_dict(d.get("objective") or {}, problems=problems)
        budget = BudgetConfig.from_dict(d.get("budget") or {}, problems=problems)
        tracking = TrackingConfig.from_dict(d.get("tracking") or {}, problems=problems)
        parameters = ParametersConfig.from_dict(
            d.get("parameters") or {},
            d.get("parameter_constraints"),
            problems=problems,
            known_keys=known_keys,
            budget_keys=budget.trial_settings().keys(),
            check_names=check_names,
            check_choices=check_choices,
        )
        if not parameters.searched:
            problems.add(
                "parameters", "nothing to search: give at least one range or choice parameter"
            )
        if objective.folds is not None:
            for key in ("fold", "folds"):
                if key in parameters.names:
                    problems.add(
                        f"parameters.{key}",
                        "objective.folds cross-validates every trial: leave fold and folds out "
                        "of the parameters",
                    )
        if check_names and check_choices:
            _check_metric_names(objective, parameters, problems)
        baseline = _parse_baseline(d.get("baseline"), parameters, problems)
        if problems.items:
            raise SpaceError(source, problems.items)
        return cls(
            name=name,
            description=str(description),
            seed=seed,
            data=data,
            baseline=baseline,
            objective=objective,
            parameters=parameters,
            budget=budget,
            tracking=tracking,
            source=source,
            check_names=check_names,
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain data (loads back to an equal space)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "data": {k: v for k, v in self.data.trial_settings().items() if v is not None},
            "objective": self.objective.to_dict(),
            "parameters": self.parameters.to_dict(),
        }
        if self.parameters.constraints:
            out["parameter_constraints"] = list(self.parameters.constraints)
        if self.baseline:
            out["baseline"] = dict(self.baseline)
        out["budget"] = {k: v for k, v in dataclasses.asdict(self.budget).items() if v is not None}
        out["tracking"] = {
            k: v for k, v in dataclasses.asdict(self.tracking).items() if v is not None
        }
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def with_overrides(self, **overrides: Any) -> SpaceConfig:
        """A copy with command-line overrides applied and validated again.

        Keys: ``name``, ``data_dir``, ``labels``, ``trials``, ``concurrency``,
        ``cpus_per_trial``, ``gpus_per_trial``, ``epochs``, ``time_budget_s``,
        ``scheduler``, ``algorithm``, ``wandb`` (tracking mode). ``None`` means unchanged.
        """
        d = self.to_dict()
        given = {k: v for k, v in overrides.items() if v is not None}
        budget_keys = {f.name for f in dataclasses.fields(BudgetConfig)}
        for key, value in given.items():
            if key == "name":
                d["name"] = value
            elif key in ("data_dir", "labels"):
                d["data"][key] = str(value)
            elif key == "wandb":
                d["tracking"]["mode"] = value
            elif key in budget_keys:
                d["budget"][key] = value
            else:
                raise ValueError(
                    pipeline.unknown_name_message(
                        "override",
                        key,
                        sorted(budget_keys | {"name", "data_dir", "labels", "wandb"}),
                    )
                )
        if "data_dir" in given and "labels" not in given:
            d["data"].pop("labels", None)
        return SpaceConfig.from_dict(
            d, source=self.source, check_names=self.check_names, check_choices=False
        )

    # ---- trial configs ----------------------------------------------------------
    def trial_base(self) -> dict[str, Any]:
        """Settings every trial shares: data, fixed parameters, budget keys, seed."""
        base: dict[str, Any] = {"seed": self.seed}
        if self.check_names:  # run_trial's data keys; a custom trainable gets only its own
            base.update(self.data.trial_settings())
        base.update(self.budget.trial_settings())
        base.update(self.parameters.fixed)
        if self.objective.folds is not None:  # every trial cross-validates
            base["folds"] = self.objective.folds
        return base

    def max_epochs(self) -> int:
        """The most epochs a trial can run (ASHA's ``max_t``)."""
        if self.budget.epochs is not None:
            return self.budget.epochs
        if "epochs" in self.parameters.names:
            p = self.parameters.get("epochs")
            if isinstance(p, FixedParameter):
                return int(p.value)
            if isinstance(p, RangeParameter):
                return int(p.bounds[1])
            return int(max(p.values))  # type: ignore[type-var]
        return int(trial_keys().get("epochs") or 10)


def _values_of(parameters: ParametersConfig, name: str) -> tuple[Any, ...]:
    """Every value a trial key can take in this space (its default when not given)."""
    if name not in parameters.names:
        return (trial_keys().get(name),)
    p = parameters.get(name)
    if isinstance(p, FixedParameter):
        return (p.value,)
    if isinstance(p, ChoiceParameter):
        return p.values
    return ()


def _check_metric_names(
    objective: ObjectiveConfig, parameters: ParametersConfig, problems: Problems
) -> None:
    """The objective and every constrained metric must be one a trial reports (for every
    task and method the space can run), else every trial would fail at its end."""
    reported: set[str] = set()
    for task in _values_of(parameters, "task"):
        for method in _values_of(parameters, "method"):
            try:
                reported.update(pipeline.trial_metrics(task, method))
            except pipeline.UnknownNameError:
                continue  # an unknown task or method is reported where it is named
    if not reported:
        return
    names = sorted(reported)
    if objective.metric not in reported:
        problems.unknown("objective.metric", "metric no trial reports:", objective.metric, names)
    for i, c in enumerate(objective.constraints):
        if c.metric not in reported:
            problems.unknown(
                f"objective.constraints[{i}]", "metric no trial reports:", c.metric, names
            )


def _parse_baseline(raw: Any, parameters: ParametersConfig, problems: Problems) -> dict[str, Any]:
    """``baseline``: a value for every searched parameter that is active in it (a
    conditional one only when its parent takes a value that activates it)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add("baseline", "expected a mapping of searched parameters to values")
        return {}
    searched = {p.name: p for p in parameters.searched}
    problems.unknown_keys("baseline", raw, list(searched))
    out: dict[str, Any] = {}
    for p in parameters.searched:
        active = p.when is None or raw.get(p.when.parent) in p.when.values
        where = join("baseline", p.name)
        if not active:
            if p.name in raw:
                problems.add(where, f"inactive when {p.when.parent} = {raw.get(p.when.parent)!r}")
            continue
        if p.name not in raw:
            problems.add(where, "missing: give a value for every active searched parameter")
            continue
        value = raw[p.name]
        if isinstance(p, RangeParameter):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and p.bounds[0] <= value <= p.bounds[1]
            if not ok:
                problems.add(where, f"expected a number in {list(p.bounds)}, got {value!r}")
                continue
            value = int(value) if p.value_type == "int" else float(value)
        elif value not in p.values:
            problems.unknown(where, "value", value, map(str, p.values))
            continue
        out[p.name] = value
    return out


def load_space(path: str | os.PathLike[str], *, check_names: bool = True) -> SpaceConfig:
    """Read and validate a search space YAML file."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise SpaceError(source, [("", "file not found")])
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpaceError(
            source,
            [(f"line {line}", f"not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8")],
        ) from e
    try:
        # safe_load: plain data only; a !!python/... tag is refused, never constructed
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).split("\n")[0]
        raise SpaceError(source, [(where, f"not valid YAML: {short_text(problem)}")]) from e
    except RecursionError as e:
        raise SpaceError(source, [("", "not valid YAML: nested too deeply")]) from e
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SpaceError(source, [("", f"not valid YAML: {short_text(str(e))}")]) from e
    return SpaceConfig.from_dict(d if d is not None else {}, source=source, check_names=check_names)
