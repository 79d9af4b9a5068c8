"""The shared training loop: every method, loss and sampler learns; resume; reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.train import (
    LOSSES,
    METHODS,
    SAMPLERS,
    TrainConfig,
    TrainData,
    TrainError,
    evaluate,
    fit,
)
from pipeline.train.loop import CHECKPOINT_NAME
from pipeline.train.toy import toy_train_data

# a 96k-parameter timm test network on 32 px images, 1 thread: a fit takes about a second
BASE = {
    "backbone": "test_resnet",
    "pretrained": "none",
    "batch_size": 16,
    "lr": 3e-3,
    "epochs": 3,
    "mu": 2,
    "pseudo_label_threshold": 0.7,
    "ema_decay": 0.9,
    "rampup_epochs": 3,
    "threads": 1,
    "device": "cpu",  # bit-exact reproducibility is promised on the CPU
}
TIMING = ("train/epoch_s", "train/images_per_s", "train/labeled_per_s", "time/elapsed_s")


@pytest.fixture(scope="module")
def data() -> TrainData:
    return toy_train_data(
        n_labeled=48, n_unlabeled=96, n_val=48, size=32, fracture_rate=0.3, seed=0
    )


def _config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, **changes})


def _numbers(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _same(a, b):
    return all(
        row_a.keys() == row_b.keys()
        and all(
            (math.isnan(row_a[k]) and math.isnan(row_b[k])) or row_a[k] == row_b[k] for k in row_a
        )
        for row_a, row_b in zip(_numbers(a), _numbers(b))
    ) and len(a) == len(b)


def _assert_learns(result, rows):
    assert len(rows) == len(result.history) == BASE["epochs"]
    assert rows[-1]["train/loss_x"] < rows[0]["train/loss_x"]
    assert result.metrics["val/auroc"] >= 0.8  # chance is 0.5


COMMON_KEYS = {
    "epoch",
    "train/loss",
    "train/loss_x",
    "train/lr",
    "train/images_per_s",
    "val/loss",
    "val/auroc",
    "val/ap",
    "val/balanced_accuracy",
    "val/f1",
    "val/f2",
    "val/sensitivity",
    "val/specificity",
    "val/macro_f1",
    "val/ece",
    "val/threshold",
}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_learns_and_reports(method, data):
    rows = []
    result = fit(_config(method=method), data, report=rows.append)
    _assert_learns(result, rows)
    assert rows[-1].keys() >= COMMON_KEYS
    assert all(isinstance(v, float) for v in rows[-1].values())
    if method == "fixmatch":
        assert 0.0 <= rows[-1]["train/mask_rate"] <= 1.0
        assert not math.isnan(rows[-1]["train/pseudo_acc"])  # the toy pool knows its labels
    if method == "mixmatch":
        ramp = [r["train/rampup"] for r in rows]
        assert ramp == sorted(ramp) and 0.0 < ramp[0] < ramp[-1] <= 1.0


@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_learns(loss, data):
    rows = []
    _assert_learns(fit(_config(loss=loss), data, report=rows.append), rows)


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_learns(sampler, data):
    rows = []
    _assert_learns(fit(_config(sampler=sampler, sampler_ratio=0.5), data, report=rows.append), rows)


@pytest.mark.parametrize("task", ["schatzker", "hierarchical"])
def test_schatzker_tasks_report_kappa_and_learn(task):
    data = toy_train_data(
        n_labeled=96, n_unlabeled=16, n_val=64, size=32, fracture_rate=0.7, task=task, seed=1
    )
    rows = []
    result = fit(_config(task=task, epochs=4, lr=5e-3), data, report=rows.append)
    assert {"val/kappa", "val/macro_f1", "val/auroc_types"} <= rows[-1].keys()
    assert rows[-1]["train/loss_x"] < rows[0]["train/loss_x"]
    assert result.monitor == "val/macro_f1"
    assert result.metrics["val/auroc"] >= 0.8


def test_fixmatch_mask_rate_moves_with_threshold(data):
    rates = {}
    for t in (0.5, 0.8, 0.95):
        rows = []
        fit(_config(method="fixmatch", pseudo_label_threshold=t), data, report=rows.append)
        rates[t] = sum(r["train/mask_rate"] for r in rows) / len(rows)
    assert rates[0.5] == 1.0  # a binary maximum probability is always >= 0.5
    assert rates[0.5] > rates[0.8] > rates[0.95]


def test_same_seed_same_metrics_other_seed_differs(data):
    config = _config(method="fixmatch", epochs=2, dist_align=True, drop_rate=0.2)
    a, b = fit(config, data), fit(config, data)
    assert _same(a.history, b.history)
    c = fit(config.replace(seed=1), data)
    assert not _same(a.history, c.history)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["fixmatch", "mixmatch"])
def test_resume_from_checkpoint_gives_the_same_metrics(method, data, tmp_path):
    config = _config(method=method, dist_align=True, drop_rate=0.2, early_stop_patience=5)
    uninterrupted = fit(config, data, checkpoint_dir=tmp_path / "a")

    def crash_at_epoch_2(row):
        if row["epoch"] == 2:
            raise _Crash

    with pytest.raises(_Crash):
        fit(config, data, checkpoint_dir=tmp_path / "b", report=crash_at_epoch_2)
    assert (tmp_path / "b" / CHECKPOINT_NAME).exists()
    rows = []
    resumed = fit(config, data, checkpoint_dir=tmp_path / "b", report=rows.append)
    assert [r["epoch"] for r in rows] == [3.0]  # only the missing epoch ran
    assert _same(uninterrupted.history, resumed.history)
    assert uninterrupted.threshold == resumed.threshold
    for (k, v), w in zip(
        uninterrupted.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(v, w), k


def test_early_stopping_stops_and_stays_stopped(data, tmp_path):
    # "val/n" never improves after the first epoch: patience 2 -> three epochs
    config = _config(epochs=6, early_stop_patience=2)
    result = fit(config, data, monitor="val/n", checkpoint_dir=tmp_path)
    assert result.stop_reason == "early_stop" and len(result.history) == 3
    assert result.best_epoch == 1
    rows = []
    again = fit(config, data, monitor="val/n", checkpoint_dir=tmp_path, report=rows.append)
    assert rows == [] and len(again.history) == 3


def test_select_last_keeps_the_final_epoch_whatever_the_monitor(data):
    # "val/n" never improves after the first epoch: "best" keeps epoch 1, "last" epoch 3
    best = fit(_config(epochs=3), data, monitor="val/n")
    last = fit(_config(epochs=3, select="last"), data, monitor="val/n")
    assert best.best_epoch == 1 and last.best_epoch == 3
    assert last.metrics == last.history[-1]
    val = evaluate(last.model, data.val, threshold=last.threshold)
    assert val.metrics["auroc"] == pytest.approx(last.history[-1]["val/auroc"], abs=1e-6)
    assert _same(best.history, last.history)  # the same training, another choice of weights


def test_time_budget_stops_within_the_first_epoch(data):
    result = fit(_config(time_budget_s=1e-6, epochs=5), data)
    assert result.stop_reason == "time_budget"
    assert len(result.history) == 1 and result.history[0]["train/steps"] == 1.0
    assert "val/auroc" in result.metrics  # validation still ran


def test_returned_model_and_threshold_reproduce_validation(data):
    result = fit(_config(method="fixmatch"), data)
    val = evaluate(result.model, data.val, threshold=result.threshold)
    assert val.metrics["auroc"] == pytest.approx(result.metrics["val/auroc"], abs=1e-6)
    assert val.metrics["f2"] == pytest.approx(result.metrics["val/f2"], abs=1e-6)
    assert val.probs.shape == (len(data.val), 2)


def test_unknown_monitor_is_named_with_a_suggestion(data):
    with pytest.raises(TrainError, match="did you mean 'val/auroc'"):
        fit(_config(epochs=1), data, monitor="val/aurroc")


def test_fit_restores_the_thread_count(data):
    before = torch.get_num_threads()
    fit(_config(epochs=1, threads=1), data)
    assert torch.get_num_threads() == before


def test_semi_supervised_without_unlabeled_data_says_so(data):
    no_pool = TrainData(labeled=data.labeled, val=data.val)
    with pytest.raises(TrainError, match="needs unlabeled images"):
        fit(_config(method="fixmatch"), no_pool)


def test_unlabeled_items_in_the_labeled_set_are_refused(data):
    mixed = TrainData(labeled=data.unlabeled, val=data.val)
    with pytest.raises(TrainError, match="unlabeled items"):
        fit(_config(), mixed)


def test_fit_accepts_the_flat_dict_of_a_trial(data):
    result = fit({**BASE, "epochs": 1, "loss": "focal", "sampler": "ratio"}, data)
    assert result.config["loss"] == "focal" and len(result.history) == 1


def test_type_decision_travels_with_the_model_to_evaluate():
    """The 7-class rule chosen in the config scores validation during fit and is what
    ``evaluate`` applies to the returned model, with the sampler's class shares."""
    data = toy_train_data(
        n_labeled=64, n_unlabeled=16, n_val=48, size=32, fracture_rate=0.7, task="schatzker", seed=2
    )
    config = _config(
        task="schatzker", epochs=2, sampler="ratio", sampler_ratio=0.5, type_decision="balanced"
    )
    result = fit(config, data)
    assert result.type_decision == "balanced" and result.model.type_decision == "balanced"
    assert result.type_prior.shape == (7,)
    assert result.type_prior.sum().item() == pytest.approx(1.0)
    val = evaluate(result.model, data.val, threshold=result.threshold)
    assert val.metrics["macro_f1"] == pytest.approx(result.metrics["val/macro_f1"], abs=1e-6)
    argmax = evaluate(result.model, data.val, threshold=result.threshold, type_decision="argmax")
    assert argmax.metrics["auroc"] == val.metrics["auroc"]
