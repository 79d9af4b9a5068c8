"""One trial, every method: supervised vs FixMatch vs MixMatch on the knee phantom.

    python benchmarks/trial.py                      # the default table (2 CPU cores: ~30 min)
    python benchmarks/trial.py --quick              # smoke run of every row (a few minutes)
    python benchmarks/trial.py --json table.json    # also save the table as JSON
    python benchmarks/trial.py --device cuda --workers 1 --threads 8 --image-size 128 \\
        --backbone resnet18 --epochs 30 --steps-per-epoch 64 --mu 7 --ssl-epochs 20

Side by side in one run, on one synthetic phantom set (``--n`` images, ``--labeled-fraction``
of the studies labeled): every training method, with and without SimCLR pretraining,
for the binary (fracture yes/no) and the 7-class Schatzker tasks; with ``--views``, one
FixMatch pair that differs only in its input, the frontal view alone (``ap``) or the
frontal and lateral views as two channels (``ap+lat``), at the same budget.

Every row is also evaluated on an external test phantom (``--external-n`` images, another
seed, every study labeled, never trained on): about 1,200 crops with 250 fractures and
20-70 of each type, where the test split has 106 crops and 3-8 per type (one crop moves a
type's F1 by ~0.1, and the AUROC of 26 fractures by a few hundredths between seeds). The
targets are judged on it; the test split's figures stay beside them.

Every configuration runs in its own fresh process (``--workers`` at a time, each on
``--threads`` threads), through the trial's own path: ``pipeline.trial.prepare_data``
then ``pipeline.train.fit``, which keeps the last epoch (``SHARED_DEFAULTS``; ``--set
select=best`` keeps the epoch with the best validation monitor instead) and chooses the
decision threshold on validation. That model is then evaluated once on the held-out
test split and once on the external phantom with the validation threshold, as
``pipeline.final`` does. Validation figures are the kept epoch's (they chose the
threshold); test and external figures are the honest ones.

Every row trains with ``SHARED_DEFAULTS`` (half of every batch from the minority
classes, distribution alignment for FixMatch and MixMatch, the last epoch kept); the
7-class rows add ``SCHATZKER_DEFAULTS`` (the type decided after the validated fracture
threshold with the sampler's class prior divided out); ``--set`` and
``--schatzker-set KEY=VALUE`` change them. On a CPU that computes bfloat16 natively
the rows train in bf16 mixed precision, channels-last (``--precision``), about twice as
fast as fp32. Tables of per-class F1 show what the 7-class macro-F1 is made of.

Cost of the default table on a quiet 2-core machine with native bf16, measured in one
run: phantom and preprocessing cache ~4 min the first time (the external phantom ~30 s
more); SimCLR stage 222 s; a 40-epoch row ~100 s supervised, ~300 s FixMatch (mu 2),
~290 s MixMatch; 26.4 min in all with two workers. In fp32 (a CPU without native
bf16) a row takes about twice as long.

Columns: AUROC of P(fracture), macro-F1 (binary: over fracture / no fracture at the
validation threshold; Schatzker: over the 7 classes with the row's ``type_decision``),
wall seconds of the fit (model build, training, validation; SSL loaded from the stage
cache) and of the test evaluation, images per second of training (labeled + unlabeled images through
the model per training second), peak resident memory of the process (and peak CUDA
memory on a GPU). The SSL stage (computed once, shared by every SSL row through the
stage cache) has its own line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("WANDB_MODE", "disabled"),
    ("RADSEARCH_SALT", "benchmark"),
):
    os.environ.setdefault(_key, _value)

METHODS = ("supervised", "fixmatch", "mixmatch")
TASKS = ("binary", "schatzker")

# Settings every row shares on top of the trial defaults (``--set`` adds to them). Fractures
# are a quarter of the labeled crops, and six types share them unevenly (type II is 3x
# type III on the phantom): with uniform batches the rare classes are seen a few times
# per epoch and the 7-class model never predicts them. Half of every batch from the
# minority classes (round-robin over them, ``sampler="ratio"``) and a longer schedule
# moved macro-F1 in the diagnosis (measured on held-out unlabeled phantom crops, never
# on the test split) and binary AUROC (on the external phantom: 0.913 -> 0.934 for
# supervised at 24 epochs with lr 3e-3); the semi-supervised methods align their
# guesses to the labeled class distribution (ReMixMatch).
#
# Every row keeps its last epoch (``select="last"``): the cosine schedule ends at lr 0,
# and the validation split's 26 fractures are too few to pick an epoch by (binary
# rows' validation AUROC plateaus at 0.97-0.98 from epoch ~15 of 40; picking its
# maximum kept epochs 14-17 and cost 0.02-0.04 AUROC on the external phantom).
SHARED_DEFAULTS: dict[str, Any] = {
    "sampler": "ratio",
    "sampler_ratio": 0.5,
    "dist_align": True,
    "select": "last",
}
# Settings of the 7-class rows on top of the shared ones (``--schatzker-set`` adds to
# them): the type decision calls a fracture with the validation threshold (the one the
# fracture-level figures use), then the type with the sampler's class shares divided out.
SCHATZKER_DEFAULTS: dict[str, Any] = {"type_decision": "balanced"}

# The targets, checked on the external phantom (else the test split).
TARGET_AUROC = 0.95  # binary AUROC with FixMatch
TARGET_MACRO_F1 = 0.70  # Schatzker macro-F1


@dataclass(frozen=True)
class Row:
    """One configuration of the table."""

    task: str
    method: str
    ssl: bool
    views: str = "ap"
    seed: int = 0
    group: str = "main"  # "main" or "views"

    @property
    def name(self) -> str:
        ssl = "+simclr" if self.ssl else ""
        return f"{self.task}/{self.method}{ssl}/{self.views}/seed{self.seed}"


# ----------------------------------------------------------------------------- configuration


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """Trial keys shared by every row (``pipeline.trial.trial_keys``)."""
    config: dict[str, Any] = {
        "phantom_n": args.n,
        "phantom_seed": args.phantom_seed,
        "phantom_size": args.phantom_size,
        "phantom_labeled_fraction": args.labeled_fraction,
        "phantom_fracture_rate": args.fracture_rate,
        "cache_dir": str(args.cache),
        "image_size": args.image_size,
        "backbone": args.backbone,
        "pretrained": "none",  # no network here; the same start for every row
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "mu": args.mu,
        "ssl_method": "none",
        "ssl_epochs": 0,
        "ssl_lr": args.ssl_lr,
        "threads": args.threads,
        "device": args.device,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "split_seed": 0,
        **SHARED_DEFAULTS,
    }
    config.update(_parse_sets(args.set))
    return config


def task_settings(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Trial keys one task's rows add to the shared ones (every method alike)."""
    if task != "schatzker":
        return {}
    settings: dict[str, Any] = {**SCHATZKER_DEFAULTS}
    if args.schatzker_epochs is not None:
        settings["epochs"] = args.schatzker_epochs
    settings.update(_parse_sets(args.schatzker_set))
    return settings


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value[:1] in '0123456789-[{tfn"' else value
    return out


def row_config(base: dict[str, Any], row: Row, args: argparse.Namespace) -> dict[str, Any]:
    config = {
        **base,
        **task_settings(row.task, args),
        "task": row.task,
        "method": row.method,
        "views": row.views,
        "seed": row.seed,
    }
    if row.ssl:
        config.update(ssl_method=args.ssl_method, ssl_epochs=args.ssl_epochs)
    return config


def plan_rows(args: argparse.Namespace) -> list[Row]:
    rows = [
        Row(task=task, method=method, ssl=ssl, seed=seed)
        for seed in range(args.seeds)
        for task in TASKS
        for ssl in (False, True)
        for method in METHODS
    ]
    if args.views:
        rows += [
            Row(
                task="binary",
                method=args.views_method,
                ssl=False,
                views="ap+lat",
                seed=s,
                group="views",
            )
            for s in range(args.seeds)
        ]
    if args.only:
        rows = [r for r in rows if any(part in r.name for part in args.only)]
    return rows


# ----------------------------------------------------------------------------- workers


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_peak_mib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def external_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """Trial keys of the external test phantom (None without one): another seed, every
    study labeled, the main phantom's size and fracture rate."""
    if args.external_n <= 0:
        return None
    seed = args.external_seed if args.external_seed is not None else args.phantom_seed + 1000
    if seed == args.phantom_seed:
        raise SystemExit("--external-seed must differ from --phantom-seed")
    return {"phantom_n": args.external_n, "phantom_seed": seed, "phantom_labeled_fraction": 1.0}


def _prepare_phantom(config: dict[str, Any]) -> tuple[Any, float, float]:
    """(prepared data, phantom seconds, preprocessing seconds), with every core."""
    from pipeline.trial import TrialConfig, cache_root, ensure_phantom, prepare_data

    t0 = time.perf_counter()
    cfg = TrialConfig.from_dict({**config, "preprocess_workers": os.cpu_count() or 1})
    d = cfg.data
    ensure_phantom(
        d.phantom_n,
        d.phantom_seed,
        d.phantom_size,
        cache_root(d),
        labeled_fraction=d.phantom_labeled_fraction,
        fracture_rate=d.phantom_fracture_rate,
        workers=os.cpu_count() or 1,
    )
    t1 = time.perf_counter()
    prepared = prepare_data(cfg)
    return prepared, t1 - t0, time.perf_counter() - t1


def prepare(config: dict[str, Any], external: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate the phantom(s) and fill the preprocessing cache (once, with every core)."""
    prepared, phantom_s, preprocess_s = _prepare_phantom(config)
    out: dict[str, Any] = {
        "phantom_s": phantom_s,
        "preprocess_s": preprocess_s,
        "summary": prepared.summary,
        "class_counts": {
            name: _class_counts(getattr(prepared, name))
            for name in ("train", "val", "test", "unlabeled")
        },
        "hidden_unlabeled": _class_counts_list(getattr(prepared.unlabeled, "true_labels", [])),
    }
    if external is not None:
        ext, phantom_s, preprocess_s = _prepare_phantom({**config, **external})
        out["phantom_s"] += phantom_s
        out["preprocess_s"] += preprocess_s
        out["external"] = {**external, "class_counts": _class_counts_list(external_set(ext).labels)}
    return out


def external_set(prepared: Any) -> Any:
    """Every labeled crop of the external phantom (its train, val and test splits together:
    no model ever trains on them)."""
    from torch.utils.data import ConcatDataset

    parts = [getattr(prepared, name) for name in ("train", "val", "test")]
    data = ConcatDataset([p for p in parts if len(p)])
    data.labels = [v for p in parts for v in p.labels.tolist()]  # read by dataset_labels
    return data


def _class_counts(dataset: Any) -> dict[int, int]:
    return _class_counts_list(dataset.labels.tolist())


def _class_counts_list(labels: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in labels:
        out[int(v)] = out.get(int(v), 0) + 1
    return dict(sorted(out.items()))


def run_ssl_stage(config: dict[str, Any], stage_root: str) -> dict[str, Any]:
    """Compute the SSL stage every SSL row loads (keyed by its settings and data)."""
    from pipeline.train.runtime import using_threads
    from pipeline.train.stages import pretrain
    from pipeline.trial import TrialConfig, prepare_data

    cfg = TrialConfig.from_dict(config)
    with using_threads(cfg.train.threads):
        prepared = prepare_data(cfg)
        t0 = time.perf_counter()
        result = pretrain(cfg.train, prepared.train_data(), cache_root=stage_root)
        seconds = time.perf_counter() - t0
    record = result.stages[-1]
    images = len(prepared.train) + len(prepared.unlabeled)
    steps = max(1, images // cfg.train.batch_size)
    return {
        "seconds": seconds,
        "hit": record.hit,
        "history": record.history,
        "images_per_s": 2 * steps * cfg.train.batch_size * cfg.train.ssl_epochs / seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "cuda_peak_mib": _cuda_peak_mib(),
    }


def run_row(
    config: dict[str, Any], stage_root: str, external: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Fit one configuration as a trial does, then evaluate it once on the test split
    (and on the external phantom's crops when ``external`` gives its keys)."""
    import torch

    from pipeline.train import evaluate, fit
    from pipeline.train.runtime import using_threads
    from pipeline.trial import TrialConfig, prepare_data

    cfg = TrialConfig.from_dict(config)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with using_threads(cfg.train.threads):
        prepared = prepare_data(cfg)
        t0 = time.perf_counter()
        result = fit(cfg.train, prepared.train_data(), cache_root=stage_root)
        t1 = time.perf_counter()
        device = "cuda" if result.runtime["device"].startswith("cuda") else "cpu"
        test = evaluate(
            result.model,
            prepared.test,
            threshold=result.threshold,
            threshold_metric=cfg.train.threshold_metric,
            device=device,
        )
        ext = None
        if external is not None:
            ext = evaluate(
                result.model,
                external_set(prepare_data(TrialConfig.from_dict({**config, **external}))),
                threshold=result.threshold,
                threshold_metric=cfg.train.threshold_metric,
                device=device,
            )
        t2 = time.perf_counter()
    train_s = sum(h.get("train/epoch_s", 0.0) for h in result.history)
    images = sum(
        h.get("train/images_per_s", 0.0) * h.get("train/epoch_s", 0.0) for h in result.history
    )
    labeled = sum(
        h.get("train/labeled_per_s", 0.0) * h.get("train/epoch_s", 0.0) for h in result.history
    )
    best = result.metrics
    class_f1, rule_f1 = _per_class(test, result)
    ext_class_f1, ext_rule_f1 = _per_class(ext, result)
    monitors = {
        k: best[k]
        for k in ("train/mask_rate", "train/pseudo_acc", "train/rampup", "train/loss_u")
        if k in best
    }
    return {
        "val": {k[4:]: v for k, v in best.items() if k.startswith("val/")},
        "test": dict(test.metrics),
        "test_class_f1": class_f1,
        "test_macro_f1_by_rule": rule_f1,
        "external": dict(ext.metrics) if ext is not None else None,
        "external_class_f1": ext_class_f1,
        "external_macro_f1_by_rule": ext_rule_f1,
        "monitors": monitors,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "fit_s": t1 - t0,
        "test_s": t2 - t1,
        "train_s": train_s,
        "images_per_s": images / train_s if train_s else float("nan"),
        "labeled_per_s": labeled / train_s if train_s else float("nan"),
        "peak_rss_mib": _peak_rss_mib(),
        "cuda_peak_mib": _cuda_peak_mib(),
        "ssl_stage_hit": bool(result.pretrained and result.pretrained.stages),
        "splits": {n: len(getattr(prepared, n)) for n in ("train", "val", "test", "unlabeled")},
        "runtime": result.runtime,
    }


def _per_class(ev: Any, result: Any) -> tuple[list[float] | None, dict[str, float] | None]:
    """7-class rows: F1 of each class under the row's type decision, and for reference
    the macro-F1 of the same probabilities under every rule (None, None otherwise)."""
    if ev is None or ev.probs.shape[1] <= 2:
        return None, None
    from pipeline.train.metrics import TYPE_DECISIONS, type_predictions

    def kinds(rule: str) -> Any:
        return type_predictions(
            ev.probs, threshold=result.threshold, decision=rule, prior=result.type_prior
        )

    n = ev.probs.shape[1]
    # the row's own rule (type_decision) was fixed before the run and is the one reported
    class_f1 = _class_f1(kinds(result.type_decision), ev.targets, n)
    return class_f1, {r: _nanmean(_class_f1(kinds(r), ev.targets, n)) for r in TYPE_DECISIONS}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


def _class_f1(pred: Any, target: Any, num_classes: int) -> list[float]:
    """F1 of each class (C,) from predicted and true class indices; NaN for a class
    that is neither present nor predicted."""
    out = []
    for c in range(num_classes):
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        out.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"))
    return out


# ----------------------------------------------------------------------------- table


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: list[float], digits: int = 3) -> str:
    mean, sd = _mean_sd(values)
    return _f(mean, digits) + (f" ± {sd:.{digits}f}" if sd is not None else "")


def aggregate(results: list[dict[str, Any]]) -> dict[tuple, dict[str, list[float]]]:
    """Rows of several seeds -> lists of their figures, keyed by (group, task, method, ssl, views)."""
    table: dict[tuple, dict[str, list[float]]] = {}
    for r in results:
        if "error" in r:
            continue
        row = r["row"]
        key = (row["group"], row["task"], row["method"], row["ssl"], row["views"])
        cell = table.setdefault(key, {})
        ext = r.get("external") or {}
        figures = {
            "val_auroc": r["val"].get("auroc"),
            "test_auroc": r["test"].get("auroc"),
            "val_macro_f1": r["val"].get("macro_f1"),
            "test_macro_f1": r["test"].get("macro_f1"),
            "test_sensitivity": r["test"].get("sensitivity"),
            "test_specificity": r["test"].get("specificity"),
            **{f"ext_{k}": ext.get(k) for k in ("auroc", "macro_f1", "sensitivity", "specificity")},
            "fit_s": r["fit_s"],
            "test_s": r["test_s"],
            "images_per_s": r["images_per_s"],
            "peak_rss_mib": r["peak_rss_mib"],
            "cuda_peak_mib": r["cuda_peak_mib"],
            "best_epoch": r["best_epoch"],
            "mask_rate": r["monitors"].get("train/mask_rate"),
            "pseudo_acc": r["monitors"].get("train/pseudo_acc"),
        }
        for split, prefix in (("test", "test"), ("external", "ext")):
            for c, v in enumerate(r.get(f"{split}_class_f1") or []):
                figures[f"{prefix}_f1_class{c}"] = v
            for rule, v in (r.get(f"{split}_macro_f1_by_rule") or {}).items():
                figures[f"{prefix}_macro_f1_{rule}"] = v
        for k, v in figures.items():
            cell.setdefault(k, []).append(float("nan") if v is None else float(v))
    return table


def class_f1_table(
    table: dict[tuple, dict[str, list[float]]], keys: list[tuple], prefix: str = "test"
) -> str:
    """F1 of each Schatzker class on the test split (``prefix`` "test") or the external
    phantom ("ext"), per 7-class row: what the macro-F1 is made of."""
    from pipeline.train.metrics import TYPE_DECISIONS
    from pipeline.train.tasks import SCHATZKER_NAMES

    head = [
        "method",
        "SSL",
        *SCHATZKER_NAMES,
        "**macro**",
        *(f"macro, {r}" for r in TYPE_DECISIONS),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for key in keys:
        if key not in table or f"{prefix}_f1_class0" not in table[key]:
            continue
        c = table[key]
        cells = [key[2], "simclr" if key[3] else "none"]
        cells += [_cell(c[f"{prefix}_f1_class{k}"], 2) for k in range(len(SCHATZKER_NAMES))]
        cells.append(f"**{_cell(c[f'{prefix}_macro_f1'])}**")
        cells += [_cell(c.get(f"{prefix}_macro_f1_{r}", []), 3) for r in TYPE_DECISIONS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def has_external(table: dict[tuple, dict[str, list[float]]]) -> bool:
    return any(not math.isnan(v) for cell in table.values() for v in cell.get("ext_auroc", []))


def markdown_table(
    table: dict[tuple, dict[str, list[float]]], keys: list[tuple], cuda: bool
) -> str:
    ext = has_external(table)
    bold = (lambda h: h) if ext else (lambda h: f"**{h}**")
    head = [
        "task",
        "method",
        "SSL",
        "views",
        "val AUROC",
        bold("test AUROC"),
        "val macro-F1",
        bold("test macro-F1"),
        "test sens / spec",
    ]
    if ext:
        head += ["**external AUROC**", "**external macro-F1**", "external sens / spec"]
    head += [
        "best epoch",
        "FixMatch mask / pseudo-acc",
        "fit s",
        "images/s",
        "peak RSS MiB",
    ]
    if cuda:
        head.append("CUDA peak MiB")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for key in keys:
        if key not in table:
            continue
        _, task, method, ssl, views = key
        c = table[key]
        mask = (
            f"{_cell(c['mask_rate'], 2)} / {_cell(c['pseudo_acc'], 2)}"
            if method == "fixmatch"
            else ""
        )
        cells = [
            task,
            method,
            "simclr" if ssl else "none",
            views,
            _cell(c["val_auroc"]),
            bold(_cell(c["test_auroc"])),
            _cell(c["val_macro_f1"]),
            bold(_cell(c["test_macro_f1"])),
            f"{_cell(c['test_sensitivity'], 2)} / {_cell(c['test_specificity'], 2)}",
        ]
        if ext:
            cells += [
                f"**{_cell(c['ext_auroc'])}**",
                f"**{_cell(c['ext_macro_f1'])}**",
                f"{_cell(c['ext_sensitivity'], 2)} / {_cell(c['ext_specificity'], 2)}",
            ]
        cells += [
            _cell(c["best_epoch"], 1),
            mask,
            _cell(c["fit_s"], 0),
            _cell(c["images_per_s"], 0),
            _cell(c["peak_rss_mib"], 0),
        ]
        if cuda:
            cells.append(_cell(c["cuda_peak_mib"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(table: dict[tuple, dict[str, list[float]]]) -> list[str]:
    """The issue's targets, on the external phantom when there is one (hundreds of crops
    per class where the test split has a few), else on the test split; validation beside
    them for reference."""
    out = []
    prefix, where = ("ext", "external") if has_external(table) else ("test", "test")

    def mean(key: tuple, figure: str) -> float:
        return _mean_sd(table[key][figure])[0] if key in table else float("nan")

    def verdict(what: str, key: tuple, figure: str, target: float) -> None:
        value, val = mean(key, f"{prefix}_{figure}"), mean(key, f"val_{figure}")
        if math.isnan(value):
            return
        status = "met" if value >= target else f"NOT met (short by {target - value:.4f})"
        out.append(f"- {what}: {where} {value:.3f} -> {status} (validation {val:.3f})")

    for ssl in (False, True):
        tag = "with SimCLR" if ssl else "without SSL"
        verdict(
            f"binary AUROC with FixMatch ({tag}) >= {TARGET_AUROC}",
            ("main", "binary", "fixmatch", ssl, "ap"),
            "auroc",
            TARGET_AUROC,
        )
        for task, figure in (("binary", "auroc"), ("schatzker", "macro_f1")):
            fm_t = ("main", task, "fixmatch", ssl, "ap")
            sup_t = ("main", task, "supervised", ssl, "ap")
            a, b = mean(fm_t, f"{prefix}_{figure}"), mean(sup_t, f"{prefix}_{figure}")
            if math.isnan(a) or math.isnan(b):
                continue
            label = figure.replace("_", "-")
            out.append(
                f"- FixMatch above supervised, {task} {label} ({tag}): {where} {a:.3f} vs "
                f"{b:.3f} -> "
                + ("met" if a > b else f"NOT met (short by {b - a:.4f})")
                + f" (validation {mean(fm_t, f'val_{figure}'):.3f} vs "
                f"{mean(sup_t, f'val_{figure}'):.3f})"
            )
    best = max(
        (
            (mean(("main", "schatzker", m, s, "ap"), f"{prefix}_macro_f1"), m, s)
            for m in METHODS
            for s in (False, True)
        ),
        key=lambda t: -1.0 if math.isnan(t[0]) else t[0],
    )
    if not math.isnan(best[0]):
        verdict(
            f"Schatzker macro-F1 >= {TARGET_MACRO_F1} (best row: {best[1]}"
            f"{' + simclr' if best[2] else ''})",
            ("main", "schatzker", best[1], best[2], "ap"),
            "macro_f1",
            TARGET_MACRO_F1,
        )
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipeline.train.config import PRECISIONS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--n",
        type=int,
        default=6000,
        help="phantom images (default 6000: 15%% labeled gives ~500 labeled training crops "
        "and a 106-crop test split)",
    )
    p.add_argument("--labeled-fraction", type=float, default=0.15)
    p.add_argument("--fracture-rate", type=float, default=0.25)
    p.add_argument("--phantom-size", type=int, default=256)
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument(
        "--external-n",
        type=int,
        default=1500,
        help="images of the external test phantom (another seed, every study labeled, no "
        "row trains on it; 0 = none): the targets are judged on its crops",
    )
    p.add_argument("--external-seed", type=int, default=None, help="default: phantom seed + 1000")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--steps-per-epoch", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--schatzker-epochs",
        type=int,
        default=None,
        help="epochs of the 7-class rows (default: --epochs)",
    )
    p.add_argument(
        "--schatzker-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"trial key of the 7-class rows only (defaults: {SCHATZKER_DEFAULTS})",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--mu", type=int, default=2, help="FixMatch unlabeled ratio (paper: 7)")
    p.add_argument("--ssl-method", default="simclr")
    p.add_argument("--ssl-epochs", type=int, default=5)
    p.add_argument("--ssl-lr", type=float, default=1e-3)
    p.add_argument("--views-method", default="fixmatch", help="method of the views pair")
    p.add_argument(
        "--views",
        action="store_true",
        help="add a pair that differs only in its input: the frontal view alone or the "
        "frontal and lateral views as two channels",
    )
    p.add_argument("--seeds", type=int, default=1, help="training seeds per row (mean ± sd)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default: bf16 on a CPU that computes it natively (AVX512-BF16, AMX), else auto "
        "(bf16 or fp16 mixed on a GPU, fp32 on other CPUs)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads per configuration")
    p.add_argument("--workers", type=int, default=2, help="configurations run at once")
    p.add_argument("--cache", type=Path, default=None, help="phantom and preprocessing cache")
    p.add_argument("--reuse-stages", action="store_true", help="keep the SSL stage between runs")
    p.add_argument("--only", nargs="*", default=[], help="rows whose name contains any of these")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra trial key"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budget, every row")
    p.add_argument("--json", type=Path, default=None, help="save the table as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.steps_per_epoch, args.ssl_epochs = 2, 4, 1
        args.schatzker_epochs = 2
        args.mu = min(args.mu, 2)
    if args.precision is None:
        from pipeline.train.runtime import native_cpu_bf16

        cpu = args.device == "cpu" or (args.device == "auto" and not _cuda_available())
        args.precision = "bf16" if cpu and native_cpu_bf16() else "auto"
    # channels-last with mixed precision (on the CPU's oneDNN as on a GPU), else the default
    args.channels_last = True if args.precision in ("bf16", "16") else None
    if args.cache is None:
        args.cache = Path(
            os.environ.get("RADSEARCH_CACHE") or Path(tempfile.gettempdir()) / "radsearch-bench"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    base = base_config(args)
    external = external_overrides(args)
    rows = plan_rows(args)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    print(
        f"preparing: phantom n={args.n} ({args.labeled_fraction:g} labeled, fracture rate "
        f"{args.fracture_rate:g}) at {args.phantom_size} px, crops {args.image_size} px, "
        f"cache {args.cache}",
        flush=True,
    )
    data = prepare(base, external)
    print(
        f"  phantom {data['phantom_s']:.0f} s, preprocessing {data['preprocess_s']:.0f} s; "
        f"splits {data['summary']['splits']}; classes {data['class_counts']}",
        flush=True,
    )
    stage_dir = tempfile.TemporaryDirectory(prefix="trial-bench-stages-")
    stage_root = str(args.cache / "bench-stages") if args.reuse_stages else stage_dir.name
    ctx_kwargs: dict[str, Any] = {}
    import multiprocessing

    ctx_kwargs["mp_context"] = multiprocessing.get_context("spawn")
    results: list[dict[str, Any]] = []
    ssl_info: dict[str, Any] | None = None
    t_train = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1, **ctx_kwargs) as pool:
        # the SSL stage first, beside the rows that do not need it; SSL rows after it
        ssl_rows = [r for r in rows if r.ssl]
        plain = sorted((r for r in rows if not r.ssl), key=_cost_order)
        ssl_future: Future | None = None
        if ssl_rows:
            ssl_future = pool.submit(run_ssl_stage, row_config(base, ssl_rows[0], args), stage_root)
        pending = [
            (r, pool.submit(run_row, row_config(base, r, args), stage_root, external))
            for r in plain
        ]
        if ssl_future is not None:
            ssl_info = _collect_stage(ssl_future)
            pending += [
                (r, pool.submit(run_row, row_config(base, r, args), stage_root, external))
                for r in sorted(ssl_rows, key=_cost_order)
            ]
        for row, future in pending:
            try:
                out = future.result()
            except Exception as e:  # report the row, keep the table
                out = {"error": f"{type(e).__name__}: {e}"}
            out["row"] = asdict(row)
            results.append(out)
            _progress(row, out)
    wall = time.perf_counter() - t_train
    stage_dir.cleanup()
    load_end = os.getloadavg()

    cuda = any(r.get("cuda_peak_mib") for r in results)
    table = aggregate(results)
    main_keys = [
        ("main", task, method, ssl, "ap")
        for task in TASKS
        for ssl in (False, True)
        for method in METHODS
    ]
    views_keys = [
        ("main", "binary", args.views_method, False, "ap"),
        ("views", "binary", args.views_method, False, "ap+lat"),
    ]
    splits = data["summary"]["splits"]
    print(
        f"\n### Trial methods on the phantom: {args.n} images, {args.labeled_fraction:.0%} of studies "
        f"labeled, fracture rate {args.fracture_rate:g}; crops {args.image_size} px; "
        f"{args.backbone}, {args.epochs} epochs x {args.steps_per_epoch} steps of {args.batch_size} "
        f"labeled (FixMatch mu {args.mu}, MixMatch K 2), lr {args.lr:g}; SSL: {args.ssl_method} "
        f"{args.ssl_epochs} epochs; {args.seeds} training seed(s) per row (mean ± sd), split seed 0; "
        f"{args.workers} configurations at a time, {args.threads} thread(s) each, device {args.device}, "
        f"precision {args.precision}\n"
    )
    print(
        f"Labeled crops: train {splits['train']}, validation {splits['val']}, held-out test "
        f"{splits['test']}; unlabeled pool {splits['unlabeled']}. Classes (Schatzker 0..6): "
        f"train {data['class_counts']['train']}, val {data['class_counts']['val']}, "
        f"test {data['class_counts']['test']}."
        + (
            f" External test phantom (seed {external['phantom_seed']}, {external['phantom_n']} "
            f"images, every study labeled, no row trains on it): classes "
            f"{data['external']['class_counts']}."
            if external
            else ""
        )
        + "\n"
    )
    print(markdown_table(table, main_keys, cuda))
    schatzker_keys = [k for k in main_keys if k[1] == "schatzker"]
    if any(k in table for k in schatzker_keys):
        print(
            f"\nSchatzker rows: {task_settings('schatzker', args)}; test F1 per class with "
            f"the rows' own type_decision (test crops per class {data['class_counts']['test']}); "
            "beside it, for reference only, macro-F1 of the same test probabilities under each "
            "rule (the reported figure is the configured rule's, fixed before the run):\n"
        )
        print(class_f1_table(table, schatzker_keys))
        if has_external(table):
            print(
                f"\nThe same on the external test phantom (crops per class "
                f"{data['external']['class_counts']}):\n"
            )
            print(class_f1_table(table, schatzker_keys, prefix="ext"))
    if ssl_info is not None:
        print(
            f"\nSSL stage ({args.ssl_method}, {args.ssl_epochs} epochs over "
            f"{splits['train'] + splits['unlabeled']} images, computed once and loaded by every SSL row): "
            f"{ssl_info.get('seconds', float('nan')):.0f} s, "
            f"{ssl_info.get('images_per_s', float('nan')):.0f} views/s, peak RSS "
            f"{ssl_info.get('peak_rss_mib', float('nan')):.0f} MiB, loss per epoch "
            f"{[round(v, 3) for v in ssl_info.get('history', [])]}"
            + (" (cache hit: not recomputed)" if ssl_info.get("hit") else "")
        )
    if args.views:
        print(
            f"\n### Single view vs two views ({args.views_method}, binary, no SSL, same budget; "
            "ap+lat: frontal + lateral crop as two channels, a zero channel where the study has "
            "no lateral view)\n"
        )
        print(markdown_table(table, views_keys, cuda))
    print(
        "\n### Targets ("
        + ("external test phantom" if has_external(table) else "test split")
        + "; validation beside it: it chose the decision threshold, and the epoch with "
        "select=best)\n"
    )
    for line in check_targets(table):
        print(line)
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(f"- FAILED {Row(**r['row']).name}: {r['error']}")
    total = time.perf_counter() - t_start
    print(
        f"\nWall time: {total / 60:.1f} min in all ({wall / 60:.1f} min of training and "
        f"evaluation); load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end "
        f"on {os.cpu_count()} CPUs."
    )
    if args.json:
        from pipeline.io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "data": data,
                "ssl_stage": ssl_info,
                "rows": results,
                "targets": check_targets(table),
                "wall_s": total,
                "train_wall_s": wall,
                "load_average": {"start": load_start, "end": load_end},
            },
        )
        print(f"saved {args.json}")
    return 1 if errors else 0


def _cost_order(row: Row) -> tuple[int, str]:
    """Most expensive first, so the two workers finish together."""
    return ({"fixmatch": 0, "mixmatch": 1, "supervised": 2}.get(row.method, 3), row.name)


def _collect_stage(future: Future) -> dict[str, Any]:
    try:
        info = future.result()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    print(
        f"  SSL stage: {info['seconds']:.0f} s ({'cache hit' if info['hit'] else 'computed'})",
        flush=True,
    )
    return info


def _progress(row: Row, out: dict[str, Any]) -> None:
    if "error" in out:
        print(f"  {row.name}: FAILED {out['error']}", flush=True)
        return
    print(
        f"  {row.name}: val AUROC {_f(out['val'].get('auroc'))} macro-F1 "
        f"{_f(out['val'].get('macro_f1'))} | test AUROC {_f(out['test'].get('auroc'))} "
        f"macro-F1 {_f(out['test'].get('macro_f1'))} | best epoch {out['best_epoch']} | "
        f"{out['fit_s']:.0f} s, {out['images_per_s']:.0f} img/s | "
        + " ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in out["monitors"].items()),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
