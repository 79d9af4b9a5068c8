"""The final run's protocol: nothing chosen on data a model trained on, one look at the test set.

``run_final(config, out_dir, reference=TRIAL_MODEL_DIR)``:

1. **Train** the configuration on the training split, with its final budget and a fixed
   schedule: the weights of the last epoch are kept (``select: last``), so no epoch is
   picked by a validation score. The validation split is never trained on.
2. **Threshold**: the decision threshold of each candidate model is chosen on the
   validation split (``threshold_metric``, F2 by default), for that model itself.
3. **Keep** one model by :data:`KEEP_RULE`, fixed before any test score exists: the
   final model, unless the search's own model of that configuration (the best trial's
   checkpoint, ``reference``) scores higher on the validation split by more than twice
   the standard error of the paired difference (a patient-level paired bootstrap). The
   trial's model was picked by that same validation split (the search's winner and,
   with ``select: best``, its epoch), so its validation score flatters it; the margin
   keeps the final model unless the evidence against it is clear.
4. **Test** both candidates once on the held-out test split; the kept model's results
   are the report's, the other's are shown beside them, never used to choose.
5. **External** (optional): the kept model scored once on every labeled image of a
   second data folder (another site, another phantom), preprocessed the same way.

The folder it writes is described in :mod:`pipeline.final.report`.
"""

from __future__ import annotations

import html
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.explain import final_gallery
from pipeline.final.report import write_plots, write_predictions, write_report
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.train import (
    bootstrap_ci,
    evaluate,
    fit,
    load_model,
    model_info,
    save_model,
)
from pipeline.train.batches import dataset_groups
from pipeline.train.bootstrap import paired_difference
from pipeline.train.loop import default_monitor
from pipeline.train.runtime import using_threads
from pipeline.trial import (
    TrialConfig,
    TrialError,
    cache_root,
    labeled_set,
    load_data,
    split_data,
)

Report = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)

#: how many standard errors of the paired validation difference the search's own model
#: must lead by to be kept instead of the final model
KEEP_MARGIN_SE = 2.0
KEEP_RULE = (
    "keep the final model unless the best trial's model scores higher on the validation "
    f"split by more than {KEEP_MARGIN_SE:g} standard errors of the paired difference "
    "(patient-level paired bootstrap); fixed before either model is tested"
)


@dataclass
class Candidate:
    """One model the final run may keep, with its validation threshold and scores."""

    name: str  # "final" or "trial"
    model: Any
    threshold: float
    val: Any  # Evaluation on the validation split (threshold chosen there)
    source: str  # where the model comes from, for the report


@dataclass
class Outcome:
    """What the protocol decided: the candidates, which is kept, both test evaluations."""

    fit: Any  # FitResult of the final model
    candidates: list[Candidate]
    decision: dict[str, Any]
    kept: Candidate
    tests: dict[str, Any]  # candidate name -> Evaluation on the test split
    external: tuple[Any, Any] | None  # (dataset, Evaluation of the kept model)


def run_final(
    config: Mapping[str, Any],
    out_dir: str | Path,
    *,
    report: Report | None = None,
    reference: str | Path | None = None,
    external: tuple[str | Path, str | Path | None] | None = None,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Train, choose, test once and write ``out_dir`` (see the module docstring).

    ``reference``: the folder of the best trial's ``model.pt`` (none: the final model is
    kept and the report says why). ``external``: ``(data folder, labels CSV or None)``.
    Returns the summary written to ``metrics.json``: ``metrics`` (the kept model's test
    metrics), ``ci95``, ``kept``, ``decision``, ``candidates``, ``external``, ...
    """
    cfg = TrialConfig.from_dict(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with using_threads(cfg.train.threads):
        prepared = split_data(load_data(cfg), cfg)
        if len(prepared.test) == 0:
            raise TrialError("the held-out test set is empty: set test_fraction > 0")
        outcome = _train_choose_test(cfg, prepared, out, report, reference, external)
        kept = outcome.kept
        info = model_info(
            kept.model,
            in_chans=int(prepared.train.channels),
            drop_rate=cfg.train.drop_rate,
            threshold=kept.threshold,
            threshold_source=f"validation split for the kept model, {kept.source}",
            preprocess=cfg.preprocess,
            views=cfg.data.views,
            missing_view=cfg.data.missing_view,
        )
        test = outcome.tests[kept.name]
        paths = save_model(kept.model, out, info, example=prepared.test[0]["image"][None])
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.public_dict(), sort_keys=True))
        write_predictions(
            out / "predictions.csv", prepared.test.items, test, kept.model.task.classes
        )
        plots = write_plots(out, test, kept.model.task)
        gallery = _gallery(kept.model, prepared, out, threshold=kept.threshold)
    shown = [p for p in (out / "gallery.png", out / "gallery.html") if p.exists()]
    summary = _summary(outcome, prepared, info, bootstrap)
    summary["files"] = sorted(p.name for p in [*paths, *plots, *shown])
    atomic_write_json(out / "metrics.json", summary)
    write_report(out, {**summary, "gallery_html": gallery}, info)
    return summary


def _train_choose_test(
    cfg: TrialConfig,
    prepared: Any,
    out: Path,
    report: Report | None,
    reference: str | Path | None,
    external: tuple[str | Path, str | Path | None] | None,
) -> Outcome:
    """Steps 1-5 of the protocol (module docstring)."""
    # a fixed schedule: the last epoch's weights, no early stop on validation
    train_cfg = cfg.train.replace(early_stop_patience=None, select="last")
    result = fit(
        train_cfg,
        prepared.train_data(),
        report=report,
        checkpoint_dir=out / "checkpoint",
        cache_root=cache_root(cfg.data),
    )
    candidates = [_candidate("final", result.model, prepared, "trained by this run", cfg)]
    trial_model, why_not = _reference_model(reference, result.model)
    if trial_model is not None:
        candidates.append(
            _candidate("trial", trial_model, prepared, "the best trial's checkpoint", cfg)
        )
    decision = choose(candidates, prepared, why_not=why_not)
    kept = next(c for c in candidates if c.name == decision["kept"])
    tests = {c.name: evaluate(c.model, prepared.test, threshold=c.threshold) for c in candidates}
    ext = None
    if external is not None:
        data_dir, labels = external
        ext_set = labeled_set(
            cfg, Path(data_dir), Path(labels) if labels else None, workers=os.cpu_count() or 1
        )
        ext = (ext_set, evaluate(kept.model, ext_set, threshold=kept.threshold))
    return Outcome(result, candidates, decision, kept, tests, ext)


def _summary(outcome: Outcome, prepared: Any, info: Mapping[str, Any], bootstrap: int) -> dict:
    """``metrics.json``: the kept model's test metrics and intervals, the decision, both
    candidates on validation and test, the external set's metrics."""
    kept, test = outcome.kept, outcome.tests[outcome.kept.name]
    groups = dataset_groups(prepared.test)
    summary: dict[str, Any] = {
        "metrics": {f"test/{k}": v for k, v in test.metrics.items()},
        "ci95": {f"test/{k}": v for k, v in _ci(kept, test, groups, bootstrap).items()},
        "kept": kept.name,
        "decision": outcome.decision,
        "candidates": {
            c.name: {
                "source": c.source,
                "threshold": c.threshold,
                "val": {f"val/{k}": v for k, v in c.val.metrics.items()},
                "test": {f"test/{k}": v for k, v in outcome.tests[c.name].metrics.items()},
            }
            for c in outcome.candidates
        },
        "threshold": kept.threshold,
        "threshold_source": info["threshold_source"],
        "type_decision": info["type_decision"],
        "type_prior": info["type_prior"],
        "train": {
            "epochs": outcome.fit.config["epochs"],
            "select": outcome.fit.config["select"],
            "stop_reason": outcome.fit.stop_reason,
            "train_crops": len(prepared.train),
            "val_crops": len(prepared.val),
            "unlabeled_crops": len(prepared.unlabeled),
        },
        "test": {"crops": len(prepared.test), "patients": len(set(groups or []))},
        "data": prepared.summary,
    }
    if outcome.external is not None:
        ext_set, ext_ev = outcome.external
        ext_groups = dataset_groups(ext_set)
        ci = _ci(kept, ext_ev, ext_groups, bootstrap)
        summary["external"] = {
            "crops": len(ext_set),
            "patients": len(set(ext_groups or [])),
            "fractures": int((ext_ev.targets > 0).sum()),
            "metrics": {f"external/{k}": v for k, v in ext_ev.metrics.items()},
            "ci95": {f"external/{k}": v for k, v in ci.items()},
        }
    return summary


def _candidate(name: str, model: Any, prepared: Any, source: str, cfg: TrialConfig) -> Candidate:
    """A model with its own validation threshold (chosen on the validation split)."""
    ev = evaluate(model, prepared.val, threshold_metric=cfg.train.threshold_metric)
    return Candidate(name=name, model=model, threshold=float(ev.threshold), val=ev, source=source)


def _reference_model(reference: str | Path | None, final: Any) -> tuple[Any, str | None]:
    """The best trial's model, or ``None`` and why it cannot be compared."""
    if reference is None:
        return None, "no model of the best trial was given (its checkpoint is not known)"
    try:
        model, _info = load_model(reference)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError) as e:
        return None, f"the best trial's model could not be loaded: {e}"
    if (
        model.backbone_name != final.backbone_name
        or model.task.name != final.task.name
        or any(a.shape != b.shape for a, b in zip(model.parameters(), final.parameters()))
    ):
        return None, "the best trial's model is not of the final configuration"
    model.type_decision = getattr(final, "type_decision", "argmax")
    model.type_prior = getattr(final, "type_prior", None)
    return model, None


def choose(candidates: list[Candidate], prepared: Any, *, why_not: str | None) -> dict[str, Any]:
    """Apply :data:`KEEP_RULE` on the validation split; returns the decision and its figures."""
    final = candidates[0]
    task = final.model.task
    metric = default_monitor(task).removeprefix("val/")
    decision: dict[str, Any] = {"rule": KEEP_RULE, "metric": f"val/{metric}", "kept": "final"}
    if len(candidates) < 2:
        decision["reason"] = f"nothing to compare it with: {why_not}"
        return decision
    trial = candidates[1]
    diff, se = paired_difference(
        {"probs": final.val.probs, "threshold": final.threshold, **_type_rule(final.model)},
        {"probs": trial.val.probs, "threshold": trial.threshold, **_type_rule(trial.model)},
        final.val.targets,
        dataset_groups(prepared.val),
        task=task,
        metric=metric,
    )
    decision.update(
        {
            "val_final": final.val.metrics.get(metric),
            "val_trial": trial.val.metrics.get(metric),
            "difference": diff,
            "difference_se": se,
        }
    )
    if math.isfinite(diff) and math.isfinite(se) and diff > KEEP_MARGIN_SE * se:
        decision["kept"] = "trial"
        decision["reason"] = (
            f"the best trial's model leads on validation {metric} by {diff:.3f} "
            f"(> {KEEP_MARGIN_SE:g} x {se:.3f})"
        )
    elif diff <= 0:
        decision["reason"] = (
            f"the final model scores {-diff:.3f} higher than the best trial's model on "
            f"validation {metric}"
        )
    else:
        decision["reason"] = (
            f"the best trial's model leads on validation {metric} by {diff:.3f}, within "
            f"{KEEP_MARGIN_SE:g} x {se:.3f}: not clearly better (its validation score is the "
            "one the search picked it by)"
        )
    return decision


def _ci(kept: Candidate, ev: Any, groups: list[str] | None, n: int) -> dict[str, tuple]:
    return bootstrap_ci(
        ev.probs,
        ev.targets,
        groups,
        task=kept.model.task,
        threshold=kept.threshold,
        n=n,
        **_type_rule(kept.model),
    )


def _type_rule(model: Any) -> dict[str, Any]:
    """The 7-class decision rule a model carries (``fit`` and ``load_model`` attach it)."""
    return {
        "type_decision": getattr(model, "type_decision", "argmax"),
        "type_prior": getattr(model, "type_prior", None),
    }


def _gallery(model: Any, prepared: Any, out: Path, *, threshold: float) -> str:
    """The test set's heat-map gallery (``pipeline.explain.final_gallery``) as HTML.

    The model is saved by now: a gallery that cannot be drawn is reported (log and
    report) rather than failing the run.
    """
    try:
        return final_gallery(model, prepared, out, threshold=threshold)
    except Exception as e:
        log.warning("the heat-map gallery could not be drawn: %s: %s", type(e).__name__, e)
        # the report is shared: the error's kind, not its text (which may name files)
        return f"<p>Heat-map gallery not available ({html.escape(type(e).__name__)}).</p>"
