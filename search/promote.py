"""``python -m search promote results/<name>``: the best configuration, trained for real.

Takes the best completed trial (``best.yaml``), gives it a longer budget (``--epochs``,
else ``budget.final_epochs``, else twice the trial's epochs, with no per-trial time cap)
and calls ``pipeline.run_final(config, out_dir, reference=..., external=...)``: the final
model trains on the training split with a fixed schedule, each candidate (the final
model, and the best trial's own model from its checkpoint) gets its decision threshold
on the validation split, a rule fixed in advance keeps one, and both are tested once
on the held-out test set (``pipeline.final.run`` has the protocol). With
``--external DIR`` the kept model is also scored once on a second labeled data set.

Everything goes to ``results/<name>/final/``; the final run is logged to W&B (its
per-epoch metrics and test metrics; images only when the space allows them), and
``final/promote.yaml`` records what was run and what came out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import wandb
import yaml

import pipeline
from search.experiment import ExperimentFolder
from search.privacy import make_files_public
from search.statefiles import now_iso
from search.tracking import TrackingSetup, TrialRun
from search.values import finite
from search.worker import MODEL_FILE

RunFinal = Callable[..., dict]
#: the report's plots sent to W&B (curves only: no patient images)
PLOTS = ("roc.png", "pr.png", "confusion.png", "calibration.png")
#: the test metrics ``promote`` prints and records first
HEADLINE = ("test/auroc", "test/sensitivity", "test/specificity", "test/macro_f1")


class PromoteError(RuntimeError):
    """The experiment has nothing to promote, or the final run failed."""


def final_config(
    best: Mapping[str, Any], *, epochs: int | None, final_epochs: int | None, default_epochs: int
) -> dict[str, Any]:
    """The best trial's configuration with the final run's budget."""
    config = {k: v for k, v in best["config"].items() if k not in ("checkpoint_dir", "threads")}
    trial_epochs = int(best.get("epochs") or config.get("epochs") or default_epochs)
    config["epochs"] = int(epochs or final_epochs or 2 * trial_epochs)
    config.pop("time_budget_s", None)
    if not config.get("cache_dir") and "data_dir" in config:
        config["cache_dir"] = str(pipeline.cache_home().resolve())
    return config


def trial_model_dir(folder: ExperimentFolder, trial: int) -> Path | None:
    """The folder holding the trial's model of record (its last checkpoint), if any."""
    checkpoint = folder.trials.get(trial, {}).get("checkpoint")
    if checkpoint and (Path(checkpoint) / MODEL_FILE).is_file():
        return Path(checkpoint)
    return None


def promote(
    experiment: ExperimentFolder | str | os.PathLike[str],
    *,
    run_final: RunFinal | None = None,
    epochs: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    wandb_mode: str | None = None,
    external: tuple[str | os.PathLike[str], str | os.PathLike[str] | None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, choose, test the best configuration; returns ``run_final``'s summary
    (``metrics``: the kept model's test metrics, ``kept``, ``decision``, ...)."""
    folder = ExperimentFolder.open(experiment)
    best = folder.best()
    if best is None:
        raise PromoteError(
            f"{folder.display} has no completed trial that meets the objective's constraints; "
            f"run more trials with `python -m search resume {folder.display} --trials N`"
        )
    space = folder.space()
    config = final_config(
        best,
        epochs=epochs,
        final_epochs=space.budget.final_epochs,
        default_epochs=space.max_epochs(),
    )
    out = Path(out_dir) if out_dir is not None else folder.final_dir
    out.mkdir(parents=True, exist_ok=True)
    run_final = run_final or pipeline.run_final
    setup = TrackingSetup.for_experiment(space.tracking, folder.name, folder.path, mode=wandb_mode)
    say = echo or (lambda _msg: None)
    reference = trial_model_dir(folder, int(best["trial"]))
    with folder.locked():  # a resume must not run beside the final run
        run = TrialRun(
            setup,
            name=f"{folder.name}-final",
            config={**config, "trial": best["trial"]},
            job_type="promote",
            tags=("promote",),
        )
        report = _reporter(run, say)
        t0 = time.time()
        try:
            summary = dict(
                run_final(config, out, report=report, reference=reference, external=external) or {}
            )
        except BaseException as e:
            run.finish(failed=True)
            raise PromoteError(f"the final run failed: {e}") from e
        metrics = {**summary.get("metrics", {}), **_external_metrics(summary)}
        run.summary(metrics)
        if run.active:
            _log_report(run, out, log_images=setup.log_images)
        run.finish()
        record = {
            "experiment": folder.name,
            "trial": best["trial"],
            "objective": best["objective"],
            "config": config,
            "kept": summary.get("kept"),
            "decision": summary.get("decision"),
            "metrics": {
                k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)
            },
            "ci95": {k: list(v) for k, v in summary.get("ci95", {}).items()},
            "seconds": round(time.time() - t0, 1),
            "finished": now_iso(),
        }
        pipeline.atomic_write_text(out / "promote.yaml", yaml.safe_dump(record, sort_keys=False))
        make_files_public(out)  # config.yaml, metrics.json, promote.yaml: no local paths
    return summary


def _reporter(run: TrialRun, say: Callable[[str], None]) -> Callable[[Mapping[str, Any]], None]:
    """The final run's per-epoch report: to W&B, and one line to the terminal."""
    epoch = 0

    def report(metrics: Mapping[str, Any]) -> None:
        nonlocal epoch
        value = metrics.get("epoch")
        epoch = int(value) if finite(value) else epoch + 1
        run.log(metrics, step=epoch)
        shown = ", ".join(
            f"{k}={metrics[k]:.3g}"
            for k in ("train/loss", "val/auroc", "val/macro_f1", "train/mask_rate")
            if finite(metrics.get(k))
        )
        say(f"final run, epoch {epoch}: {shown}")

    return report


def _external_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    return dict((summary.get("external") or {}).get("metrics", {}))


def headline(summary: Mapping[str, Any]) -> list[str]:
    """What ``promote`` prints: the kept model and why, its test (and external) metrics
    with their 95% intervals, where the report is."""
    lines = []
    decision = summary.get("decision") or {}
    if summary.get("kept"):
        lines.append(f"kept: the {summary['kept']} model ({decision.get('reason', '')})")
    external = summary.get("external") or {}
    metrics = {**summary.get("metrics", {}), **external.get("metrics", {})}
    ci = {**summary.get("ci95", {}), **external.get("ci95", {})}
    for key in [*HEADLINE, *(k.replace("test/", "external/") for k in HEADLINE)]:
        if finite(metrics.get(key)):
            lo_hi = ci.get(key)
            interval = f" (95% CI {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else ""
            lines.append(f"{key} = {metrics[key]:.3f}{interval}")
    if finite(summary.get("threshold")):
        lines.append(
            f"decision threshold {summary['threshold']:.3f} ({summary.get('threshold_source')})"
        )
    return lines


def _log_report(run: TrialRun, out: Path, *, log_images: bool) -> None:
    """The report page and its plots to W&B; the heat-map gallery (patient images) only
    when the space allows images (``tracking.log_images``)."""
    report_html = out / "report.html"
    if report_html.is_file():
        run.log_object("final/report", wandb.Html(report_html.read_text(encoding="utf-8")))
    for name in PLOTS:
        if (out / name).is_file():
            run.log_object(f"final/{Path(name).stem}", wandb.Image(str(out / name)))
    if log_images and (out / "gallery.png").is_file():
        run.log_object("final/gallery", wandb.Image(str(out / "gallery.png")))
