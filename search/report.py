"""``python -m search report results/<name>``: one self-contained HTML page.

Sections: the best objective against the trial number, parallel coordinates of the
searched parameters coloured by the objective, parameter importance, the learning
curves of every trial, and the trial table.

Parameter importance comes from Ax's sensitivity analysis (total Sobol indices of the
fitted BoTorch model, ``SensitivityAnalysisPlot``) when the experiment has a fitted
model; otherwise (too few trials, or a random/TPE search) it falls back to a
model-free measure over completed trials: |Spearman rank correlation| for numeric
parameters (log10 for log-scaled ones) and the correlation ratio (eta) for categorical
ones. The page says which one it shows.
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from ax.analysis.plotly.sensitivity import SensitivityAnalysisPlot
from scipy.stats import spearmanr

import pipeline
from search.axclient import ax_metric_name, quiet_ax
from search.experiment import ExperimentFolder
from search.parameters import ChoiceParameter, RangeParameter
from search.space import SpaceConfig
from search.tables import COMPLETED, EARLY_STOPPED
from search.values import finite

log = logging.getLogger(__name__)


def best_so_far_figure(rows: list[dict[str, Any]], space: SpaceConfig) -> Any:
    metric = space.objective.metric
    fig = go.Figure()
    for status, color in ((COMPLETED, "#1f77b4"), (EARLY_STOPPED, "#ff7f0e")):
        pts = [r for r in rows if r["status"] == status and finite(r.get(metric))]
        sems = [r.get(f"{metric}_sem") for r in pts]
        fig.add_trace(
            go.Scatter(
                x=[r["trial"] for r in pts],
                y=[r[metric] for r in pts],
                error_y={  # two standard errors: what the search treats as noise
                    "type": "data",
                    "array": [2 * v if finite(v) else 0.0 for v in sems],
                    "visible": any(finite(v) for v in sems),
                },
                mode="markers",
                name=status.replace("_", " "),
                marker={"color": color, "size": 8},
            )
        )
    xs, ys, best = [], [], None
    for r in sorted(rows, key=lambda r: r["trial"]):
        v = r.get(metric)
        if (
            r["status"] == COMPLETED
            and finite(v)
            and (best is None or space.objective.better(v, best))
        ):
            best = v
        if best is not None:
            xs.append(r["trial"])
            ys.append(best)
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="lines", line={"shape": "hv", "color": "black"}, name="best so far"
        )
    )
    fig.update_layout(
        title=f"Best {metric} by trial (bars: 2 standard errors)",
        xaxis_title="trial",
        yaxis_title=metric,
        height=380,
    )
    return fig


def parallel_coordinates_figure(rows: list[dict[str, Any]], space: SpaceConfig) -> Any:
    metric = space.objective.metric
    done = [r for r in rows if r["status"] in (COMPLETED, EARLY_STOPPED) and finite(r.get(metric))]
    dims = []
    for p in space.parameters.searched:
        vals = [r.get(p.name) for r in done]
        if isinstance(p, ChoiceParameter) and not (p.ordered and p.value_type in ("int", "float")):
            labels = [str(v) for v in p.values]
            idx = [labels.index(str(v)) if v is not None and str(v) in labels else -1 for v in vals]
            dims.append(
                {
                    "label": p.name,
                    "values": idx,
                    "tickvals": list(range(len(labels))),
                    "ticktext": labels,
                    "range": [-1, len(labels) - 1],
                }
            )
        elif isinstance(p, RangeParameter) and p.scale == "log":
            lo, hi = math.log10(p.bounds[0]), math.log10(p.bounds[1])
            dims.append(
                {
                    "label": f"log10 {p.name}",
                    "range": [lo, hi],
                    "values": [math.log10(v) if finite(v) and v > 0 else lo for v in vals],
                }
            )
        else:
            lo = p.bounds[0] if isinstance(p, RangeParameter) else min(p.values)  # type: ignore[type-var]
            hi = p.bounds[1] if isinstance(p, RangeParameter) else max(p.values)  # type: ignore[type-var]
            dims.append(
                {
                    "label": p.name,
                    "range": [lo, hi],
                    "values": [v if finite(v) else lo for v in vals],
                }
            )
    scores = [r[metric] for r in done]
    dims.append({"label": metric, "values": scores})
    fig = go.Figure(
        go.Parcoords(
            line={"color": scores, "colorscale": "Viridis", "showscale": True}, dimensions=dims
        )
    )
    fig.update_layout(
        title="Parallel coordinates (completed and stopped trials; inactive = lowest tick)",
        height=420,
    )
    return fig


def parameter_importance(
    folder: ExperimentFolder, space: SpaceConfig, rows: list[dict[str, Any]]
) -> tuple[dict[str, float], str]:
    """(parameter -> importance, how it was measured)."""
    try:
        with quiet_ax():
            client = folder.load_ax()
            cards = client.compute_analyses(
                [
                    SensitivityAnalysisPlot(
                        metric_name=ax_metric_name(space.objective.metric), top_k=None
                    )
                ],
                display=False,
            )
        for card in cards:
            df = getattr(card, "df", None)
            if df is not None and "parameter_name" in df and "sensitivity" in df and len(df):
                values = {
                    shown_name(str(n), space): abs(float(v))
                    for n, v in zip(df["parameter_name"], df["sensitivity"])
                }
                return (
                    values,
                    "Ax sensitivity analysis: total Sobol indices of the fitted BoTorch model",
                )
    except Exception as e:  # not enough data, no fitted model, or a random/TPE search
        log.debug("Ax sensitivity analysis unavailable: %s", e)
    return _rank_importance(rows, space), (
        "model-free fallback (Ax sensitivity needs a fitted model): |Spearman rho| for numeric "
        "parameters, correlation ratio eta for categorical ones, over completed trials"
    )


#: how Ax names the one-hot columns of an unordered choice: ``loss_OH_PARAM_2``
_ONE_HOT = re.compile(r"^(?P<name>.+)_OH_PARAM_(?P<index>\d+)$")


def shown_name(name: str, space: SpaceConfig) -> str:
    """A parameter name as the user wrote it: Ax's one-hot encoding of a choice
    (``loss_OH_PARAM_2``) becomes ``loss = class_balanced``; other names are unchanged."""
    m = _ONE_HOT.match(name)
    if m is None or m["name"] not in space.parameters.names:
        return name
    p = space.parameters.get(m["name"])
    index = int(m["index"])
    if isinstance(p, ChoiceParameter) and index < len(p.values):
        return f"{p.name} = {p.values[index]}"
    return name


def _rank_importance(rows: list[dict[str, Any]], space: SpaceConfig) -> dict[str, float]:
    metric = space.objective.metric
    done = [r for r in rows if r["status"] == COMPLETED and finite(r.get(metric))]
    out: dict[str, float] = {}
    for p in space.parameters.searched:
        pts = [(r.get(p.name), r[metric]) for r in done if r.get(p.name) is not None]
        if len(pts) < 3:
            out[p.name] = 0.0
            continue
        xs, ys = [x for x, _ in pts], np.array([y for _, y in pts], dtype=float)
        if isinstance(p, ChoiceParameter) and p.value_type in ("str", "bool"):
            groups: dict[str, list[float]] = {}
            for x, y in pts:
                groups.setdefault(str(x), []).append(y)
            total = float(((ys - ys.mean()) ** 2).sum())
            between = sum(len(g) * (np.mean(g) - ys.mean()) ** 2 for g in groups.values())
            out[p.name] = float(math.sqrt(between / total)) if total > 0 else 0.0
        else:
            xf = np.array(
                [math.log10(x) if getattr(p, "scale", "") == "log" else x for x in xs], dtype=float
            )
            rho = spearmanr(xf, ys).statistic if np.ptp(xf) > 0 and np.ptp(ys) > 0 else 0.0
            out[p.name] = float(abs(rho)) if finite(float(rho)) else 0.0
    return out


def importance_figure(importance: dict[str, float], how: str) -> Any:
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h"))
    fig.update_layout(
        title="Parameter importance", xaxis_title=how, height=max(300, 40 * len(items) + 120)
    )
    return fig


def learning_curves_figure(folder: ExperimentFolder, space: SpaceConfig) -> Any:
    metric = space.objective.metric
    curves: dict[int, dict[int, float]] = {}
    for row in folder.history():
        if finite(row.get(metric)) and finite(row.get("epoch")):
            curves.setdefault(int(row["trial"]), {})[int(row["epoch"])] = float(row[metric])
    fig = go.Figure()
    for trial, points in sorted(curves.items()):
        epochs = sorted(points)
        fig.add_trace(
            go.Scatter(
                x=epochs, y=[points[e] for e in epochs], mode="lines+markers", name=f"trial {trial}"
            )
        )
    fig.update_layout(
        title=f"Learning curves ({metric} per epoch)",
        xaxis_title="epoch",
        yaxis_title=metric,
        height=420,
    )
    return fig


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No trials yet.</p>"
    cols = [
        c for c in dict.fromkeys(k for r in rows for k in r) if c not in ("ray_trial", "started")
    ]

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    experiment: ExperimentFolder | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    importance: bool = True,
) -> Path:
    """Write ``report.html`` (and the figures' data) for an experiment; returns its path."""
    folder = ExperimentFolder.open(experiment)
    space = folder.space()
    rows = folder.rows()
    best = folder.best()
    figures = [
        ("Best objective by trial", best_so_far_figure(rows, space)),
        ("Parallel coordinates", parallel_coordinates_figure(rows, space)),
    ]
    how = "skipped"
    if importance:
        values, how = parameter_importance(folder, space, rows)
        figures.append(("Parameter importance", importance_figure(values, how)))
    figures.append(("Learning curves", learning_curves_figure(folder, space)))
    parts = []
    for i, (heading, fig) in enumerate(figures):
        body = pio.to_html(fig, full_html=False, include_plotlyjs="inline" if i == 0 else False)
        note = (
            f"<p>Measured by: {html.escape(how)}.</p>" if heading == "Parameter importance" else ""
        )
        parts.append(f"<h2>{heading}</h2>{note}{body}")
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(folder.counts().items()))
    best_html = "<p>No completed trial meets the objective's constraints yet.</p>"
    if best is not None:
        params = "".join(
            f"<li><code>{html.escape(k)}</code> = {html.escape(str(v))}</li>"
            for k, v in best["parameters"].items()
        )
        best_html = (
            f"<p>Best: trial {best['trial']}, {html.escape(best['objective']['metric'])} = "
            f"{best['objective']['value']:.4g}</p><ul>{params}</ul>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(folder.name)}: search report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}th{{background:#eee}}</style></head>
<body>
<h1>{html.escape(folder.name)}</h1>
<p>Space <code>{html.escape(space.name)}</code>: {html.escape(space.description)}<br>
Objective: {space.objective.direction} <code>{html.escape(space.objective.metric)}</code>
{"subject to " + html.escape(", ".join(str(c) for c in space.objective.constraints)) if space.objective.constraints else ""}
<br>Trials: {html.escape(counts)} of a budget of {space.budget.trials}. Status: {html.escape(folder.status)}.</p>
{best_html}
{"".join(parts)}
<h2>Trials</h2>
{_table(rows)}
</body></html>
"""
    path = Path(out) if out is not None else folder.path / "report.html"
    pipeline.atomic_write_text(path, page)
    return path
