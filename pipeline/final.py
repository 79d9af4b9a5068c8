"""The final training of a chosen configuration, its one look at the test set, and its report.

``run_final(config, out_dir)`` trains on train + validation (the search never saw the
test set), evaluates once on the held-out test set with the decision threshold chosen
on validation during the search, and writes a self-describing model folder::

    out_dir/
      model.pt           state dict + model spec + class order + threshold + preprocessing
      model.pt2          torch.export program (dynamic batch), loadable without this package
      config.yaml        the resolved trial configuration
      metrics.json       test metrics with 95% patient-bootstrap confidence intervals
      predictions.csv    one row per test crop: pseudonymous keys, label, probabilities
      roc.png pr.png confusion.png calibration.png
      gallery.png gallery.html gallery/   GradCAM heat maps of test crops (TP, FP, FN, TN)
      heatmap_scores.csv explain.json     on the phantom: heat-map mass inside the fracture
      report.md report.html

``load_model(out_dir)`` rebuilds the classifier for inference (explain, rank-unlabeled).
"""

from __future__ import annotations

import csv
import html
import io
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_write_bytes, atomic_write_json, atomic_write_text

Report = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)

CI_METRICS = (
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
MODEL_FILE = "model.pt"
FORMAT_VERSION = 1


def run_final(
    config: Mapping[str, Any],
    out_dir: str | Path,
    *,
    report: Report | None = None,
    threshold: float | None = None,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Train ``config`` on train + validation, test once, write ``out_dir`` (module docstring).

    ``threshold``: the decision threshold chosen on validation during the search (the
    best trial's ``val/threshold``). Without it the threshold is chosen on the
    training data of this run, which is optimistic; the report says so.
    Returns the test metrics, their confidence intervals and the written paths.
    """
    import torch

    from pipeline.data import CachedRadiographs
    from pipeline.train import evaluate, fit
    from pipeline.train.runtime import using_threads
    from pipeline.trial import TrialConfig, TrialError, cache_root, prepare_data

    cfg = TrialConfig.from_dict(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg = cfg.train.replace(early_stop_patience=None)
    with using_threads(cfg.train.threads):
        prepared = prepare_data(cfg)
        if len(prepared.test) == 0:
            raise TrialError("the held-out test set is empty: set test_fraction > 0")
        trainval = CachedRadiographs(
            list(prepared.train.items) + list(prepared.val.items),
            prepared.index,
            views=cfg.data.views,
            missing_view=cfg.data.missing_view,
        )
        data = prepared.train_data()
        data = type(data)(
            labeled=trainval, val=prepared.val, unlabeled=data.unlabeled, identity=data.identity
        )
        result = fit(
            train_cfg,
            data,
            report=report,
            checkpoint_dir=out / "checkpoint",
            cache_root=cache_root(cfg.data) / "stages",
        )
        threshold_source = "validation (search)"
        if threshold is None:
            threshold, threshold_source = result.threshold, "training data (optimistic)"
        model = result.model
        ev = evaluate(model, prepared.test, threshold=float(threshold))

    patients = [item.patient for item in prepared.test.items]
    decision = getattr(model, "type_decision", "argmax")
    prior = getattr(model, "type_prior", None)
    # how 7-class probabilities become one class, and the class mix it divides out
    rule = {
        "type_decision": decision,
        "type_prior": None if prior is None else [float(v) for v in prior],
    }
    ci = bootstrap_ci(
        ev.probs,
        ev.targets,
        patients,
        task=model.task,
        threshold=float(threshold),
        n=bootstrap,
        type_decision=decision,
        type_prior=prior,
    )
    test_metrics = {f"test/{k}": v for k, v in ev.metrics.items()}
    info = {
        "format": FORMAT_VERSION,
        "spec": {
            "backbone": model.backbone_name,
            "task": model.task.name,
            "in_chans": int(prepared.train.channels),
            "drop_rate": float(cfg.train.drop_rate),
        },
        "classes": list(model.task.classes),
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        **rule,
        "preprocess": dict(cfg.preprocess),
        "views": cfg.data.views,
        "missing_view": cfg.data.missing_view,
    }
    paths = save_model(model, out, info, example=prepared.test[0]["image"][None])
    atomic_write_text(out / "config.yaml", _yaml(cfg.to_dict()))
    _write_predictions(out / "predictions.csv", prepared.test.items, ev, model.task.classes)
    plots = write_plots(out, ev, model.task)
    with using_threads(cfg.train.threads):
        gallery = _gallery(model, prepared, out, threshold=float(threshold))
    shown = [p for p in (out / "gallery.png", out / "gallery.html") if p.exists()]
    summary = {
        "metrics": test_metrics,
        "ci95": {f"test/{k}": v for k, v in ci.items()},
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        **rule,
        "train": {
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "train_val_crops": len(trainval),
            "unlabeled_crops": len(prepared.unlabeled),
        },
        "test": {"crops": len(prepared.test), "patients": len(set(patients))},
        "data": prepared.summary,
        "files": sorted(p.name for p in [*paths, *plots, *shown]),
    }
    atomic_write_json(out / "metrics.json", summary)
    write_report(out, {**summary, "gallery_html": gallery}, info)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return summary


def _gallery(model: Any, prepared: Any, out: Path, *, threshold: float) -> str:
    """The test set's heat-map gallery for the report (``pipeline.explain.final_gallery``).

    The model is trained and saved by now: a gallery that cannot be drawn is reported
    (log and report) rather than failing the run.
    """
    from pipeline.explain import final_gallery

    try:
        return final_gallery(model, prepared, out, threshold=threshold)
    except Exception as e:
        log.warning("the heat-map gallery could not be drawn: %s: %s", type(e).__name__, e)
        return f"<p>Heat-map gallery not available: {html.escape(f'{type(e).__name__}: {e}')}</p>"


# ----------------------------------------------------------------------------- model files


def save_model(model: Any, out: Path, info: Mapping[str, Any], *, example: Any) -> list[Path]:
    """``model.pt`` (state dict + spec) and ``model.pt2`` (``torch.export`` program with a
    dynamic batch size, loadable with ``torch.export.load`` without this package)."""
    import torch

    model = model.eval().cpu()
    buf = io.BytesIO()
    torch.save({"info": dict(info), "state_dict": model.state_dict()}, buf)
    paths = [atomic_write_bytes(out / MODEL_FILE, buf.getvalue())]
    x = example.float().cpu()
    x = x.expand(2, *x.shape[1:]).contiguous()  # (2, C, H, W): batch 1 would be specialised
    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        buf = io.BytesIO()
        torch.export.save(program, buf)
        paths.append(atomic_write_bytes(out / "model.pt2", buf.getvalue()))
    except Exception as e:  # export is a convenience; the state dict is the model of record
        atomic_write_text(out / "model.pt2.error.txt", f"torch.export failed: {e}\n")
    return paths


def load_model(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The classifier saved in ``model_dir`` (eval mode, CPU) and its info dict."""
    import torch

    from pipeline.train import ModelSpec, build_model

    path = Path(model_dir) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model here (train one with python -m search promote)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    info = saved["info"]
    spec = ModelSpec(**info["spec"], pretrained="none")
    model = build_model(spec)
    model.load_state_dict(saved["state_dict"])
    # the decision rule travels with the model, as fit() leaves it (evaluate reads it)
    model.type_decision = info.get("type_decision", "argmax")
    prior = info.get("type_prior")
    model.type_prior = None if prior is None else torch.tensor(prior, dtype=torch.float32)
    return model.eval(), info


# ----------------------------------------------------------------------------- statistics


def bootstrap_ci(
    probs: Any,
    targets: Any,
    groups: list[str],
    *,
    task: Any,
    threshold: float,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    type_decision: str = "argmax",
    type_prior: Any = None,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of the test metrics, resampling patients (not images).

    Crops of one patient are correlated; resampling them together keeps the
    intervals honest. Resamples where a metric is undefined (one class only) are
    left out of that metric's interval. ``type_decision`` / ``type_prior``: the
    model's 7-class decision rule (as :func:`pipeline.train.evaluate` applies it).
    """
    import torch

    from pipeline.train import classification_metrics

    if n <= 0 or len(groups) == 0:
        return {}
    rng = np.random.default_rng(seed)
    uniq = sorted(set(groups))
    members = {g: [] for g in uniq}
    for i, g in enumerate(groups):
        members[g].append(i)
    draws: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    for _ in range(n):
        chosen = rng.choice(len(uniq), size=len(uniq), replace=True)
        idx = torch.as_tensor([i for c in chosen for i in members[uniq[c]]])
        m = classification_metrics(
            probs[idx],
            targets[idx],
            task=task,
            threshold=threshold,
            type_decision=type_decision,
            type_prior=type_prior,
        )
        for k in CI_METRICS:
            v = m.get(k)
            if v is not None and not math.isnan(v):
                draws[k].append(float(v))
    return {
        k: (float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2)))
        for k, v in draws.items()
        if len(v) >= max(10, n // 10)
    }


# ----------------------------------------------------------------------------- outputs


def _write_predictions(path: Path, items: list[Any], ev: Any, classes: tuple[str, ...]) -> None:
    from pipeline.deid import pseudonym, resolve_salt

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


def write_report(out: Path, summary: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """``report.md`` and ``report.html``: test metrics with intervals, plots, provenance."""
    rows = []
    for k in CI_METRICS:
        key = f"test/{k}"
        if key not in summary["metrics"]:
            continue
        lo_hi = summary["ci95"].get(key)
        ci = f"{_fmt(lo_hi[0])} - {_fmt(lo_hi[1])}" if lo_hi else "n/a"
        rows.append((k, _fmt(summary["metrics"][key]), ci))
    head = (
        f"Model: {info['spec']['backbone']}, task {info['spec']['task']}, views {info['views']}. "
        f"Decision threshold {summary['threshold']:.3f}, chosen on {summary['threshold_source']}. "
        f"Test set: {summary['test']['crops']} crops of {summary['test']['patients']} patients, "
        "seen once; 95% intervals from a patient-level bootstrap."
    )
    md = [
        "# Final model: test report",
        "",
        head,
        "",
        "| metric | value | 95% CI |",
        "| --- | ---: | ---: |",
    ]
    md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    md += ["", *[f"![{p}]({p})" for p in ("roc.png", "pr.png", "confusion.png", "calibration.png")]]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    table = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows
    )
    imgs = "".join(
        f'<img src="{p}" alt="{p}" style="max-width:24%">'
        for p in ("roc.png", "pr.png", "confusion.png", "calibration.png")
    )
    extra = summary.get("gallery_html", "")
    page = (
        "<!doctype html><meta charset='utf-8'><title>Final model: test report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "td,th{padding:2px 10px;text-align:right}</style>"
        f"<h1>Final model: test report</h1><p>{html.escape(head)}</p>"
        f"<table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>{table}</table>"
        f"<p>{imgs}</p>{extra}"
    )
    atomic_write_text(out / "report.html", page)


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=True)
