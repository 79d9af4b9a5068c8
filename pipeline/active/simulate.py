"""The active-learning simulation: labels hidden, revealed in rounds, one curve per strategy.

On a fully labeled data set (by default a phantom set generated with every image
labeled, large enough that the pool is several times the labeling budget, as when
most of a collection is unlabeled), the training split becomes the pool and its
labels are hidden. Each strategy starts from the same seeded set of ``initial``
labeled crops (at least one fractured and one not), trains, then repeatedly asks for
the ``batch`` crops it ranks highest, sees their labels, and retrains from scratch;
validation and test AUROC are recorded after every round. The initial round is
trained once per seed and shared, so every curve starts from the same model. Random
choice is a strategy like the others and trains exactly like them. Semi-supervised
methods (``method: fixmatch``) see the rest of the pool, unlabeled, in every round.

    rows = simulate(SimulationConfig(strategies=("random", "badge"), rounds=6, ensemble=2,
                                     trial={"backbone": "test_resnet", "epochs": 8,
                                            "steps_per_epoch": 25}))
    curves = learning_curves(rows)                         # strategy -> [(labels, auroc)]
    labels_to_reach(curves["badge"], curves["random"][-1][1])

A seed fixes the initial set, every strategy's draws and every training run, so a
run repeats to the digit on one machine. What it does not fix is the noise of a
single retraining: on the phantom one round's model can land 0.03-0.10 AUROC off its
neighbours, the size of the differences between strategies. Two settings shrink it:
a fixed number of optimisation steps per round (``epochs`` x ``steps_per_epoch`` in
``trial``; epochs over the labeled set leave the early rounds, with few labels,
undertrained) and ``ensemble``: E models per round, seeds apart
(:func:`member_seed`), whose averaged probabilities are both scored and used to
choose the next batch (Beluch et al., "The power of ensembles for active learning
in image classification", CVPR 2018); embedding strategies see the members'
features side by side. Compare strategies over several seeds all the same.

Training goes through :func:`pipeline.train.fit` with the data of
:func:`pipeline.trial.prepare_data` (the trial keys in ``trial``), so the simulation
measures the pipeline a search would run, on a small budget.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.active.strategies import ACQUISITIONS, Pool, acquire
from pipeline.data import CachedRadiographs
from pipeline.explain.inputs import infer
from pipeline.io import atomic_write_text
from pipeline.registry import UnknownNameError
from pipeline.synth.identities import hash_int
from pipeline.train import TrainData, fit, predict
from pipeline.train.batches import dataset_labels
from pipeline.train.metrics import classification_metrics
from pipeline.train.runtime import using_threads
from pipeline.trial import TrialConfig, cache_root, ensure_phantom, prepare_data

DEFAULT_STRATEGIES = ("random", "entropy", "margin", "badge", "coreset", "entropy_kmeans")


class SimulationError(ValueError):
    """A simulation that cannot run as configured; the message names the setting."""


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """What to simulate: strategies, the labeling schedule, seeds and the trial keys."""

    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    initial: int = 40  # labeled crops before the first round
    batch: int = 40  # crops revealed per round
    rounds: int = 8  # acquisition rounds after the initial training
    seeds: tuple[int, ...] = (0,)
    trial: Mapping[str, Any] = field(default_factory=dict)  # data, preprocessing, training keys
    phantom_n: int = 3000  # size of the fully labeled phantom (when trial has no data_dir)
    phantom_seed: int = 0
    phantom_fracture_rate: float = 0.25  # share of patients with a fracture in that phantom
    ensemble: int = 1  # models trained per round (seeds apart); their probabilities averaged

    def __post_init__(self) -> None:
        if not self.strategies:
            raise SimulationError("strategies: name at least one")
        for name in self.strategies:
            try:
                ACQUISITIONS.get(name)
            except UnknownNameError as e:
                raise SimulationError(f"strategies: {e}") from e
        for key in ("initial", "batch", "rounds", "phantom_n", "ensemble"):
            if int(getattr(self, key)) < (2 if key == "initial" else 1):
                raise SimulationError(f"{key} must be >= {2 if key == 'initial' else 1}")
        if not self.seeds:
            raise SimulationError("seeds: give at least one")
        if not 0.0 < float(self.phantom_fracture_rate) < 1.0:
            raise SimulationError("phantom_fracture_rate must be in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class RoundResult:
    """One point of one learning curve."""

    strategy: str
    seed: int
    round: int  # 0 = the initial labeled set
    labels: int  # labeled crops the model was trained on
    positives: int  # of which fractured
    val_auroc: float
    test_auroc: float
    seconds: float  # training and evaluation time of this round


# ----------------------------------------------------------------------------- data


def initial_set(labels: np.ndarray, size: int, seed: int) -> list[int]:
    """A seeded draw of ``size`` pool indices holding at least one fractured (label > 0)
    and one unfractured crop."""
    rng = random.Random(seed)
    order = list(range(len(labels)))
    rng.shuffle(order)
    first = [next(i for i in order if labels[i] > 0), next(i for i in order if labels[i] == 0)]
    rest = [i for i in order if i not in first]
    return first + rest[: max(0, size - 2)]


@dataclass
class _Data:
    pool: list[Any]  # items whose labels the oracle knows
    val: Any
    test: Any
    index: Any
    views: str
    missing_view: str
    root: Path

    def dataset(self, items: Sequence[Any]) -> Any:
        return CachedRadiographs(
            list(items), self.index, views=self.views, missing_view=self.missing_view
        )


def prepare_simulation(config: SimulationConfig) -> tuple[Any, _Data]:
    """The trial configuration and the pool, validation and test data of ``config``
    (generating and preprocessing the phantom on first use)."""
    trial = dict(config.trial)
    cfg = TrialConfig.from_dict(trial)
    root = cache_root(cfg.data)
    if not cfg.data.data_dir:
        path = ensure_phantom(
            config.phantom_n,
            config.phantom_seed,
            cfg.data.phantom_size,
            root,
            labeled_fraction=1.0,
            fracture_rate=config.phantom_fracture_rate,
            workers=cfg.data.preprocess_workers or cfg.train.threads or 1,
        )
        cfg = TrialConfig.from_dict({**trial, "data_dir": str(path)})
    prepared = prepare_data(cfg)
    pool = list(prepared.train.items)
    if len(pool) < config.initial + config.batch:
        raise SimulationError(
            f"the pool has {len(pool)} labeled training crops; initial + batch needs "
            f"{config.initial + config.batch} (use a larger phantom_n or data set)"
        )
    labels = np.asarray([i.label for i in pool])
    if not (labels > 0).any() or not (labels == 0).any():
        raise SimulationError("the pool needs fractured and unfractured crops")
    views, missing = cfg.data.views, cfg.data.missing_view
    return cfg, _Data(pool, prepared.val, prepared.test, prepared.index, views, missing, root)


# ----------------------------------------------------------------------------- the loop


def member_seed(seed: int, member: int) -> int:
    """The training seed of ensemble member ``member`` of a round trained with ``seed``
    (member 0 keeps ``seed``, so an ensemble of one is the single model)."""
    return seed + 1000 * member


def ensemble_probs(models: Sequence[Any], dataset: Any) -> np.ndarray:
    """Class probabilities (N, C) of ``dataset``, averaged over ``models``."""
    return np.mean([predict(m, dataset)[0].numpy() for m in models], axis=0)  # (N, C)


def auroc_of(probs: np.ndarray, dataset: Any, task: Any) -> float:
    """AUROC of class probabilities (N, C) against the labels of ``dataset`` (items
    labeled -1 left out); NaN when it is undefined."""
    y = task.encode_many(dataset_labels(dataset))  # (N,)
    keep = y >= 0
    metrics = classification_metrics(
        torch.as_tensor(probs[keep]), torch.as_tensor(y[keep]), task=task
    )
    return float(metrics.get("auroc", math.nan))


def _train(
    cfg: Any, data: _Data, labeled: list[int], seed: int, tag: str, ensemble: int = 1
) -> tuple[list[Any], dict]:
    """Train ``ensemble`` models on the labeled pool indices (seeds
    :func:`member_seed`); returns them and the round's metrics of their averaged
    probabilities."""
    chosen = set(labeled)
    hidden = [
        dataclasses.replace(item, label=-1) for i, item in enumerate(data.pool) if i not in chosen
    ]
    train = TrainData(
        labeled=data.dataset([data.pool[i] for i in labeled]),
        val=data.val,
        unlabeled=data.dataset(hidden) if hidden else None,
        identity=f"active/{tag}",
    )
    t0 = time.perf_counter()
    models = [
        fit(cfg.train.replace(seed=member_seed(seed, e)), train, cache_root=data.root).model
        for e in range(ensemble)
    ]
    task = models[0].task
    return models, {
        "val_auroc": auroc_of(ensemble_probs(models, data.val), data.val, task),
        "test_auroc": auroc_of(ensemble_probs(models, data.test), data.test, task),
        "seconds": time.perf_counter() - t0,
    }


def _next_batch(
    models: Sequence[Any],
    data: _Data,
    labeled: list[int],
    strategy: str,
    k: int,
    rng: np.random.Generator,
) -> list[int]:
    """Pool indices (k) that ``strategy`` picks among the unlabeled ones, from the
    models' averaged probabilities and their pooled features side by side (an
    ensemble's squared distances are the sum of its members')."""
    chosen = set(labeled)
    rest = [i for i in range(len(data.pool)) if i not in chosen]
    needs = ACQUISITIONS.get(strategy).needs_embeddings
    unlabeled = data.dataset([data.pool[i] for i in rest])
    outs = [infer(m, unlabeled, features=needs) for m in models]
    probs = np.mean([p for p, _ in outs], axis=0)  # (N, C)
    feats = known = None
    if needs:
        feats = np.concatenate([f for _, f in outs], axis=1)  # (N, E * F)
        mine = data.dataset([data.pool[i] for i in labeled])
        known = np.concatenate([infer(m, mine, features=True)[1] for m in models], axis=1)
    classes = models[0].task.encode_many([data.pool[i].label for i in labeled])  # (M,)
    pool = Pool(probs=probs, embeddings=feats, labeled_embeddings=known, labeled_classes=classes)
    picked = acquire(strategy, pool, k, rng)
    return [rest[i] for i in picked.indices.tolist()]


def simulate(
    config: SimulationConfig, *, progress: Callable[[RoundResult], None] | None = None
) -> list[RoundResult]:
    """Run every strategy for every seed (module docstring); ``progress`` sees each round."""
    cfg, data = prepare_simulation(config)
    labels = np.asarray([i.label for i in data.pool])
    rows: list[RoundResult] = []

    def record(strategy: str, seed: int, rnd: int, labeled: list[int], m: dict) -> None:
        row = RoundResult(
            strategy=strategy,
            seed=seed,
            round=rnd,
            labels=len(labeled),
            positives=int((labels[labeled] > 0).sum()),
            val_auroc=m["val_auroc"],
            test_auroc=m["test_auroc"],
            seconds=round(m["seconds"], 2),
        )
        rows.append(row)
        if progress is not None:
            progress(row)

    with using_threads(cfg.train.threads):
        for seed in config.seeds:
            start = initial_set(labels, config.initial, seed)
            models0, m0 = _train(cfg, data, start, seed, f"{seed}/initial", config.ensemble)
            for strategy in config.strategies:
                rng = np.random.default_rng([seed, hash_int(strategy)])
                labeled, models = list(start), models0
                record(strategy, seed, 0, labeled, m0)
                for rnd in range(1, config.rounds + 1):
                    if len(labeled) >= len(data.pool):
                        break
                    labeled += _next_batch(models, data, labeled, strategy, config.batch, rng)
                    models, m = _train(
                        cfg, data, labeled, seed, f"{seed}/{strategy}/{rnd}", config.ensemble
                    )
                    record(strategy, seed, rnd, labeled, m)
    return rows


# ----------------------------------------------------------------------------- summaries


def learning_curves(
    rows: Sequence[RoundResult], metric: str = "test_auroc"
) -> dict[str, list[tuple[float, float]]]:
    """strategy -> [(labels, metric averaged over seeds)] by round."""
    by: dict[str, dict[int, list[RoundResult]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r.strategy][r.round].append(r)
    return {
        s: [
            (
                float(np.mean([r.labels for r in rounds[k]])),
                float(np.nanmean([getattr(r, metric) for r in rounds[k]])),
            )
            for k in sorted(rounds)
        ]
        for s, rounds in by.items()
    }


def labels_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Labels at which a learning curve first reaches ``target``, interpolating linearly
    between rounds; None when it never does."""
    for i, (labels, value) in enumerate(curve):
        if value >= target:
            if i == 0:
                return float(labels)
            l0, v0 = curve[i - 1]
            return float(l0 + (labels - l0) * (target - v0) / (value - v0))
    return None


def write_rows(rows: Sequence[RoundResult], path: str | Path) -> Path:
    """The rounds as a CSV (one row per strategy, seed and round)."""
    buf = io.StringIO()
    names = [f.name for f in dataclasses.fields(RoundResult)]
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(dataclasses.asdict(r))
    return atomic_write_text(path, buf.getvalue())


def read_rows(path: str | Path) -> list[RoundResult]:
    """The rounds of a CSV that :func:`write_rows` wrote."""
    types = {f.name: f.type for f in dataclasses.fields(RoundResult)}
    cast = {"str": str, "int": int, "float": float}
    with open(path, newline="") as f:
        return [
            RoundResult(**{k: cast[types[k]](v) for k, v in row.items()})
            for row in csv.DictReader(f)
        ]
