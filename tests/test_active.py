"""Acquisition strategies, rank-unlabeled and the active-learning simulation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from explain_models import tiny_model

from pipeline.__main__ import main
from pipeline.active import (
    ACQUISITIONS,
    Pool,
    RoundResult,
    SimulationConfig,
    SimulationError,
    acquire,
    class_quotas,
    diverse_uncertain,
    gradient_embeddings,
    k_center_greedy,
    labels_to_reach,
    learning_curves,
    predictive_entropy,
    weighted_kmeans,
)
from pipeline.active import simulate as simulation
from pipeline.active.simulate import (
    auroc_of,
    ensemble_probs,
    member_seed,
    read_rows,
    simulate,
    write_rows,
)
from pipeline.deid import pseudonym, resolve_salt
from pipeline.explain import model_data
from pipeline.registry import UnknownNameError
from pipeline.synth import generate
from pipeline.train.tasks import get_task


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def pool_of(n: int = 30, classes: int = 2, dim: int = 4, seed: int = 1) -> Pool:
    g = np.random.default_rng(seed)
    logits = g.normal(size=(n, classes)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Pool(
        probs=probs,
        embeddings=g.normal(size=(n, dim)),
        labeled_embeddings=g.normal(size=(5, dim)),
    )


# ----------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("name", ACQUISITIONS.names())
def test_every_strategy_picks_distinct_pool_items(name):
    pool = pool_of()
    chosen = acquire(name, pool, 12, rng())
    assert len(chosen.indices) == 12 == len(set(chosen.indices.tolist()))
    assert chosen.indices.min() >= 0 and chosen.indices.max() < len(pool)
    assert len(chosen.scores) == 12 and np.isfinite(chosen.scores).all()
    everything = acquire(name, pool, 100, rng())  # k beyond the pool: all of it, once
    assert sorted(everything.indices.tolist()) == list(range(len(pool)))
    again = acquire(name, pool, 12, rng())  # same generator seed, same choice
    assert again.indices.tolist() == chosen.indices.tolist()


def test_entropy_and_margin_pick_the_most_uncertain():
    probs = np.array([[0.99, 0.01], [0.5, 0.5], [0.8, 0.2], [0.6, 0.4], [0.95, 0.05]])
    assert acquire("entropy", Pool(probs=probs), 2, rng()).indices.tolist() == [1, 3]
    three = np.array([[0.4, 0.35, 0.25], [0.7, 0.2, 0.1], [0.34, 0.33, 0.33], [0.5, 0.1, 0.4]])
    # margins: 0.05, 0.5, 0.01, 0.1; entropy ranks the flat row [2] first as well
    assert acquire("margin", Pool(probs=three), 3, rng()).indices.tolist() == [2, 0, 3]
    assert predictive_entropy(three).argmax() == 2
    assert predictive_entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(np.log(2))


def test_coreset_picks_far_points():
    near = np.random.default_rng(0).normal(scale=0.1, size=(20, 2))  # around the labeled point
    far = np.array([[10.0, 10.0], [-10.0, 10.0]])
    emb = np.concatenate([near, far])
    pool = Pool(probs=np.full((22, 2), 0.5), embeddings=emb, labeled_embeddings=np.zeros((1, 2)))
    chosen = acquire("coreset", pool, 2, rng())
    assert sorted(chosen.indices.tolist()) == [20, 21]
    assert chosen.scores[0] == pytest.approx(np.sqrt(200.0))
    # the second far point is chosen for its distance to the first, not to the labeled set
    both_same = np.concatenate([near, [[10.0, 10.0], [10.0, 10.1]]])
    picks = k_center_greedy(both_same, np.zeros((1, 2)), 2, rng()).indices.tolist()
    assert picks[0] in (20, 21) and picks[1] < 20


def test_badge_prefers_uncertain_and_diverse_points():
    confident = np.tile([[0.999, 0.001]], (10, 1))
    uncertain = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    probs = np.concatenate([confident, uncertain])
    # the uncertain points: two in one direction (duplicates), two in others
    feats = np.concatenate([np.ones((10, 3)), [[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]]])
    g = gradient_embeddings(probs, feats)
    assert g.shape == (14, 6)
    assert np.linalg.norm(g[:10], axis=1).max() < 0.01 < np.linalg.norm(g[10:], axis=1).min()
    uncertain_picked = {"badge": [], "random": []}
    for seed in range(100):
        for name in uncertain_picked:
            picks = acquire(name, Pool(probs=probs, embeddings=feats), 3, rng(seed)).indices
            uncertain_picked[name].append(int((picks >= 10).sum()))
            if name == "badge":
                assert picks[0] >= 10  # the largest gradient first
                assert not {10, 11} <= set(picks.tolist())  # never both duplicates
    # random: 3 * 4/14 = 0.86 uncertain points per batch on average
    assert np.mean(uncertain_picked["badge"]) > np.mean(uncertain_picked["random"]) + 0.4


def test_weighted_kmeans_centers_follow_the_weights():
    x = np.array([[0.0], [10.0]])
    centers, assign = weighted_kmeans(x, np.array([1.0, 9.0]), 1, rng())
    assert centers[0, 0] == pytest.approx(9.0) and assign.tolist() == [0, 0]
    blobs = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 8.0)])
    _, assign = weighted_kmeans(
        blobs + rng(1).normal(scale=0.1, size=(10, 2)), np.ones(10), 2, rng()
    )
    assert len(set(assign[:5].tolist())) == len(set(assign[5:].tolist())) == 1
    assert assign[0] != assign[5]


def test_entropy_kmeans_takes_one_per_uncertain_cluster():
    g = rng(3)
    # 10 uncertain crops in two look-alike groups (group A a little more uncertain than
    # group B) and 30 confident ones elsewhere
    group_a = g.normal(scale=0.05, size=(5, 2))
    group_b = np.array([6.0, 0.0]) + g.normal(scale=0.05, size=(5, 2))
    sure = np.array([0.0, 6.0]) + g.normal(scale=0.5, size=(30, 2))
    emb = np.concatenate([group_a, group_b, sure])
    p_fx = np.concatenate([np.full(5, 0.5), np.full(5, 0.4), np.full(30, 0.01)])
    probs = np.stack([1 - p_fx, p_fx], axis=1)
    pool = Pool(probs=probs, embeddings=emb)
    for seed in range(20):
        picks = acquire("entropy_kmeans", pool, 2, rng(seed))
        # one from each group (entropy alone takes two of group A), none confident
        assert sorted(int(i) // 5 for i in picks.indices) == [0, 1]
        assert picks.scores[0] >= picks.scores[1]
    assert set(acquire("entropy", pool, 2, rng()).indices.tolist()) < set(range(5))
    # identical embeddings (k-means cannot split them): still k distinct crops
    same = acquire("entropy_kmeans", Pool(probs=probs, embeddings=np.zeros((40, 2))), 6, rng())
    assert len(set(same.indices.tolist())) == 6
    # beta bounds the candidates: with beta = 1 the batch is the k most uncertain
    top = diverse_uncertain(predictive_entropy(probs), emb, 2, rng(), beta=1)
    assert set(top.indices.tolist()) < set(range(5))


def test_class_quotas_fill_the_scarcest_class_first():
    assert class_quotas(np.array([30, 10]), 40).tolist() == [10, 30]
    assert class_quotas(np.array([5, 30]), 10).tolist() == [10, 0]
    assert class_quotas(np.array([4, 0, 2]), 5).tolist() == [0, 4, 1]  # to 4, 4, 3
    assert class_quotas(np.zeros(2, np.int64), 3).tolist() == [2, 1]


def test_class_balanced_asks_for_the_scarce_class():
    g = rng(5)
    p_fx = np.concatenate([[0.9, 0.7], g.uniform(0.0, 0.45, size=38)])  # 2 predicted fractures
    probs = np.stack([1 - p_fx, p_fx], axis=1)
    # 30 unfractured and 10 fractured labeled: 10 new labels all go to the fractured side
    pool = Pool(probs=probs, labeled_classes=np.array([0] * 30 + [1] * 10))
    chosen = acquire("class_balanced", pool, 10, rng()).indices
    # the two predicted fractures, then the 8 highest P(fracture) of the rest
    assert set(chosen.tolist()) == set(np.argsort(-p_fx)[:10].tolist())
    # balanced labeled set: half the batch each side; the unfractured half is the most
    # uncertain of the predicted-unfractured crops
    half = acquire(
        "class_balanced", Pool(probs=probs, labeled_classes=np.array([0, 1])), 4, rng()
    ).indices.tolist()
    below = np.flatnonzero(p_fx < 0.5)
    assert {0, 1} <= set(half)
    assert set(half) - {0, 1} == set(below[np.argsort(-p_fx[below])[:2]].tolist())
    # random choice on the same pool takes far fewer likely fractures
    top = set(np.argsort(-p_fx)[:10].tolist())
    hits = [len(top & set(acquire("random", pool, 10, rng(s)).indices.tolist())) for s in range(50)]
    assert np.mean(hits) < 4


def test_strategy_errors_say_what_is_missing():
    with pytest.raises(UnknownNameError, match="did you mean 'entropy'"):
        acquire("entropie", Pool(probs=np.ones((3, 2)) / 2), 1, rng())
    with pytest.raises(ValueError, match="embeddings"):
        acquire("coreset", Pool(probs=np.ones((3, 2)) / 2), 1, rng())


# ----------------------------------------------------------------------------- curves


def _row(strategy, seed, rnd, labels, auroc):
    return RoundResult(
        strategy=strategy, seed=seed, round=rnd, labels=labels, positives=0,
        val_auroc=auroc, test_auroc=auroc, seconds=0.0,
    )  # fmt: skip


def test_learning_curves_average_seeds_and_labels_to_reach_interpolates():
    rows = [
        _row("random", 0, 0, 10, 0.6), _row("random", 1, 0, 10, 0.8),
        _row("random", 0, 1, 20, 0.8), _row("random", 1, 1, 20, 0.9),
    ]  # fmt: skip
    curves = learning_curves(rows)
    assert curves["random"] == [(10.0, pytest.approx(0.7)), (20.0, pytest.approx(0.85))]
    assert labels_to_reach([(10, 0.6), (20, 0.8)], 0.7) == pytest.approx(15.0)
    assert labels_to_reach([(10, 0.9), (20, 0.8)], 0.7) == 10.0
    assert labels_to_reach([(10, 0.6), (20, 0.65)], 0.7) is None


def test_rounds_csv_round_trips(tmp_path):

    rows = [_row("random", 0, 0, 10, 0.625), _row("entropy_kmeans", 1, 2, 90, 0.875)]
    assert read_rows(write_rows(rows, tmp_path / "rounds.csv")) == rows


# ----------------------------------------------------------------------------- rank-unlabeled


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, phantom_dir):
    return tiny_model(tmp_path_factory.getbasetemp() / "explain-models", phantom_dir, "binary")


def _run(argv):

    return main(argv)


@pytest.mark.parametrize("strategy", ["entropy", "badge", "entropy_kmeans", "class_balanced"])
def test_rank_unlabeled_returns_distinct_unlabeled_images(
    model_dir, phantom_dir, tmp_path, strategy
):

    out = tmp_path / "rank"
    code = _run(
        ["rank-unlabeled", str(model_dir), "--k", "5", "--strategy", strategy,
         "--out", str(out), "--threads", "1", "--data", str(phantom_dir)]
    )  # fmt: skip
    assert code == 0
    text = (out / "to_label.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 5 and [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert len({(r["image_key"], r["laterality"]) for r in rows}) == 5
    md = model_data(model_dir, data_dir=phantom_dir, threads=1)
    salt = resolve_salt()
    unlabeled = {
        (pseudonym("image", i.file, salt), i.laterality or "") for i in md.prepared.unlabeled.items
    }
    labeled = {
        pseudonym("image", i.file, salt) for s in (md.prepared.train, md.prepared.val)
        for i in s.items
    }  # fmt: skip
    assert {(r["image_key"], r["laterality"]) for r in rows} <= unlabeled
    assert not {r["image_key"] for r in rows} & labeled
    assert "file" not in rows[0] and "dicom/" not in text and ".dcm" not in text
    assert all(r["patient_key"].startswith("P-") for r in rows)
    assert all(r["predicted"] in ("no_fracture", "fracture") for r in rows)
    assert (out / "contact_sheet.png").stat().st_size > 1000


def test_rank_unlabeled_shows_paths_only_when_asked(model_dir, phantom_dir, tmp_path, capsys):
    out = tmp_path / "rank"
    argv = ["rank-unlabeled", str(model_dir), "--k", "3", "--out", str(out), "--show-paths"]
    argv += ["--data", str(phantom_dir)]
    assert _run(argv) == 0
    rows = list(csv.DictReader((out / "to_label.csv").open()))
    assert all(r["file"].startswith("dicom/") for r in rows)
    assert _run(["rank-unlabeled", str(model_dir), "--k", "3", "--strategy", "entropie"]) == 2
    assert "did you mean 'entropy'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- simulation


def test_simulation_records_each_round_for_each_strategy(tmp_path):

    data = tmp_path / "labeled"
    generate(data, n=48, seed=3, size=128, labeled_fraction=1.0)
    config = SimulationConfig(
        strategies=("random", "coreset"),
        ensemble=2,  # two models per round: coreset sees both models' features side by side
        initial=4,
        batch=3,
        rounds=2,
        trial={
            "data_dir": str(data),
            "cache_dir": str(tmp_path / "cache"),
            "backbone": "test_resnet",
            "image_size": 32,
            "localize": False,
            "epochs": 1,
            "steps_per_epoch": 1,
            "batch_size": 8,
            "threads": 1,
            "pretrained": "none",
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
    )
    seen = []
    rows = simulate(config, progress=seen.append)
    assert rows == seen
    assert [(r.strategy, r.round, r.labels) for r in rows] == [
        (s, k, 4 + 3 * k) for s in ("random", "coreset") for k in range(3)
    ]
    first = [r for r in rows if r.round == 0]
    assert (first[0].val_auroc, first[0].seconds) == (first[1].val_auroc, first[1].seconds)
    assert all(0.0 <= r.test_auroc <= 1.0 or np.isnan(r.test_auroc) for r in rows)
    assert all(r.positives >= 1 for r in rows)


def test_ensemble_probabilities_are_the_members_mean(monkeypatch):

    outputs = {"a": [[0.9, 0.1], [0.2, 0.8]], "b": [[0.5, 0.5], [0.6, 0.4]]}
    monkeypatch.setattr(
        simulation, "predict", lambda m, ds: (torch.tensor(outputs[m]), np.zeros(2))
    )
    assert ensemble_probs(["a", "b"], None) == pytest.approx(np.array([[0.7, 0.3], [0.4, 0.6]]))
    assert ensemble_probs(["a"], None) == pytest.approx(np.array(outputs["a"]))
    assert member_seed(3, 0) == 3 and len({member_seed(3, e) for e in range(4)}) == 4

    class Labeled:  # a dataset of four crops, one unlabeled (-1)
        labels = (0, 1, 0, -1)

    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.0, 1.0]])
    assert auroc_of(probs, Labeled(), get_task("binary")) == pytest.approx(1.0)
    flipped = probs[:, ::-1].copy()
    assert auroc_of(flipped, Labeled(), get_task("binary")) == pytest.approx(0.0)


def test_simulation_config_names_the_bad_setting():

    with pytest.raises(SimulationError, match="did you mean 'badge'"):
        SimulationConfig(strategies=("badg",))
    with pytest.raises(SimulationError, match="batch"):
        SimulationConfig(batch=0)
    with pytest.raises(SimulationError, match="ensemble"):
        SimulationConfig(ensemble=0)
