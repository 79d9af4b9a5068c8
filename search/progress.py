"""The live progress table a search shows in the terminal while it runs.

On a terminal, a ``rich`` table is redrawn in place (latest trials, their status,
epoch, objective and main parameters, the best so far); elsewhere (logs, CI) one line
is printed per finished trial.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from search.experiment import ExperimentFolder
from search.space import SpaceConfig
from search.tables import COMPLETED, EARLY_STOPPED, FAILED, FINISHED_STATUSES

_STYLE = {
    COMPLETED: "green",
    FAILED: "red",
    EARLY_STOPPED: "yellow",
    "running": "cyan",
    "queued": "dim",
}


def _with_sem(row: dict[str, Any], metric: str) -> str:
    """``0.912 ± 0.025``: a score with its standard error, when the trial reports one."""
    value, sem = row.get(metric), row.get(f"{metric}_sem")
    if isinstance(sem, float) and math.isfinite(sem) and isinstance(value, float):
        return f"{value:.3f} ± {sem:.3f}"
    return _fmt(value)


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Redraws a table of the experiment's trials; call :meth:`update` on every event."""

    def __init__(
        self,
        folder: ExperimentFolder,
        space: SpaceConfig,
        *,
        enabled: bool = True,
        max_rows: int = 16,
        console: Console | None = None,
    ):
        self.folder = folder
        self.space = space
        self.console = console or Console(file=sys.stderr)
        self.enabled = enabled
        self.live_mode = enabled and self.console.is_terminal
        self.max_rows = max_rows
        self._live: Live | None = None
        self._printed: set[int] = set()
        self._t0 = time.time()
        self._last = 0.0

    def start(self) -> None:
        if self.live_mode:
            self._live = Live(
                self.table(), console=self.console, refresh_per_second=2, transient=False
            )
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.stop()
            self._live = None
        elif self.enabled:
            self._print_finished()

    def update(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            now = time.time()
            if force or now - self._last > 0.25:
                self._live.update(self.table())
                self._last = now
        else:
            self._print_finished()

    def _print_finished(self) -> None:
        metric = self.space.objective.metric
        for row in self.folder.rows():
            if row["status"] in FINISHED_STATUSES and row["trial"] not in self._printed:
                self._printed.add(row["trial"])
                extra = f" error: {row['error']}" if row.get("error") else ""
                if row.get("stop_reason"):
                    extra += f" ({row['stop_reason']})"
                self.console.print(
                    f"trial {row['trial']:>3} {row['status']:<13} {metric}={_with_sem(row, metric)} "
                    f"epochs={row.get('epochs')} {_fmt(row.get('duration_s'))}s{extra}",
                    highlight=False,
                )

    def table(self) -> Table:
        space, metric = self.space, self.space.objective.metric
        rows = self.folder.rows()
        counts = Counter(r["status"] for r in rows)
        best = self.folder.best()
        best_txt = (
            f"best {metric} = {_fmt(best['objective']['value'])} (trial {best['trial']})"
            if best
            else "no best yet"
        )
        elapsed = time.time() - self._t0
        title = (
            f"{self.folder.name}: {counts.get(COMPLETED, 0)} completed, {counts.get('running', 0)} running, "
            f"{counts.get(FAILED, 0)} failed, {counts.get(EARLY_STOPPED, 0)} stopped of "
            f"{space.budget.trials} | {best_txt} | {elapsed:.0f}s"
        )
        table = Table(title=title, title_justify="left", expand=False)
        params = [p.name for p in space.parameters.searched][:6]
        for col in ("trial", "status", "epoch", metric, *params, "node", "time"):
            table.add_column(col, overflow="ellipsis", max_width=22)
        for r in rows[-self.max_rows :]:
            style = _STYLE.get(r["status"], "")
            cells = [str(r["trial"]), r["status"], _fmt(r.get("epochs")), _with_sem(r, metric)]
            cells += [_fmt(r.get(p)) for p in params]
            cells += [_fmt(r.get("node")), _fmt(r.get("duration_s"))]
            table.add_row(*cells, style=style)
        return table
