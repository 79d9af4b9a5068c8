"""``python -m search promote results/<name>``: train the best configuration for real.

Takes the best completed trial (``best.yaml``), gives it a longer budget (``--epochs``,
else ``budget.final_epochs``, else twice the trial's epochs, with no per-trial time cap)
and calls ``pipeline.run_final(config, out_dir, report=..., threshold=...)`` (the best
trial's ``val/threshold`` when it reported one), which trains on the training
and validation data, evaluates once on the held-out test set and writes the model and
the test report into ``results/<name>/final/``. The final run is logged to W&B (its
per-epoch metrics and test metrics; images only when the space allows them), and
``final/promote.yaml`` records what was run.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.io import atomic_write_text
from search.experiment import ExperimentFolder, now_iso
from search.tracking import TrackingSetup, TrialRun

RunFinal = Callable[..., dict]


class PromoteError(RuntimeError):
    """The experiment has nothing to promote, or the final run failed."""


def default_run_final() -> RunFinal:
    """``pipeline.run_final`` (imported when first needed)."""
    try:
        from pipeline import run_final  # type: ignore[attr-defined]
    except ImportError as e:
        raise PromoteError(
            "pipeline.run_final (the final training entry point) is not available in this "
            "installation; pass another with the same signature (--run-final module:function)"
        ) from e
    return run_final  # type: ignore[no-any-return]


def final_config(
    best: Mapping[str, Any], *, epochs: int | None, final_epochs: int | None, default_epochs: int
) -> dict[str, Any]:
    """The best trial's configuration with the final run's budget."""
    config = {k: v for k, v in best["config"].items() if k not in ("checkpoint_dir", "threads")}
    trial_epochs = int(best.get("epochs") or config.get("epochs") or default_epochs)
    config["epochs"] = int(epochs or final_epochs or 2 * trial_epochs)
    config.pop("time_budget_s", None)
    config.pop("steps_per_epoch", None)
    if not config.get("cache_dir") and "data_dir" in config:
        env = os.environ.get("RADSEARCH_CACHE")
        config["cache_dir"] = str(
            Path(env).resolve() if env else (Path.cwd() / ".cache" / "radsearch").resolve()
        )
    return config


def promote(
    experiment: ExperimentFolder | str | os.PathLike[str],
    *,
    run_final: RunFinal | None = None,
    epochs: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    wandb_mode: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and test the best configuration; returns the final run's metrics."""
    folder = (
        experiment
        if isinstance(experiment, ExperimentFolder)
        else ExperimentFolder.open(experiment)
    )
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
    run_final = run_final or default_run_final()
    setup = TrackingSetup.for_experiment(space.tracking, folder.name, folder.path, mode=wandb_mode)
    say = echo or (lambda _msg: None)
    with folder.locked():  # a resume must not run beside the final run
        run = TrialRun(
            setup,
            name=f"{folder.name}-final",
            config={**config, "trial": best["trial"]},
            job_type="promote",
            tags=("promote",),
        )
        epoch = 0

        def report(metrics: Mapping[str, Any]) -> None:
            nonlocal epoch
            value = metrics.get("epoch")
            epoch = int(value) if isinstance(value, int | float) else epoch + 1
            run.log(metrics, step=epoch)
            shown = ", ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "epoch"
            )
            say(f"final run, epoch {epoch}: {shown}")

        kwargs: dict[str, Any] = {"report": report}
        threshold = (best.get("metrics") or {}).get("val/threshold")
        if threshold is not None and _accepts(run_final, "threshold"):
            kwargs["threshold"] = threshold  # the decision threshold chosen on validation
        t0 = time.time()
        try:
            metrics = dict(run_final(config, out, **kwargs) or {})
        except BaseException as e:
            run.finish(failed=True)
            raise PromoteError(f"the final run failed: {e}") from e
        run.summary(metrics)
        report_html = out / "report.html"
        if report_html.is_file() and run.active:
            import wandb

            run.log_object("final/report", wandb.Html(report_html.read_text(encoding="utf-8")))
        if run.active:
            _log_pictures(run, out, log_images=setup.log_images)
        run.finish()
        record = {
            "experiment": folder.name,
            "trial": best["trial"],
            "objective": best["objective"],
            "config": config,
            "metrics": {
                k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)
            },
            "seconds": round(time.time() - t0, 1),
            "finished": now_iso(),
        }
        atomic_write_text(out / "promote.yaml", yaml.safe_dump(record, sort_keys=False))
    return metrics


PLOTS = ("roc.png", "pr.png", "confusion.png", "calibration.png")  # curves: no patient images


def _log_pictures(run: Any, out: Path, *, log_images: bool) -> None:
    """The report's plots to W&B; the heat-map gallery (patient images) only when the
    space allows images (``tracking.log_images``)."""
    import wandb

    for name in PLOTS:
        if (out / name).is_file():
            run.log_object(f"final/{Path(name).stem}", wandb.Image(str(out / name)))
    if log_images and (out / "gallery.png").is_file():
        run.log_object("final/gallery", wandb.Image(str(out / "gallery.png")))


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
