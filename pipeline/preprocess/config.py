"""The preprocessing configuration: an ordered list of registered steps with parameters.

A configuration is written in YAML (or built from a trial's flat config) as::

    steps:
      - clean
      - localize: {min_confidence: 0.5}
      - window: {low: 0.5, high: 99.5}
      - clahe: {clip: 2.0, grid: 8}
      - pad_square
      - resize: {size: 64}

Each entry is a step name, a one-key mapping ``{name: {params}}``, or a mapping
with ``name`` and the parameters side by side. Unknown steps and parameters fail
with "did you mean"; values are checked by each step's parameter dataclass.
:meth:`PreprocessConfig.key` is a short stable hash of everything that changes the
output (steps, parameters, the localizer weights' content and the code version):
the name of the cache folder that trials sharing a configuration share.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.io import sha256_file, stable_hash
from pipeline.preprocess.localizer import weights_path
from pipeline.preprocess.scope import scope_weights_path
from pipeline.preprocess.steps import STEPS
from pipeline.registry import UnknownNameError, unknown_name_message

#: Bumped whenever a step's output changes for the same parameters (invalidates caches).
PREPROCESS_VERSION = 6
# 3: two-stage area resizes of images of 1 megapixel or more
# 4: crop-first cache builds (pipeline.preprocess.cropfirst): clean and localize on
#    chain(downsample(raw)), the grey-level chain and windowing on the averaged crops only
# 5: two-stage area resizes from 300,000 pixels and a 3x factor (knee crops of large images)
# 6: the out-of-scope decision in every entry; a reaching localizer pass for unsure knees;
#    shutters at any angle, corner bars and flat bars cleaned

#: Trial configuration keys that map to preprocessing, with their defaults.
TRIAL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "clahe_clip": 2.0,
    "clahe_grid": 8,
    "window_low": 0.5,
    "window_high": 99.5,
    "localize": True,
}


class PreprocessConfigError(ValueError):
    """An invalid preprocessing configuration; the message names the key path."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (bool, int, float, str, X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise PreprocessConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise PreprocessConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PreprocessConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PreprocessConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def params_from_dict(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build a step's parameter dataclass from a mapping, rejecting unknown keys."""
    if not isinstance(values, Mapping):
        raise PreprocessConfigError(f"{where}: expected a mapping of parameters, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            msg = unknown_name_message("parameter", k, names)
            raise PreprocessConfigError(f"{where}: {msg}")
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise PreprocessConfigError(f"{where}: {e}") from e


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """One step of the chain: its registered name and its parameter dataclass."""

    name: str
    params: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.params)}


def _parse_step(entry: Any, where: str) -> StepConfig:
    if isinstance(entry, str):
        name, values = entry, {}
    elif isinstance(entry, Mapping) and "name" in entry:
        name, values = entry["name"], {k: v for k, v in entry.items() if k != "name"}
    elif isinstance(entry, Mapping) and len(entry) == 1:
        ((name, values),) = entry.items()
        values = {} if values is None else values
    else:
        raise PreprocessConfigError(
            f"{where}: a step is a name, {{name: {{params}}}} or {{name: ..., params...}}, got {entry!r}"
        )
    try:
        spec = STEPS.get(name)
    except UnknownNameError as e:
        raise PreprocessConfigError(f"{where}: {e}") from None
    return StepConfig(name=name, params=params_from_dict(spec.params, values, f"{where}.{name}"))


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """An ordered chain of preprocessing steps (frozen; build with :meth:`from_dict`)."""

    steps: tuple[StepConfig, ...]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, where: str = "preprocess") -> PreprocessConfig:
        """Build from ``{"steps": [...]}``; errors name the key path."""
        if not isinstance(config, Mapping):
            raise PreprocessConfigError(f"{where}: expected a mapping with 'steps', got {config!r}")
        for k in config:
            if k != "steps":
                raise PreprocessConfigError(f"{where}: {unknown_name_message('key', k, ['steps'])}")
        steps = config.get("steps")
        if not isinstance(steps, list | tuple) or not steps:
            raise PreprocessConfigError(f"{where}.steps: expected a non-empty list of steps")
        parsed = tuple(_parse_step(s, f"{where}.steps[{i}]") for i, s in enumerate(steps))
        names = [s.name for s in parsed]
        if names.count("localize") > 1:
            raise PreprocessConfigError(f"{where}.steps: 'localize' may appear only once")
        return cls(steps=parsed)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PreprocessConfig:
        """Read a YAML file holding ``steps:`` (or ``preprocess: {steps: ...}``)."""
        path = Path(path)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, Mapping) and "preprocess" in data and "steps" not in data:
            data = data["preprocess"]
        return cls.from_dict(data, where=f"{path}: preprocess")

    @classmethod
    def from_trial(cls, trial: Mapping[str, Any]) -> PreprocessConfig:
        """The chain a trial uses, from its flat config (other keys are ignored).

        Keys: ``image_size``, ``clahe_clip``, ``clahe_grid``, ``window_low``,
        ``window_high``, ``localize`` (defaults in :data:`TRIAL_DEFAULTS`).
        """
        t = {
            k: trial.get(k, d) if trial.get(k) is not None else d for k, d in TRIAL_DEFAULTS.items()
        }
        size = _coerce(t["image_size"], int, "image_size")
        steps: list[Any] = ["clean"]
        if _coerce(t["localize"], bool, "localize"):
            steps.append("localize")
        steps += [
            {"window": {"low": t["window_low"], "high": t["window_high"]}},
            {
                "clahe": {
                    "clip": t["clahe_clip"],
                    "grid": t["clahe_grid"],
                    "working_size": max(256, size),
                }
            },
            "pad_square",
            {"resize": {"size": size}},
        ]
        return cls.from_dict({"steps": steps}, where="trial")

    @classmethod
    def default(cls) -> PreprocessConfig:
        """The chain of a trial with default settings."""
        return cls.from_trial({})

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps]}

    def key(self) -> str:
        """Stable 16-hex hash of what determines the output: steps, parameters, weights
        (the localizer's, and the out-of-scope decision's, which every entry holds), version."""
        scope = scope_weights_path()
        extra = {"scope_weights": sha256_file(scope) if scope.exists() else "missing"}
        for s in self.steps:
            if s.name == "localize":
                path = weights_path(s.params.weights)
                extra["localize_weights"] = sha256_file(path) if path.exists() else "missing"
        return stable_hash({"version": PREPROCESS_VERSION, **self.to_dict(), **extra})

    @property
    def image_size(self) -> int | None:
        """The output side set by the last ``resize`` step (None without one)."""
        sizes = [s.params.size for s in self.steps if s.name == "resize"]
        return sizes[-1] if sizes else None

    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]
