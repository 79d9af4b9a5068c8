"""Every validation score carries its noise: bootstrap standard errors, cross-validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline import run_trial
from pipeline.train.bootstrap import bootstrap_ci, bootstrap_sem, paired_difference
from pipeline.train.metrics import classification_metrics
from pipeline.train.tasks import get_task
from pipeline.trial import fold_mean

TINY = {
    "backbone": "test_resnet",
    "image_size": 32,
    "epochs": 2,
    "batch_size": 8,
    "threads": 1,
    "localize": False,
    "val_fraction": 0.25,
    "test_fraction": 0.25,
}


def _scores(n: int, seed: int, separation: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.25).long()
    logit = torch.randn(n, generator=g) + separation * y
    probs = torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], 1)
    return probs, y


def test_bootstrap_standard_error_shrinks_as_one_over_root_n():
    task = get_task("binary")
    probs, y = _scores(200, 0)
    small = bootstrap_sem(probs, y, None, task=task, threshold=0.5)["auroc"]
    # the same sample 16 times over (16 x the patients): a quarter of the error
    large = bootstrap_sem(probs.repeat(16, 1), y.repeat(16), None, task=task, threshold=0.5)
    assert 3.0 < small / large["auroc"] < 5.3
    # patients resampled whole: four crops per patient, identical scores -> a wider spread
    probs, y = _scores(100, 1)
    four = (probs.repeat_interleave(4, 0), y.repeat_interleave(4))
    groups = [str(i // 4) for i in range(400)]
    by_patient = bootstrap_sem(*four, groups, task=task, threshold=0.5)["auroc"]
    by_crop = bootstrap_sem(*four, None, task=task, threshold=0.5)["auroc"]
    assert by_patient > 1.5 * by_crop


def test_bootstrap_intervals_cover_the_point_estimate():
    task = get_task("schatzker")
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(300, 7, generator=g) * 2, 1)
    y = torch.randint(0, 7, (300,), generator=g)
    point = classification_metrics(probs, y, task=task, threshold=0.5)
    ci = bootstrap_ci(probs, y, None, task=task, threshold=0.5, n=300)
    for key in ("auroc", "macro_f1", "kappa", "sensitivity"):
        lo, hi = ci[key]
        assert lo <= point[key] <= hi, key


def test_paired_difference_of_a_model_with_itself_is_zero_and_of_a_worse_one_is_negative():
    task = get_task("binary")
    good, y = _scores(300, 4, separation=3.0)
    noise = torch.randn(300, 2, generator=torch.Generator().manual_seed(5))
    noisy = torch.softmax(torch.log(good) + noise, 1)
    a = {"probs": good, "threshold": 0.5}
    assert paired_difference(a, a, y, None, task=task, metric="auroc") == (0.0, 0.0)
    diff, se = paired_difference(
        a, {"probs": noisy, "threshold": 0.5}, y, None, task=task, metric="auroc"
    )
    assert diff < 0 and 0 < se < abs(diff)


def test_fold_mean_takes_the_larger_of_spread_and_pooled_error():
    rows = [
        {"epoch": 3.0, "val/auroc": v, "val/auroc_sem": 0.01, "train/loss": 1.0}
        for v in (0.80, 0.90)
    ]
    out = fold_mean(rows)
    assert out["val/auroc"] == pytest.approx(0.85) and out["epoch"] == 3.0
    spread = np.std([0.80, 0.90], ddof=1) / math.sqrt(2)
    assert out["val/auroc_sem"] == pytest.approx(spread)  # 0.05 > pooled 0.007
    calm = fold_mean([{**r, "val/auroc": 0.85, "val/auroc_sem": 0.04} for r in rows])
    assert calm["val/auroc_sem"] == pytest.approx(math.sqrt(2 * 0.04**2) / 2)
    assert "train/loss_sem" not in out, "standard errors are for validation scores"


def test_every_epoch_reports_standard_errors(phantom_dir, tmp_path):
    rows: list[dict] = []
    run_trial({**TINY, "data_dir": str(phantom_dir), "cache_dir": str(tmp_path / "c")}, rows.append)
    for row in rows:
        assert row["val/auroc_sem"] >= 0 and math.isfinite(row["val/macro_f1_sem"])


def test_a_cross_validated_trial_trains_every_fold_side_by_side_and_resumes(phantom_dir, tmp_path):
    config = {
        **TINY,
        "folds": 3,
        "data_dir": str(phantom_dir),
        "cache_dir": str(tmp_path / "c"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    rows: list[dict] = []
    metrics = run_trial(config, rows.append)
    assert [r["epoch"] for r in rows] == [1.0, 2.0], "one report per epoch, over all folds"
    assert all("val/auroc_sem" in r for r in rows)
    assert metrics["cv/folds"] == 3
    folds = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.is_dir())
    assert folds == ["fold-0", "fold-1", "fold-2"]
    assert (tmp_path / "ckpt" / "model.pt").is_file(), "fold 0's model is the trial's"
    again = run_trial(config, None)  # every fold finished: the same result, no training
    assert again["val/auroc"] == metrics["val/auroc"]
