"""The sections of a search space besides its parameters: data, objective, budget, tracking.

Each is a frozen, keyword-only dataclass built by ``from_dict``, which collects every
problem with its key path (:mod:`search.problems`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pipeline
from search.parameters import BUDGET_TRIAL_KEYS
from search.problems import Problems, SpaceError, join, mapping, number


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """Where the images come from: the synthetic phantom (default) or a DICOM folder.

    ``values`` holds the keys the space gives, among ``pipeline.DATA_SOURCE_KEYS``
    (validated by ``pipeline.DataConfig``); the others keep the trial's defaults.
    Paths are made absolute when the space is loaded (relative to the working folder),
    because trials run in other processes with another working folder.
    """

    values: Mapping[str, Any] = field(default_factory=dict)

    def trial_settings(self) -> dict[str, Any]:
        """The data keys of a trial's config (paths as strings)."""
        return dict(self.values)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, path: str = "data", problems: Problems | None = None
    ) -> DataSection:
        own = problems is None
        problems = problems or Problems()
        d = mapping(d, path, problems)
        problems.unknown_keys(path, d, pipeline.DATA_SOURCE_KEYS)
        values: dict[str, Any] = {}
        for key, value in d.items():
            if key not in pipeline.DATA_SOURCE_KEYS or value is None:
                continue
            if key in ("data_dir", "labels", "cache_dir"):
                if not isinstance(value, str | os.PathLike):
                    problems.add(join(path, key), "expected a path")
                    continue
                value = str(Path(os.path.expanduser(str(value))).resolve())
            try:
                pipeline.DataConfig(**{key: value})
            except pipeline.TrialConfigError as e:
                problems.add(join(path, key), str(e))
                continue
            values[key] = value
        _check_paths(values, path, problems)
        if own and problems.items:
            raise SpaceError("<data>", problems.items)
        return cls(values=values)


def _check_paths(values: Mapping[str, Any], path: str, problems: Problems) -> None:
    """The data folder and the labels CSV exist (as the driver sees them)."""
    data_dir = Path(values["data_dir"]) if values.get("data_dir") else None
    labels = Path(values["labels"]) if values.get("labels") else None
    if data_dir is not None and not data_dir.is_dir():
        problems.add(join(path, "data_dir"), f"folder not found: {data_dir}")
    if labels is not None:
        if data_dir is None:
            problems.add(
                join(path, "labels"), "a labels CSV needs data.data_dir (the DICOM folder)"
            )
        elif not labels.is_file():
            problems.add(join(path, "labels"), f"file not found: {labels}")
    elif data_dir is not None and data_dir.is_dir() and not (data_dir / "labels.csv").is_file():
        problems.add(
            join(path, "labels"),
            f"not given and {data_dir / 'labels.csv'} does not exist: name the labels CSV",
        )


DIRECTIONS = ("maximize", "minimize")
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
    folds: int | None = None  # cross-validate every trial over this many folds

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
        cls, d: Mapping[str, Any], *, problems: Problems, path: str = "objective"
    ) -> ObjectiveConfig:
        d = mapping(d, path, problems)
        problems.unknown_keys(path, d, ["metric", "direction", "constraints", "folds"])
        kwargs: dict[str, Any] = {}
        metric = d.get("metric", cls.metric)
        if not isinstance(metric, str) or not re.fullmatch(r"[A-Za-z_][\w/.\-]*", metric):
            problems.add(
                join(path, "metric"), f"expected a metric name such as 'val/auroc', got {metric!r}"
            )
        else:
            kwargs["metric"] = metric
        direction = d.get("direction", cls.direction)
        if problems.choice(join(path, "direction"), "direction", direction, DIRECTIONS):
            kwargs["direction"] = direction
        raw = d.get("constraints") or []
        if not isinstance(raw, list):
            problems.add(
                join(path, "constraints"), "expected a list such as ['val/sensitivity >= 0.9']"
            )
            raw = []
        constraints = []
        for i, text in enumerate(raw):
            m = _CONSTRAINT_RE.match(str(text))
            if m is None:
                problems.add(
                    join(join(path, "constraints"), i),
                    f"expected 'METRIC >= NUMBER' or 'METRIC <= NUMBER', got {text!r}",
                )
                continue
            constraints.append(
                OutcomeConstraint(metric=m.group(1), op=m.group(2), bound=float(m.group(3)))
            )  # type: ignore[arg-type]
        kwargs["constraints"] = tuple(constraints)
        folds = d.get("folds")
        if folds is not None:
            if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
                problems.add(
                    join(path, "folds"),
                    f"expected a number of folds >= 2 (every trial then trains one model per "
                    f"fold: that many times the cost), got {folds!r}",
                )
            else:
                kwargs["folds"] = folds
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "direction": self.direction,
            "constraints": [str(c) for c in self.constraints],
        }
        if self.folds is not None:
            out["folds"] = self.folds
        return out


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
        cls, d: Mapping[str, Any], *, problems: Problems, path: str = "budget"
    ) -> BudgetConfig:
        d = mapping(d, path, problems)
        problems.unknown_keys(path, d, [f.name for f in dataclasses.fields(cls)])
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
                problems.add(join(path, key), f"expected an integer, got {v!r}")
            elif v < low:
                problems.add(join(path, key), f"must be >= {low}, got {v}")
            else:
                kwargs[key] = v
        for key in ("cpus_per_trial", "gpus_per_trial", "time_budget_s"):
            if d.get(key) is None:
                continue
            v = number(d[key])
            if v is None or v < 0 or (key != "gpus_per_trial" and v <= 0):
                problems.add(join(path, key), f"expected a positive number, got {d[key]!r}")
            elif key == "gpus_per_trial" and v > 1 and not float(v).is_integer():
                problems.add(
                    join(path, key),
                    "fractions of a GPU must be below 1 (e.g. 0.5), else whole GPUs",
                )
            else:
                kwargs[key] = float(v)
        for key, allowed in (("scheduler", SCHEDULERS), ("algorithm", ALGORITHMS)):
            if key in d and problems.choice(join(path, key), key, d[key], allowed):
                kwargs[key] = d[key]
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
        cls, d: Mapping[str, Any], *, problems: Problems, path: str = "tracking"
    ) -> TrackingConfig:
        d = mapping(d, path, problems)
        problems.unknown_keys(path, d, ["project", "entity", "mode", "log_images"])
        kwargs: dict[str, Any] = {}
        for key in ("project", "entity"):
            if d.get(key) is not None:
                if not isinstance(d[key], str) or not d[key]:
                    problems.add(join(path, key), "expected a name")
                else:
                    kwargs[key] = d[key]
        if "mode" in d and problems.choice(join(path, "mode"), "mode", d["mode"], TRACKING_MODES):
            kwargs["mode"] = d["mode"]
        if "log_images" in d:
            if not isinstance(d["log_images"], bool):
                problems.add(join(path, "log_images"), "expected true or false")
            else:
                kwargs["log_images"] = d["log_images"]
        return cls(**kwargs)
