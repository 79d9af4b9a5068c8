"""run_trial / run_final end to end on a tiny phantom, with no Ray and no W&B."""

from __future__ import annotations

import json
import math

import pytest

from pipeline import TrialConfigError, run_final, run_trial, trial_keys
from pipeline.trial import TrialConfig

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


@pytest.fixture
def tiny(phantom_dir, tmp_path):
    return {**TINY, "data_dir": str(phantom_dir), "cache_dir": str(tmp_path / "cache")}


def test_unknown_key_suggests_the_closest():
    with pytest.raises(TrialConfigError, match="did you mean 'pseudo_label_threshold'"):
        TrialConfig.from_dict({"pseudo_label_treshold": 0.9})


def test_bad_values_name_the_key():
    with pytest.raises(TrialConfigError, match="views"):
        TrialConfig.from_dict({"views": "ap+pa"})
    with pytest.raises(TrialConfigError, match="lr"):
        TrialConfig.from_dict({"lr": -1.0})
    with pytest.raises(TrialConfigError, match="fold"):
        TrialConfig.from_dict({"fold": 1})
    with pytest.raises(TrialConfigError, match="labeled_limit"):
        TrialConfig.from_dict({"labeled_limit": 1})


def test_trial_keys_cover_every_group():
    keys = trial_keys()
    for key in (
        "data_dir",
        "image_size",
        "clahe_clip",
        "method",
        "pseudo_label_threshold",
        "sampler_ratio",
    ):
        assert key in keys
    assert TrialConfig.from_dict({}).to_dict().keys() == keys.keys()


def test_run_trial_reports_each_epoch_and_returns_metrics(tiny):
    rows = []
    metrics = run_trial(tiny, rows.append)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all("val/auroc" in r and "train/loss" in r for r in rows)
    assert math.isfinite(rows[-1]["train/loss"])
    assert metrics["data/train_labeled"] > 0 and metrics["data/val"] > 0
    assert metrics["data/test_held_out"] > 0
    # the phantom's hidden labels reach the FixMatch monitor only through this attribute
    assert 0.0 <= metrics["val/auroc"] <= 1.0


def test_run_trial_resumes_from_its_checkpoint(tiny, tmp_path):
    config = {**tiny, "checkpoint_dir": str(tmp_path / "ckpt")}
    first = run_trial(config, None)
    assert (tmp_path / "ckpt" / "last.pt").exists()
    again = run_trial(config, None)  # finds the finished run: same metrics, no retraining
    assert again["val/auroc"] == first["val/auroc"]
    assert again["val/loss"] == first["val/loss"]


def test_run_final_writes_a_self_describing_model(tiny, tmp_path):
    from pipeline import load_model

    out = tmp_path / "final"
    summary = run_final(tiny, out, bootstrap=50)
    for name in ("model.pt", "config.yaml", "metrics.json", "predictions.csv", "report.html"):
        assert (out / name).exists(), name
    assert summary["threshold_source"].startswith("validation split for the kept model")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["test/threshold"] == summary["threshold"]
    assert saved["kept"] == "final" and "nothing to compare" in saved["decision"]["reason"]
    model, info = load_model(out)
    assert model.task.name == "binary"
    assert info["spec"]["backbone"] == "test_resnet"
    assert info["classes"] == ["no_fracture", "fracture"]
    # predictions carry pseudonymous keys, never the file path
    text = (out / "predictions.csv").read_text()
    assert "dicom/" not in text and "F-" in text


def test_exported_program_matches_the_state_dict(tiny, tmp_path):
    import torch

    from pipeline import load_model

    out = tmp_path / "final"
    run_final({**tiny, "epochs": 1}, out, bootstrap=0)
    model, _ = load_model(out)
    program = torch.export.load(str(out / "model.pt2")).module()
    x = torch.rand(3, 1, 32, 32)
    torch.testing.assert_close(program(x), model(x))


def test_final_model_keeps_its_type_decision(tiny, tmp_path):
    import torch

    from pipeline import load_model
    from pipeline.train import evaluate
    from pipeline.trial import prepare_data

    config = {**tiny, "task": "schatzker", "type_decision": "balanced", "sampler": "ratio"}
    out = tmp_path / "final"
    summary = run_final(config, out, bootstrap=20)
    model, info = load_model(out)
    assert info["type_decision"] == model.type_decision == "balanced"
    prior = model.type_prior
    assert prior is not None and prior.shape == (7,)
    assert float(prior.sum()) == pytest.approx(1.0, abs=1e-5)
    # the reloaded model scores the test split as the run did (same rule, same prior)
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    with torch.no_grad():
        again = evaluate(
            model,
            prepare_data(TrialConfig.from_dict(config)).test,
            threshold=summary["threshold"],
        )
    assert again.metrics["macro_f1"] == pytest.approx(saved["test/macro_f1"], abs=1e-6)
