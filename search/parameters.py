"""A space's ``parameters``: what Ax searches and what every trial shares.

    parameters:
      task: binary                                          # fixed
      loss: {type: choice, values: [ce, focal]}             # unordered choice
      focal_gamma: {type: range, bounds: [0.5, 4.0], when: {loss: focal}}   # conditional
      lr: {type: range, bounds: [1.0e-4, 1.0e-2], scale: log}

Names are ``pipeline``'s trial keys (``pipeline.trial_keys()``), checked with its own
registries (``pipeline.choices_for_key``) and timm for backbones; a custom trainable
(``check_names=False``) accepts any identifier.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pipeline
from search.problems import Problems, join, mapping, number, shown
from search.values import finite

Scalar = bool | int | float | str
#: keys the budget section may set (then they must not also be parameters)
BUDGET_TRIAL_KEYS = ("epochs", "time_budget_s", "steps_per_epoch")


@functools.lru_cache(maxsize=1)
def _trial_keys() -> dict[str, Any]:
    return dict(pipeline.trial_keys())


def trial_keys() -> dict[str, Any]:
    """Name -> default of every key ``run_trial`` accepts (a copy)."""
    return dict(_trial_keys())


def is_timm_backbone(name: str) -> bool:
    """True when timm can build ``name``."""
    import timm  # ~5 s to import (torchvision, the hub client): only backbone checks need it

    return timm.is_model(name)


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

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self.parameters}

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        constraints: Any = None,
        *,
        problems: Problems,
        path: str = "parameters",
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
        d = mapping(d, path, problems)
        keys = dict(known_keys) if known_keys is not None else trial_keys()
        budget_keys = set(budget_keys)
        parsed: list[Parameter] = []
        raw_when: dict[str, tuple[str, Any]] = {}
        for name, spec in d.items():
            where = join(path, str(name))
            if not isinstance(name, str) or not _IDENT_RE.fullmatch(name):
                problems.add(where, "a parameter name must be an identifier")
                continue
            if check_names:
                if name in pipeline.DATA_SOURCE_KEYS:
                    problems.add(where, f"'{name}' belongs in the data section (data.{name})")
                    continue
                if name in pipeline.RUNTIME_KEYS:
                    problems.add(
                        where,
                        f"'{name}' is set by the platform for every trial "
                        "(from the trial's resources and folder)",
                    )
                    continue
                if name not in keys:
                    problems.unknown(where, "trial setting", name, sorted(keys))
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
        return cls(parameters=tuple(parsed), constraints=cons)


def _parse_parameter(
    name: str, spec: Any, where: str, problems: Problems, raw_when: dict[str, tuple[str, Any]]
) -> Parameter | None:
    """One entry of ``parameters``: a bare value (fixed), a list (unordered choice) or a
    mapping with ``type`` (or implied by ``bounds`` / ``values`` / ``value``)."""
    if isinstance(spec, list):  # shorthand: [a, b, c] is an unordered choice
        spec = {"type": "choice", "values": spec}
    if not isinstance(spec, Mapping):
        return FixedParameter(name=name, value=spec)
    spec = dict(spec)
    kind = spec.get("type")
    if kind is None:
        implied = {"bounds": "range", "values": "choice", "value": "fixed"}
        kind = next((k for key, k in implied.items() if key in spec), None)
    if not problems.choice(join(where, "type"), "parameter type", kind, PARSERS):
        return None
    if "when" in spec:
        when = spec["when"]
        if not isinstance(when, Mapping) or len(when) != 1:
            problems.add(join(where, "when"), "expected one condition such as {method: fixmatch}")
        else:
            ((parent, values),) = when.items()
            raw_when[name] = (str(parent), values)
    return PARSERS[kind](name, spec, where, problems)


def _parse_fixed(name: str, spec: dict, where: str, problems: Problems) -> Parameter | None:
    problems.unknown_keys(where, spec, ["type", "value"])
    if "value" not in spec:
        problems.add(where, "a fixed parameter needs 'value'")
        return None
    return FixedParameter(name=name, value=spec["value"])


def _parse_range(name: str, spec: dict, where: str, problems: Problems) -> Parameter | None:
    problems.unknown_keys(where, spec, ["type", "bounds", "value_type", "scale", "step", "when"])
    bounds = spec.get("bounds")
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        problems.add(join(where, "bounds"), "expected [lower, upper]")
        return None
    lo, hi = (number(b) for b in bounds)
    if lo is None or hi is None:
        problems.add(join(where, "bounds"), f"expected two numbers, got {list(bounds)!r}")
        return None
    value_type = spec.get("value_type")
    if value_type is None:
        value_type = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
    if not problems.choice(join(where, "value_type"), "value type", value_type, ["float", "int"]):
        return None
    if value_type == "int" and (float(lo) != int(lo) or float(hi) != int(hi)):
        problems.add(join(where, "bounds"), "an int parameter needs whole-number bounds")
        return None
    lo, hi = (int(lo), int(hi)) if value_type == "int" else (float(lo), float(hi))
    if not lo < hi:
        problems.add(join(where, "bounds"), "lower must be < upper")
        return None
    scale = spec.get("scale", "linear")
    if not problems.choice(join(where, "scale"), "scale", scale, ["linear", "log"]):
        return None
    if scale == "log" and lo <= 0:
        problems.add(join(where, "bounds"), "a log-scale parameter needs lower > 0")
        return None
    step = _parse_step(spec.get("step"), lo, hi, scale, where, problems)
    if step is False:
        return None
    return RangeParameter(name=name, bounds=(lo, hi), value_type=value_type, scale=scale, step=step)


def _parse_step(
    step: Any, lo: float, hi: float, scale: str, where: str, problems: Problems
) -> float | bool | None:
    """A range's grid step (``None``: none), or ``False`` after reporting a problem."""
    if step is None:
        return None
    step = number(step)
    if step is None or step <= 0:
        problems.add(join(where, "step"), "expected a positive number")
        return False
    if scale == "log":
        problems.add(join(where, "step"), "a step needs scale: linear")
        return False
    n = (hi - lo) / step
    if abs(n - round(n)) > 1e-6:
        problems.add(
            join(where, "step"), f"(upper - lower) = {hi - lo:g} is not a multiple of {step:g}"
        )
        return False
    return step


def _parse_choice(name: str, spec: dict, where: str, problems: Problems) -> Parameter | None:
    problems.unknown_keys(where, spec, ["type", "values", "ordered", "when"])
    values = spec.get("values")
    if not isinstance(values, list | tuple) or len(values) < 1:
        problems.add(join(where, "values"), "expected a non-empty list")
        return None
    if len(set(map(repr, values))) != len(values):
        problems.add(join(where, "values"), "values must be distinct")
        return None
    vtype = _value_type(values)
    if vtype is None:
        problems.add(
            join(where, "values"), "values must all be numbers, all strings or all booleans"
        )
        return None
    if len(values) == 1:
        return FixedParameter(name=name, value=values[0])
    ordered = spec.get("ordered")
    if ordered is None:
        ordered = vtype in ("int", "float")
    if not isinstance(ordered, bool):
        problems.add(join(where, "ordered"), "expected true or false")
        return None
    return ChoiceParameter(name=name, values=tuple(values), ordered=ordered)


PARSERS = {"range": _parse_range, "choice": _parse_choice, "fixed": _parse_fixed}


def _check_values(
    param: Parameter, default: Any, where: str, problems: Problems, *, check_choices: bool = True
) -> None:
    """Light type checks against the trial key's default and the registries."""
    if isinstance(param, FixedParameter):
        values: tuple[Any, ...] = (param.value,)
        sub = where
    elif isinstance(param, ChoiceParameter):
        values, sub = param.values, join(where, "values")
    else:
        values, sub = param.bounds, join(where, "bounds")
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
            and (isinstance(v, bool) or not isinstance(v, int | float) or not finite(v))
        ]
        if bad:
            problems.add(sub, f"'{param.name}' is a finite number, got {shown(bad[0])}")
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
                names = [n for n, _ in pipeline.list_parts("backbones")]
                problems.unknown(sub, "backbone", v, names)
        return
    choices = pipeline.choices_for_key(param.name)
    if choices:
        for v in values:
            if v not in choices:
                problems.unknown(sub, param.name.replace("_", " "), v, choices)


def _resolve_conditions(
    parsed: list[Parameter], raw_when: dict[str, tuple[str, Any]], path: str, problems: Problems
) -> list[Parameter]:
    """Attach ``when`` conditions; a condition on a fixed parent is decided here."""
    by_name = {p.name: p for p in parsed}
    out: list[Parameter] = []
    for p in parsed:
        if p.name not in raw_when:
            out.append(p)
            continue
        parent_name, raw_values = raw_when[p.name]
        where = join(join(path, p.name), "when")
        values = tuple(raw_values) if isinstance(raw_values, list | tuple) else (raw_values,)
        parent = by_name.get(parent_name)
        if parent is None:
            problems.unknown(where, "parent parameter", parent_name, sorted(by_name))
            continue
        if parent_name == p.name:
            problems.add(where, "a parameter cannot depend on itself")
            continue
        if isinstance(parent, RangeParameter):
            problems.add(where, f"the parent '{parent_name}' must be a choice or fixed parameter")
            continue
        if isinstance(parent, FixedParameter):
            # a condition on a fixed setting may name any valid value of that setting
            choices = pipeline.choices_for_key(parent_name)
            parent_values = (*choices, parent.value) if choices else tuple(values)
        else:
            parent_values = parent.values
        bad = [v for v in values if v not in parent_values]
        if bad:
            problems.unknown(where, f"value of {parent_name}", bad[0], map(str, parent_values))
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
    raw: Any, params: list[Parameter], problems: Problems
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
                problems.unknown(where, "parameter", n, sorted(by_name))
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
