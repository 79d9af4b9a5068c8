"""Search spaces: one YAML file -> frozen, keyword-only dataclasses split by concern.

A space file has these sections (see ``spaces/*.yaml`` and ``results/README.md``)::

    name: fixmatch                 # default: the file's stem
    seed: 0                        # seeds Ax (Sobol + BoTorch) and every trial
    data:      {...}               # DataConfig: the phantom (default) or a DICOM folder + labels CSV
    objective: {...}               # ObjectiveConfig: metric, direction, outcome constraints
    parameters: {...}              # ParametersConfig: what Ax searches and what stays fixed
    parameter_constraints: [...]   # linear constraints between range parameters
    budget:    {...}               # BudgetConfig: trials, concurrency, resources, epochs, scheduler
    tracking:  {...}               # TrackingConfig: W&B project, mode, whether images may be logged

Every problem is reported with the file and the key path, and unknown names come with
the closest valid ones (``spaces/x.yaml: parameters.lr.bounds: lower must be < upper``).
All problems of a file are collected and raised together as one :class:`SpaceError`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.registry import unknown_name_message

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# The trial entry point's configuration keys (docs/architecture.md, "Trial configuration
# keys"). When ``pipeline`` exports ``TrialConfig``, its fields are used instead.
# --------------------------------------------------------------------------------------
DOCUMENTED_TRIAL_KEYS: dict[str, Any] = {
    # data
    "data_dir": None,
    "labels": None,
    "phantom_n": 600,
    "phantom_seed": 0,
    "phantom_size": 256,
    "cache_dir": None,
    "labeled_limit": None,
    # preprocessing
    "image_size": 64,
    "clahe_clip": 2.0,
    "clahe_grid": 8,
    "window_low": 0.5,
    "window_high": 99.5,
    "localize": True,
    # split
    "val_fraction": 0.15,
    "test_fraction": 0.15,
    "fold": None,
    "folds": None,
    "leave_site_out": None,
    "split_seed": 0,
    # model
    "backbone": "resnet18",
    "pretrained": None,
    "task": "binary",
    "views": "ap",
    "drop_rate": 0.0,
    # pretraining
    "metadata_epochs": 0,
    "ssl_method": "none",
    "ssl_epochs": 0,
    "ssl_lr": 1e-3,
    # method
    "method": "supervised",
    "threshold": 0.95,
    "lambda_u": 1.0,
    "mu": 7,
    "dist_align": False,
    "ema_decay": 0.999,
    "T": 0.5,
    "K": 2,
    "alpha": 0.75,
    "rampup_epochs": 16,
    # imbalance
    "loss": "ce",
    "focal_gamma": 2.0,
    "cb_beta": 0.999,
    "sampler": "uniform",
    "sampler_ratio": 0.25,
    # optimisation
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "batch_size": 32,
    "epochs": 10,
    "steps_per_epoch": None,
    "time_budget_s": None,
    "early_stop_patience": None,
    "threshold_metric": "f2",
    # runtime
    "seed": 0,
    "threads": None,
    "device": "auto",
    "precision": "auto",
    "channels_last": "auto",
    "compile": False,
    "checkpoint_dir": None,
    "num_workers": 0,
}

#: keys of the data group: they live in the ``data`` section, not in ``parameters``.
DATA_KEYS = (
    "data_dir",
    "labels",
    "phantom_n",
    "phantom_seed",
    "phantom_size",
    "cache_dir",
    "labeled_limit",
)
#: keys the platform sets for every trial (from the trial's resources and Ray trial dir).
RUNTIME_KEYS = ("checkpoint_dir", "threads")
#: keys the budget section may set (then they must not also be parameters).
BUDGET_TRIAL_KEYS = ("epochs", "time_budget_s", "steps_per_epoch")

#: choices documented for string-valued keys; registries (``pipeline.list_parts``) win.
DOCUMENTED_CHOICES: dict[str, tuple[str, ...]] = {
    "task": ("binary", "schatzker", "hierarchical"),
    "views": ("ap", "ap+lat"),
    "ssl_method": ("none", "simclr", "byol"),
    "method": ("supervised", "fixmatch", "mixmatch"),
    "loss": ("ce", "weighted_ce", "focal", "class_balanced", "logit_adjusted", "ldam"),
    "sampler": ("uniform", "weighted", "ratio"),
    "optimizer": ("adamw", "sgd"),
}
#: trial key -> the registry kind ``pipeline.list_parts`` knows it by.
REGISTRY_KINDS = {
    "loss": "losses",
    "sampler": "samplers",
    "method": "methods",
    "ssl_method": "ssl_methods",
    "task": "tasks",
}

Scalar = bool | int | float | str


def trial_keys() -> dict[str, Any]:
    """Name -> default of every key ``run_trial`` accepts (a copy).

    Uses ``pipeline.trial_keys()`` (the source of truth) when the pipeline can be
    imported, else the table documented in docs/architecture.md.
    """
    return dict(_trial_keys())


@functools.lru_cache(maxsize=1)
def _trial_keys() -> dict[str, Any]:
    try:
        from pipeline import trial_keys as pipeline_trial_keys

        keys = dict(pipeline_trial_keys())
        if keys:
            return keys
    except Exception as e:  # an incomplete pipeline install must not stop validation
        log.debug("pipeline.trial_keys() unavailable (%s); using the documented keys", e)
    return dict(DOCUMENTED_TRIAL_KEYS)


def registry_choices(key: str) -> tuple[str, ...] | None:
    """Valid names for a string trial key, from the pipeline's registries when exported."""
    kind = REGISTRY_KINDS.get(key)
    if kind is not None:
        try:
            from pipeline import list_parts  # type: ignore[attr-defined]

            names = tuple(name for name, _doc in list_parts(kind))
            if names:
                return names
        except Exception as e:  # as in trial_keys(): fall back to the documented names
            log.debug("pipeline.list_parts(%r) unavailable (%s)", kind, e)
    return DOCUMENTED_CHOICES.get(key)


def is_timm_backbone(name: str) -> bool:
    """True when timm can build ``name`` (checked with ``timm.list_models``)."""
    import timm

    return timm.is_model(name)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
class SpaceError(ValueError):
    """One or more problems in a search space; each names the file and the key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        return "\n".join(
            f"{self.source}: {path}: {msg}" if path else f"{self.source}: {msg}"
            for path, msg in self.problems
        )

    def __str__(self) -> str:
        return self._format()


_LONG_WORD = re.compile(r"\S{100,}")


class _Problems:
    """Collects problems while a space is parsed, so one run reports them all."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        # a pasted or corrupted value can be kilobytes long: keep each line readable
        path, message = (
            _LONG_WORD.sub(lambda m: m.group()[:60] + "...", t) for t in (path, message)
        )
        self.items.append((path, message))

    def unknown_keys(self, path: str, given: Iterable[str], allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in given:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.add(where, unknown_name_message("key", key, allowed))


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened (a fuzzed or pasted value can be megabytes long)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        text = f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_text(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _number(value: Any) -> float | int | None:
    """A finite YAML number; also accepts strings such as ``1e-4`` (YAML 1.1 reads them as
    text). Infinities, NaN and integers beyond the float range are not numbers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return None
        whole = re.fullmatch(r"[-+]?\d+", value.strip()) is not None
        try:
            value = int(value.strip()) if whole else number
        except ValueError:  # more digits than int() converts
            return None
    if isinstance(value, int):
        return value if _finite(value) else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def _finite(value: Any) -> bool:
    """True for a number that converts to a finite float (ints beyond 1.8e308 do not)."""
    try:
        return math.isfinite(float(value))
    except (OverflowError, TypeError, ValueError):
        return False


def _mapping(value: Any, path: str, problems: _Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(path, f"expected a mapping, got {type(value).__name__}")
        return {}
    return dict(value)


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the images come from: the synthetic phantom (default) or a DICOM folder.

    Paths are made absolute when the space is loaded (relative to the working folder),
    because trials run in other processes with another working folder.
    """

    data_dir: Path | None = None
    labels: Path | None = None
    phantom_n: int = 600
    phantom_seed: int = 0
    phantom_size: int = 256
    cache_dir: Path | None = None
    labeled_limit: int | None = None

    @property
    def is_phantom(self) -> bool:
        return self.data_dir is None

    def trial_settings(self) -> dict[str, Any]:
        """The data keys of a trial's config (paths as strings)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, path: str = "data", problems: _Problems | None = None
    ) -> DataConfig:
        own = problems is None
        problems = problems or _Problems()
        d = _mapping(d, path, problems)
        problems.unknown_keys(path, d, [f.name for f in dataclasses.fields(cls)])
        kwargs: dict[str, Any] = {}
        for key in ("data_dir", "labels", "cache_dir"):
            value = d.get(key)
            if value is None:
                continue
            if not isinstance(value, str | os.PathLike):
                problems.add(_join(path, key), "expected a path")
                continue
            kwargs[key] = Path(os.path.expanduser(str(value))).resolve()
        for key in ("phantom_n", "phantom_seed", "phantom_size", "labeled_limit"):
            if key in d and d[key] is not None:
                value = d[key]
                if isinstance(value, bool) or not isinstance(value, int):
                    problems.add(_join(path, key), f"expected an integer, got {value!r}")
                elif value < 0 or (key in ("phantom_n", "phantom_size") and value < 1):
                    problems.add(_join(path, key), f"must be positive, got {value}")
                else:
                    kwargs[key] = value
        data_dir, labels = kwargs.get("data_dir"), kwargs.get("labels")
        if data_dir is not None and not data_dir.is_dir():
            problems.add(_join(path, "data_dir"), f"folder not found: {data_dir}")
        if labels is not None:
            if data_dir is None:
                problems.add(
                    _join(path, "labels"), "a labels CSV needs data.data_dir (the DICOM folder)"
                )
            elif not labels.is_file():
                problems.add(_join(path, "labels"), f"file not found: {labels}")
        elif data_dir is not None and data_dir.is_dir() and not (data_dir / "labels.csv").is_file():
            problems.add(
                _join(path, "labels"),
                f"not given and {data_dir / 'labels.csv'} does not exist: name the labels CSV",
            )
        if own and problems.items:
            raise SpaceError("<data>", problems.items)
        return cls(**kwargs)


_CONSTRAINT_RE = re.compile(
    r"^\s*([A-Za-z_][\w/.\-]*)\s*(>=|<=)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True, kw_only=True)
class OutcomeConstraint:
    """``metric >= bound`` or ``metric <= bound``, e.g. ``val/sensitivity >= 0.9``."""

    metric: str
    op: Literal[">=", "<="]
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def satisfied(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.bound if self.op == ">=" else value <= self.bound


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """What the search optimizes: one metric reported by the trial, and its direction."""

    metric: str = "val/auroc"
    direction: Literal["maximize", "minimize"] = "maximize"
    constraints: tuple[OutcomeConstraint, ...] = ()

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    @property
    def metrics(self) -> tuple[str, ...]:
        """The objective metric first, then every constrained metric."""
        names = [self.metric]
        names += [c.metric for c in self.constraints if c.metric not in names]
        return tuple(names)

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return a < b if self.minimize else a > b

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, path: str = "objective", problems: _Problems | None = None
    ) -> ObjectiveConfig:
        own = problems is None
        problems = problems or _Problems()
        d = _mapping(d, path, problems)
        problems.unknown_keys(path, d, ["metric", "direction", "constraints"])
        kwargs: dict[str, Any] = {}
        metric = d.get("metric", cls.metric)
        if not isinstance(metric, str) or not re.fullmatch(r"[A-Za-z_][\w/.\-]*", metric):
            problems.add(
                _join(path, "metric"), f"expected a metric name such as 'val/auroc', got {metric!r}"
            )
        else:
            kwargs["metric"] = metric
        direction = d.get("direction", cls.direction)
        if direction not in ("maximize", "minimize"):
            problems.add(
                _join(path, "direction"),
                unknown_name_message("direction", direction, ["maximize", "minimize"]),
            )
        else:
            kwargs["direction"] = direction
        raw = d.get("constraints") or []
        if not isinstance(raw, list):
            problems.add(
                _join(path, "constraints"), "expected a list such as ['val/sensitivity >= 0.9']"
            )
            raw = []
        constraints = []
        for i, text in enumerate(raw):
            m = _CONSTRAINT_RE.match(str(text))
            if m is None:
                problems.add(
                    _join(_join(path, "constraints"), i),
                    f"expected 'METRIC >= NUMBER' or 'METRIC <= NUMBER', got {text!r}",
                )
                continue
            constraints.append(
                OutcomeConstraint(metric=m.group(1), op=m.group(2), bound=float(m.group(3)))
            )  # type: ignore[arg-type]
        kwargs["constraints"] = tuple(constraints)
        if own and problems.items:
            raise SpaceError("<objective>", problems.items)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "direction": self.direction,
            "constraints": [str(c) for c in self.constraints],
        }


@dataclass(frozen=True, kw_only=True)
class Condition:
    """A parameter is active only when ``parent`` takes one of ``values``."""

    parent: str
    values: tuple[Scalar, ...]

    def to_dict(self) -> dict[str, Any]:
        return {self.parent: list(self.values) if len(self.values) > 1 else self.values[0]}


@dataclass(frozen=True, kw_only=True)
class RangeParameter:
    """A float or int searched between ``bounds`` (inclusive), linear or log scale."""

    name: str
    bounds: tuple[float, float] | tuple[int, int]
    value_type: Literal["float", "int"] = "float"
    scale: Literal["linear", "log"] = "linear"
    step: float | None = None
    when: Condition | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "range",
            "bounds": list(self.bounds),
            "value_type": self.value_type,
            "scale": self.scale,
        }
        if self.step is not None:
            out["step"] = self.step
        if self.when is not None:
            out["when"] = self.when.to_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class ChoiceParameter:
    """One of ``values``; ``ordered`` tells Ax whether neighbouring values are similar."""

    name: str
    values: tuple[Scalar, ...]
    ordered: bool = False
    when: Condition | None = None

    @property
    def value_type(self) -> Literal["bool", "int", "float", "str"]:
        return _value_type(self.values)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "choice",
            "values": list(self.values),
            "ordered": self.ordered,
        }
        if self.when is not None:
            out["when"] = self.when.to_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class FixedParameter:
    """A setting every trial gets, not searched."""

    name: str
    value: Any

    def to_dict(self) -> Any:
        return self.value


Parameter = RangeParameter | ChoiceParameter | FixedParameter


def _value_type(values: Iterable[Any]) -> str | None:
    values = list(values)
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "float"
    if all(isinstance(v, str) for v in values):
        return "str"
    return None


_IDENT_RE = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True, kw_only=True)
class ParametersConfig:
    """What Ax searches (range and choice parameters, conditions, linear constraints)
    and the settings every trial shares (fixed parameters)."""

    parameters: tuple[Parameter, ...] = ()
    constraints: tuple[str, ...] = ()

    @property
    def searched(self) -> tuple[RangeParameter | ChoiceParameter, ...]:
        return tuple(p for p in self.parameters if not isinstance(p, FixedParameter))

    @property
    def fixed(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.parameters if isinstance(p, FixedParameter)}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def get(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def children(self, parent: str) -> dict[Scalar, list[str]]:
        """value of ``parent`` -> names of the parameters active only for that value."""
        out: dict[Scalar, list[str]] = {}
        for p in self.searched:
            if p.when is not None and p.when.parent == parent:
                for v in p.when.values:
                    out.setdefault(v, []).append(p.name)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self.parameters}

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        constraints: Any = None,
        *,
        path: str = "parameters",
        problems: _Problems | None = None,
        known_keys: Mapping[str, Any] | None = None,
        budget_keys: Iterable[str] = (),
        check_names: bool = True,
        check_choices: bool = True,
    ) -> ParametersConfig:
        """Parse the ``parameters`` mapping and ``parameter_constraints`` list.

        ``known_keys`` (default: :func:`trial_keys`) are the names a parameter may have;
        ``check_names=False`` accepts any identifier (for a trainable other than
        ``run_trial``, such as the benchmark's test functions); ``check_choices=False``
        skips the registry and timm look-ups (for a space that was validated before).
        """
        own = problems is None
        problems = problems or _Problems()
        d = _mapping(d, path, problems)
        keys = dict(known_keys) if known_keys is not None else trial_keys()
        budget_keys = set(budget_keys)
        parsed: list[Parameter] = []
        raw_when: dict[str, tuple[str, Any]] = {}
        for name, spec in d.items():
            where = _join(path, str(name))
            if not isinstance(name, str) or not _IDENT_RE.fullmatch(name):
                problems.add(where, "a parameter name must be an identifier")
                continue
            if check_names:
                if name in DATA_KEYS:
                    problems.add(where, f"'{name}' belongs in the data section (data.{name})")
                    continue
                if name in RUNTIME_KEYS:
                    problems.add(
                        where,
                        f"'{name}' is set by the platform for every trial "
                        "(from the trial's resources and folder)",
                    )
                    continue
                if name not in keys:
                    problems.add(where, unknown_name_message("trial setting", name, sorted(keys)))
                    continue
            if name in budget_keys:
                problems.add(
                    where, f"'{name}' is also set in the budget section (budget.{name}); keep one"
                )
                continue
            param = _parse_parameter(name, spec, where, problems, raw_when)
            if param is None:
                continue
            if check_names:
                _check_values(param, keys.get(name), where, problems, check_choices=check_choices)
            parsed.append(param)
        parsed = _resolve_conditions(parsed, raw_when, path, problems)
        cons = _parse_linear_constraints(constraints, parsed, problems)
        if own and problems.items:
            raise SpaceError("<parameters>", problems.items)
        return cls(parameters=tuple(parsed), constraints=cons)


def _parse_parameter(
    name: str, spec: Any, where: str, problems: _Problems, raw_when: dict[str, tuple[str, Any]]
) -> Parameter | None:
    if isinstance(spec, list):  # shorthand: [a, b, c] is an unordered choice
        spec = {"type": "choice", "values": spec}
    if not isinstance(spec, Mapping):
        return FixedParameter(name=name, value=spec)
    spec = dict(spec)
    kind = spec.get("type")
    if kind is None:
        kind = (
            "range"
            if "bounds" in spec
            else "choice"
            if "values" in spec
            else "fixed"
            if "value" in spec
            else None
        )
    if kind not in ("range", "choice", "fixed"):
        problems.add(
            _join(where, "type"),
            unknown_name_message("parameter type", kind, ["range", "choice", "fixed"]),
        )
        return None
    if "when" in spec:
        when = spec["when"]
        if not isinstance(when, Mapping) or len(when) != 1:
            problems.add(_join(where, "when"), "expected one condition such as {method: fixmatch}")
        else:
            ((parent, values),) = when.items()
            raw_when[name] = (str(parent), values)
    if kind == "fixed":
        problems.unknown_keys(where, spec, ["type", "value"])
        if "value" not in spec:
            problems.add(where, "a fixed parameter needs 'value'")
            return None
        return FixedParameter(name=name, value=spec["value"])
    if kind == "range":
        problems.unknown_keys(
            where, spec, ["type", "bounds", "value_type", "scale", "step", "when"]
        )
        bounds = spec.get("bounds")
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            problems.add(_join(where, "bounds"), "expected [lower, upper]")
            return None
        lo, hi = (_number(b) for b in bounds)
        if lo is None or hi is None:
            problems.add(_join(where, "bounds"), f"expected two numbers, got {list(bounds)!r}")
            return None
        value_type = spec.get("value_type")
        if value_type is None:
            value_type = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
        if value_type not in ("int", "float"):
            problems.add(
                _join(where, "value_type"),
                unknown_name_message("value type", value_type, ["float", "int"]),
            )
            return None
        if value_type == "int" and (float(lo) != int(lo) or float(hi) != int(hi)):
            problems.add(_join(where, "bounds"), "an int parameter needs whole-number bounds")
            return None
        lo, hi = (int(lo), int(hi)) if value_type == "int" else (float(lo), float(hi))
        if not lo < hi:
            problems.add(_join(where, "bounds"), "lower must be < upper")
            return None
        scale = spec.get("scale", "linear")
        if scale not in ("linear", "log"):
            problems.add(
                _join(where, "scale"), unknown_name_message("scale", scale, ["linear", "log"])
            )
            return None
        if scale == "log" and lo <= 0:
            problems.add(_join(where, "bounds"), "a log-scale parameter needs lower > 0")
            return None
        step = spec.get("step")
        if step is not None:
            step = _number(step)
            if step is None or step <= 0:
                problems.add(_join(where, "step"), "expected a positive number")
                return None
            if scale == "log":
                problems.add(_join(where, "step"), "a step needs scale: linear")
                return None
            n = (hi - lo) / step
            if abs(n - round(n)) > 1e-6:
                problems.add(
                    _join(where, "step"),
                    f"(upper - lower) = {hi - lo:g} is not a multiple of {step:g}",
                )
                return None
        return RangeParameter(
            name=name, bounds=(lo, hi), value_type=value_type, scale=scale, step=step
        )
    # choice
    problems.unknown_keys(where, spec, ["type", "values", "ordered", "when"])
    values = spec.get("values")
    if not isinstance(values, list | tuple) or len(values) < 1:
        problems.add(_join(where, "values"), "expected a non-empty list")
        return None
    if len(set(map(repr, values))) != len(values):
        problems.add(_join(where, "values"), "values must be distinct")
        return None
    vtype = _value_type(values)
    if vtype is None:
        problems.add(
            _join(where, "values"), "values must all be numbers, all strings or all booleans"
        )
        return None
    if len(values) == 1:
        return FixedParameter(name=name, value=values[0])
    ordered = spec.get("ordered")
    if ordered is None:
        ordered = vtype in ("int", "float")
    if not isinstance(ordered, bool):
        problems.add(_join(where, "ordered"), "expected true or false")
        return None
    return ChoiceParameter(name=name, values=tuple(values), ordered=ordered)


def _check_values(
    param: Parameter, default: Any, where: str, problems: _Problems, *, check_choices: bool = True
) -> None:
    """Light type checks against the trial key's default and the registries."""
    if isinstance(param, FixedParameter):
        values: tuple[Any, ...] = (param.value,)
        sub = where
    elif isinstance(param, ChoiceParameter):
        values, sub = param.values, _join(where, "values")
    else:
        values, sub = param.bounds, _join(where, "bounds")
    if isinstance(default, bool):
        bad = [v for v in values if not isinstance(v, bool)]
        if bad:
            problems.add(sub, f"'{param.name}' is true or false, got {bad[0]!r}")
        return
    if isinstance(default, int | float) and not isinstance(default, bool):
        bad = [
            v
            for v in values
            if v is not None
            and (isinstance(v, bool) or not isinstance(v, int | float) or not _finite(v))
        ]
        if bad:
            problems.add(sub, f"'{param.name}' is a finite number, got {_shown(bad[0])}")
        elif isinstance(default, int):
            # int settings (epochs, mu, batch_size, ...) take whole numbers
            frac = [v for v in values if isinstance(v, float) and not float(v).is_integer()]
            if frac or (isinstance(param, RangeParameter) and param.value_type == "float"):
                problems.add(sub, f"'{param.name}' takes whole numbers (value_type: int)")
        return
    if not check_choices:
        return
    if param.name == "backbone":
        for v in values:
            if not isinstance(v, str) or not is_timm_backbone(v):
                import timm

                problems.add(sub, unknown_name_message("backbone", v, timm.list_models()))
        return
    choices = registry_choices(param.name)
    if choices:
        for v in values:
            if v not in choices:
                problems.add(
                    sub, unknown_name_message(param.name.replace("_", " "), v, list(choices))
                )


def _resolve_conditions(
    parsed: list[Parameter], raw_when: dict[str, tuple[str, Any]], path: str, problems: _Problems
) -> list[Parameter]:
    """Attach ``when`` conditions; a condition on a fixed parent is decided here."""
    by_name = {p.name: p for p in parsed}
    out: list[Parameter] = []
    for p in parsed:
        if p.name not in raw_when:
            out.append(p)
            continue
        parent_name, raw_values = raw_when[p.name]
        where = _join(_join(path, p.name), "when")
        values = tuple(raw_values) if isinstance(raw_values, list | tuple) else (raw_values,)
        parent = by_name.get(parent_name)
        if parent is None:
            problems.add(
                where, unknown_name_message("parent parameter", parent_name, sorted(by_name))
            )
            continue
        if parent_name == p.name:
            problems.add(where, "a parameter cannot depend on itself")
            continue
        if isinstance(parent, RangeParameter):
            problems.add(where, f"the parent '{parent_name}' must be a choice or fixed parameter")
            continue
        if isinstance(parent, FixedParameter):
            # a condition on a fixed setting may name any valid value of that setting
            choices = registry_choices(parent_name)
            parent_values = (*choices, parent.value) if choices else tuple(values)
        else:
            parent_values = parent.values
        bad = [v for v in values if v not in parent_values]
        if bad:
            problems.add(
                where,
                unknown_name_message(
                    f"value of {parent_name}", bad[0], [str(v) for v in parent_values]
                ),
            )
            continue
        if isinstance(p, FixedParameter):
            problems.add(where, "only searched parameters can be conditional")
            continue
        if isinstance(parent, FixedParameter):
            if parent.value in values:  # the condition always holds: an ordinary parameter
                out.append(p)
            # else it never holds: the parameter is inactive and dropped
            continue
        out.append(dataclasses.replace(p, when=Condition(parent=parent_name, values=values)))
    # drop children whose parent was itself dropped (an inactive branch), to a fixed point
    while True:
        names = {p.name for p in out}
        kept = [p for p in out if getattr(p, "when", None) is None or p.when.parent in names]  # type: ignore[union-attr]
        if len(kept) == len(out):
            return kept
        out = kept


def _parse_linear_constraints(
    raw: Any, params: list[Parameter], problems: _Problems
) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add("parameter_constraints", "expected a list such as ['x1 + x2 <= 1']")
        return ()
    by_name = {p.name: p for p in params}
    out = []
    for i, text in enumerate(raw):
        where = f"parameter_constraints[{i}]"
        if not isinstance(text, str) or ("<=" not in text and ">=" not in text):
            problems.add(
                where, f"expected a linear inequality such as 'x1 + 2*x2 <= 1', got {text!r}"
            )
            continue
        names = [n for n in _IDENT_RE.findall(text) if not re.fullmatch(r"[eE]\d*", n)]
        ok = bool(names)
        for n in names:
            p = by_name.get(n)
            if p is None:
                problems.add(where, unknown_name_message("parameter", n, sorted(by_name)))
                ok = False
            elif isinstance(p, FixedParameter):
                problems.add(where, f"'{n}' is fixed; constraints relate searched range parameters")
                ok = False
            elif isinstance(p, ChoiceParameter) and not (
                p.ordered and p.value_type in ("int", "float")
            ):
                problems.add(where, f"'{n}' must be a range or ordered numeric choice parameter")
                ok = False
            elif getattr(p, "scale", "linear") == "log":
                problems.add(where, f"'{n}' is log-scaled; linear constraints need scale: linear")
                ok = False
            elif p.when is not None:
                problems.add(
                    where, f"'{n}' is conditional; constraints need always-active parameters"
                )
                ok = False
        if ok:
            out.append(text.strip())
    return tuple(out)


SCHEDULERS = ("asha", "ax", "none")
ALGORITHMS = ("botorch", "sobol", "random", "tpe")


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """How much to run and how: trials, concurrency, per-trial resources and epochs,
    the early-stopping scheduler and the proposal algorithm.

    ``concurrency`` is capped at what fits the cluster (CPUs and GPUs per trial).
    ``epochs``, ``time_budget_s`` and ``steps_per_epoch`` go to every trial's config.
    ``scheduler``: ``asha`` (Ray's ASHA on the objective per epoch), ``ax`` (Ax's
    percentile early stopping) or ``none``. ``algorithm``: ``botorch`` (Sobol, then
    BoTorch; the default), ``sobol``, ``random`` or ``tpe`` (Optuna), all recorded the
    same way in the experiment's Ax state.
    """

    trials: int = 20
    concurrency: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    epochs: int | None = None
    time_budget_s: float | None = None
    steps_per_epoch: int | None = None
    scheduler: Literal["asha", "ax", "none"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    max_failures: int = 1
    initial_trials: int | None = None
    algorithm: Literal["botorch", "sobol", "random", "tpe"] = "botorch"
    final_epochs: int | None = None

    @property
    def threads(self) -> int:
        """Threads each trial may use: its CPUs, at least one."""
        return max(1, int(self.cpus_per_trial))

    def initialization_trials(self) -> int:
        """Sobol trials before BoTorch: the given number, else min(5, trials // 2)."""
        if self.initial_trials is not None:
            return self.initial_trials
        return max(1, min(5, self.trials // 2))

    def trial_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in BUDGET_TRIAL_KEYS if getattr(self, k) is not None}

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, path: str = "budget", problems: _Problems | None = None
    ) -> BudgetConfig:
        own = problems is None
        problems = problems or _Problems()
        d = _mapping(d, path, problems)
        names = [f.name for f in dataclasses.fields(cls)]
        problems.unknown_keys(path, d, names)
        kwargs: dict[str, Any] = {}
        ints_min = {
            "trials": 1,
            "concurrency": 1,
            "epochs": 1,
            "steps_per_epoch": 1,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_failures": 0,
            "initial_trials": 0,
            "final_epochs": 1,
        }
        for key, low in ints_min.items():
            if d.get(key) is None:
                continue
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int):
                problems.add(_join(path, key), f"expected an integer, got {v!r}")
            elif v < low:
                problems.add(_join(path, key), f"must be >= {low}, got {v}")
            else:
                kwargs[key] = v
        for key in ("cpus_per_trial", "gpus_per_trial", "time_budget_s"):
            if d.get(key) is None:
                continue
            v = _number(d[key])
            if v is None or v < 0 or (key != "gpus_per_trial" and v <= 0):
                problems.add(_join(path, key), f"expected a positive number, got {d[key]!r}")
            elif key == "gpus_per_trial" and v > 1 and not float(v).is_integer():
                problems.add(
                    _join(path, key),
                    "fractions of a GPU must be below 1 (e.g. 0.5), else whole GPUs",
                )
            else:
                kwargs[key] = float(v)
        for key, allowed in (("scheduler", SCHEDULERS), ("algorithm", ALGORITHMS)):
            if key in d:
                if d[key] not in allowed:
                    problems.add(_join(path, key), unknown_name_message(key, d[key], list(allowed)))
                else:
                    kwargs[key] = d[key]
        if own and problems.items:
            raise SpaceError("<budget>", problems.items)
        return cls(**kwargs)


TRACKING_MODES = ("auto", "online", "offline", "disabled")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Weights & Biases: ``auto`` follows ``$WANDB_MODE`` when set, else is online when
    WANDB_API_KEY is set and offline otherwise.

    ``log_images``: whether images (radiographs, GradCAM overlays) may be logged; off by
    default, and meant to stay off for patient data unless the data owner agrees.
    """

    project: str = "radsearch"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    log_images: bool = False

    def resolved_mode(self) -> str:
        """``auto``: ``$WANDB_MODE`` when set, else online with ``WANDB_API_KEY``, else offline."""
        if self.mode != "auto":
            return self.mode
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if env in ("online", "offline", "disabled"):
            return env
        if env == "dryrun":
            return "offline"
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, path: str = "tracking", problems: _Problems | None = None
    ) -> TrackingConfig:
        own = problems is None
        problems = problems or _Problems()
        d = _mapping(d, path, problems)
        problems.unknown_keys(path, d, ["project", "entity", "mode", "log_images"])
        kwargs: dict[str, Any] = {}
        for key in ("project", "entity"):
            if d.get(key) is not None:
                if not isinstance(d[key], str) or not d[key]:
                    problems.add(_join(path, key), "expected a name")
                else:
                    kwargs[key] = d[key]
        if "mode" in d:
            if d["mode"] not in TRACKING_MODES:
                problems.add(
                    _join(path, "mode"),
                    unknown_name_message("mode", d["mode"], list(TRACKING_MODES)),
                )
            else:
                kwargs["mode"] = d["mode"]
        if "log_images" in d:
            if not isinstance(d["log_images"], bool):
                problems.add(_join(path, "log_images"), "expected true or false")
            else:
                kwargs["log_images"] = d["log_images"]
        if own and problems.items:
            raise SpaceError("<tracking>", problems.items)
        return cls(**kwargs)


TOP_KEYS = (
    "name",
    "description",
    "seed",
    "data",
    "objective",
    "parameters",
    "parameter_constraints",
    "budget",
    "tracking",
)


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """A whole search space: what to search, how to run it and where to report it."""

    name: str
    description: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
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
        problems = _Problems()
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
        data = DataConfig.from_dict(d.get("data") or {}, problems=problems)
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
        if problems.items:
            raise SpaceError(source, problems.items)
        return cls(
            name=name,
            description=str(description),
            seed=seed,
            data=data,
            objective=objective,
            parameters=parameters,
            budget=budget,
            tracking=tracking,
            source=source,
            check_names=check_names,
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain data (loads back to an equal space)."""
        data = {k: v for k, v in self.data.trial_settings().items() if v is not None}
        budget = {
            f.name: getattr(self.budget, f.name)
            for f in dataclasses.fields(self.budget)
            if getattr(self.budget, f.name) is not None
        }
        tracking = dataclasses.asdict(self.tracking)
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "data": data,
            "objective": self.objective.to_dict(),
            "parameters": self.parameters.to_dict(),
        }
        if self.parameters.constraints:
            out["parameter_constraints"] = list(self.parameters.constraints)
        out["budget"] = budget
        out["tracking"] = {k: v for k, v in tracking.items() if v is not None}
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
                    unknown_name_message(
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
        raise SpaceError(source, [(where, f"not valid YAML: {_short_text(problem)}")]) from e
    except RecursionError as e:
        raise SpaceError(source, [("", "not valid YAML: nested too deeply")]) from e
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SpaceError(source, [("", f"not valid YAML: {_short_text(str(e))}")]) from e
    return SpaceConfig.from_dict(d if d is not None else {}, source=source, check_names=check_names)
