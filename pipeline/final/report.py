"""What the final run writes beside the model: predictions, plots and the test report.

out_dir/
  model.pt           the kept model: state dict + spec + class order + threshold + preprocessing
  model.pt2          torch.export program (dynamic batch), loadable without this package
  config.yaml        the resolved trial configuration
  metrics.json       the kept model's test metrics with 95% patient-bootstrap intervals,
                     the keep decision, both candidates' validation and test metrics,
                     and the external data set's metrics when one was given
  predictions.csv    one row per test crop: pseudonymous keys, label, probabilities
  roc.png pr.png confusion.png calibration.png
  gallery.png gallery.html gallery/   GradCAM heat maps of test crops (TP, FP, FN, TN)
  heatmap_scores.csv explain.json     on the phantom: heat-map mass inside the fracture
  report.md report.html
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.deid import pseudonym, resolve_salt
from pipeline.io import atomic_write_bytes, atomic_write_text

#: the metrics the report tables show, in order
REPORT_METRICS = (
    "auroc",
    "ap",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "f1",
    "f2",
    "macro_f1",
    "kappa",
    "ece",
)
PLOTS = ("roc.png", "pr.png", "confusion.png", "calibration.png")


def write_predictions(path: Path, items: list[Any], ev: Any, classes: tuple[str, ...]) -> None:
    salt = resolve_salt()
    probs = ev.probs.numpy()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_key", "patient_key", "laterality", "target", *[f"p_{c}" for c in classes]])
    for item, target, p in zip(items, ev.targets.tolist(), probs):
        w.writerow(
            [
                pseudonym("image", item.file, salt),
                item.patient,
                item.laterality or "",
                classes[target],
                *[f"{x:.6f}" for x in p],
            ]
        )
    atomic_write_text(path, buf.getvalue())


def write_plots(out: Path, ev: Any, task: Any) -> list[Path]:
    """ROC, precision-recall, confusion matrix and calibration (reliability) plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

    score = task.fracture_probability(ev.probs).numpy()
    positive = (ev.targets > 0).numpy()
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(atomic_write_bytes(out / name, buf.getvalue()))

    both = positive.any() and (~positive).any()
    fig, ax = plt.subplots(figsize=(4, 4))
    if both:
        fpr, tpr, _ = roc_curve(positive, score)
        ax.plot(fpr, tpr, lw=2)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (fracture)")
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    if both:
        prec, rec, _ = precision_recall_curve(positive, score)
        ax.plot(rec, prec, lw=2)
        ax.axhline(positive.mean(), color="k", ls="--", lw=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (fracture)")
    save(fig, "pr.png")

    if task.num_classes > 2:
        y_true, y_pred = ev.targets.numpy(), ev.probs.argmax(1).numpy()
        labels = list(task.classes)
    else:
        y_true, y_pred = positive.astype(int), (score >= ev.threshold).astype(int)
        labels = ["no fracture", "fracture"]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(labels), 1 + 0.6 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    save(fig, "confusion.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(score, bins) - 1, 0, 9)
    xs = [score[which == b].mean() for b in range(10) if (which == b).any()]
    ys = [positive[which == b].mean() for b in range(10) if (which == b).any()]
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(xs, ys, "o-")
    ax.set(xlabel="predicted P(fracture)", ylabel="observed frequency", title="Calibration")
    save(fig, "calibration.png")
    return paths


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _ci_text(ci: Mapping[str, Any], key: str) -> str:
    lo_hi = ci.get(key)
    return f"{_fmt(lo_hi[0])} - {_fmt(lo_hi[1])}" if lo_hi else "n/a"


def _metric_rows(metrics: Mapping[str, Any], ci: Mapping[str, Any], prefix: str) -> list[tuple]:
    return [
        (k, _fmt(metrics[f"{prefix}/{k}"]), _ci_text(ci, f"{prefix}/{k}"))
        for k in REPORT_METRICS
        if f"{prefix}/{k}" in metrics
    ]


def candidates_table(summary: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per candidate model: where it comes from, kept or not, validation and
    test AUROC / sensitivity / specificity at its own threshold."""
    rows = []
    for name, c in summary.get("candidates", {}).items():
        val, test = c["val"], c["test"]
        rows.append(
            (
                name,
                "kept" if name == summary.get("kept") else "not kept",
                c["source"],
                f"{c['threshold']:.3f}",
                _fmt(val.get("val/auroc")),
                _fmt(test.get("test/auroc")),
                _fmt(test.get("test/sensitivity")),
                _fmt(test.get("test/specificity")),
                _fmt(test.get("test/macro_f1")),
            )
        )
    return rows


CANDIDATE_COLUMNS = (
    "model",
    "",
    "from",
    "threshold",
    "val AUROC",
    "test AUROC",
    "test sensitivity",
    "test specificity",
    "test macro-F1",
)


def write_report(out: Path, summary: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """``report.md`` and ``report.html``: which model is kept and why, its test metrics
    with intervals, both candidates side by side, the external data set, plots, gallery."""
    rows = _metric_rows(summary["metrics"], summary["ci95"], "test")
    decision = summary.get("decision", {})
    head = (
        f"Model: {info['spec']['backbone']}, task {info['spec']['task']}, views {info['views']}. "
        f"Decision threshold {summary['threshold']:.3f}, chosen on the "
        f"{summary['threshold_source']}. Test set: {summary['test']['crops']} crops of "
        f"{summary['test']['patients']} patients, seen once; 95% intervals from a "
        "patient-level bootstrap."
    )
    kept = f"Kept: the {summary.get('kept', 'final')} model. {decision.get('reason', '')}".strip()
    rule = f"Rule (fixed before testing): {decision.get('rule', '')}"
    cand = candidates_table(summary)
    ext = summary.get("external")
    ext_rows = _metric_rows(ext["metrics"], ext["ci95"], "external") if ext else []
    ext_head = (
        f"External data: {ext['crops']} crops of {ext['patients']} patients, "
        f"{ext['fractures']} fractured; the kept model scored once at its threshold."
        if ext
        else ""
    )
    md = ["# Final model: test report", "", head, "", kept, "", rule, ""]
    md += ["| metric | value | 95% CI |", "| --- | ---: | ---: |"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if cand:
        md += ["", "Both candidates (each at its own validation threshold):", ""]
        md += ["| " + " | ".join(CANDIDATE_COLUMNS) + " |", "|" + " --- |" * len(CANDIDATE_COLUMNS)]
        md += ["| " + " | ".join(r) + " |" for r in cand]
    if ext:
        md += ["", ext_head, "", "| metric | value | 95% CI |", "| --- | ---: | ---: |"]
        md += [f"| {a} | {b} | {c} |" for a, b, c in ext_rows]
    md += ["", *[f"![{p}]({p})" for p in PLOTS]]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")

    def table(head_cells: tuple[str, ...], body: list[tuple]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head_cells)
        tr = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in body
        )
        return f"<table><tr>{th}</tr>{tr}</table>"

    imgs = "".join(f'<img src="{p}" alt="{p}" style="max-width:24%">' for p in PLOTS)
    page = (
        "<!doctype html><meta charset='utf-8'><title>Final model: test report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "td,th{padding:2px 10px;text-align:right}</style>"
        f"<h1>Final model: test report</h1><p>{html.escape(head)}</p>"
        f"<p><b>{html.escape(kept)}</b><br>{html.escape(rule)}</p>"
        + table(("metric", "value", "95% CI"), rows)
        + (
            "<h2>Both candidates</h2><p>Each at its own validation threshold; the test "
            "results of the model not kept are shown, never used to choose.</p>"
            + table(CANDIDATE_COLUMNS, cand)
            if cand
            else ""
        )
        + (
            f"<h2>External data</h2><p>{html.escape(ext_head)}</p>"
            + table(("metric", "value", "95% CI"), ext_rows)
            if ext
            else ""
        )
        + f"<p>{imgs}</p>{summary.get('gallery_html', '')}"
    )
    atomic_write_text(out / "report.html", page)
