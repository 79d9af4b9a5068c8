"""The experiment's tables: ``trials.csv``, ``best.yaml`` and the learning curves, read
from the folder's state (``experiment.json`` and ``history.jsonl``)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from typing import Any

import yaml

import pipeline
from search.privacy import public
from search.statefiles import disk_full_is_clear, fault_point
from search.values import finite

#: trial statuses in ``experiment.json`` / ``trials.csv``
QUEUED, RUNNING, COMPLETED, FAILED, EARLY_STOPPED, INTERRUPTED = (
    "queued",
    "running",
    "completed",
    "failed",
    "early_stopped",
    "interrupted",
)
FINISHED_STATUSES = (COMPLETED, FAILED, EARLY_STOPPED)
#: the bookkeeping columns that end every row of trials.csv, with their defaults
TAIL_COLUMNS = {
    "epochs": 0,
    "duration_s": None,
    "node": None,
    "session": None,
    "attempts": 0,
    "retries": 0,
    "reduced_batch_size": None,
    "started": None,
    "ray_trial": None,
    "stop_reason": None,
    "retry_reason": None,
    "error": None,
}


class TrialTables:
    """The tables of an :class:`search.experiment.ExperimentFolder` (a mixin: the folder
    supplies ``trials``, ``space()``, ``path``, ``name`` and the file paths)."""

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per trial (the rows of trials.csv), by trial index."""
        try:
            space = self.space()
            param_names = [p.name for p in space.parameters.searched]
            objective = space.objective.metrics
        except (OSError, ValueError):
            param_names, objective = [], ()
        rows = []
        for index, rec in sorted(self.trials.items()):
            row: dict[str, Any] = {"trial": index, "status": rec.get("status")}
            for name in param_names:
                row[name] = rec.get("params", {}).get(name)
            for name, value in rec.get("params", {}).items():
                row.setdefault(name, value)
            metrics = rec.get("metrics") or {}
            if not metrics and rec.get("status") in (EARLY_STOPPED, RUNNING, FAILED):
                metrics = rec.get("last") or {}
            for name in objective:
                row[name] = metrics.get(name)
            for name in sorted(metrics):
                if name not in row and "/" in name:
                    row[name] = metrics[name]
            row.update({k: rec.get(k, default) for k, default in TAIL_COLUMNS.items()})
            rows.append(row)
        return rows

    def write_tables(self) -> None:
        """Rewrite trials.csv and best.yaml from the state (atomically)."""
        fault_point("write_tables")
        rows = self.rows()
        columns = list(dict.fromkeys(key for row in rows for key in row))
        columns = [c for c in columns if c not in TAIL_COLUMNS] + [
            c for c in TAIL_COLUMNS if c in columns
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=columns or ["trial", "status"], extrasaction="ignore"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        with disk_full_is_clear(self.trials_csv, self.path):
            pipeline.atomic_write_text(self.trials_csv, buf.getvalue())
        best = self.best()
        if best is not None:  # without local paths (the folder may be shared)
            with disk_full_is_clear(self.best_path, self.path):
                pipeline.atomic_write_text(
                    self.best_path, yaml.safe_dump(public(best), sort_keys=False)
                )

    def best(self) -> dict[str, Any] | None:
        """The best completed trial that meets every outcome constraint (observed values);
        its ``config`` has the data location this machine knows (``best.yaml`` has none)."""
        try:
            space = self.space()
        except (OSError, ValueError):
            return None
        objective = space.objective
        best_index, best_value = None, None
        for index, rec in sorted(self.trials.items()):
            if rec.get("status") != COMPLETED:
                continue
            metrics = rec.get("metrics") or {}
            value = metrics.get(objective.metric)
            if not finite(value):
                continue
            if not all(c.satisfied(metrics.get(c.metric)) for c in objective.constraints):
                continue
            if best_value is None or objective.better(value, best_value):
                best_index, best_value = index, value
        if best_index is None:
            return None
        rec = self.trials[best_index]
        config = {**space.trial_base(), **rec.get("params", {})}
        return {
            "experiment": self.name,
            "trial": best_index,
            "objective": {
                "metric": objective.metric,
                "direction": objective.direction,
                "value": best_value,
                **(
                    {"sem": sem}
                    if finite(sem := rec.get("metrics", {}).get(f"{objective.metric}_sem"))
                    else {}
                ),
            },
            "metrics": rec.get("metrics", {}),
            "parameters": rec.get("params", {}),
            "config": config,
            "epochs": rec.get("epochs"),
            "ray_trial": rec.get("ray_trial"),
        }

    def history(self) -> list[dict[str, Any]]:
        """Every per-epoch report (a torn last line from a killed driver is skipped)."""
        if not self.history_path.is_file():
            return []
        out = []
        for line in self.history_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def counts(self) -> dict[str, int]:
        return dict(Counter(rec.get("status", "?") for rec in self.trials.values()))
