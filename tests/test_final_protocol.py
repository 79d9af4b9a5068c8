"""The final run's protocol: nothing chosen on data a model trained on, a keep rule fixed
before any test score, both candidates tested once, the gallery always drawn."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline import load_model, run_final, run_trial
from pipeline.final.run import KEEP_MARGIN_SE, Candidate, choose
from pipeline.train import evaluate
from pipeline.train.loop import Evaluation
from pipeline.trial import TrialConfig, prepare_data

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


class _Model:
    def __init__(self, task):
        self.task = task
        self.type_decision, self.type_prior = "argmax", None


class _Prepared:
    def __init__(self, n):
        self.val = type("Val", (), {"groups": [str(i) for i in range(n)]})()


def _candidate(name, probs, y, task):
    ev = Evaluation({"auroc": 0.0}, probs, y, 0.5)
    return Candidate(name=name, model=_Model(task), threshold=0.5, val=ev, source=name)


def test_the_trial_model_is_kept_only_when_clearly_better_on_validation():
    from pipeline.train.tasks import get_task

    task = get_task("binary")
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(400, generator=g) < 0.3).long()
    sharp = torch.randn(400, generator=g) + 3.0 * y
    blurred = sharp + 2.0 * torch.randn(400, generator=g)

    def probs(logit):
        return torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], 1)

    final = _candidate("final", probs(blurred), y, task)
    trial = _candidate("trial", probs(sharp), y, task)
    clear = choose([final, trial], _Prepared(400), why_not=None)
    assert (
        clear["kept"] == "trial" and clear["difference"] > KEEP_MARGIN_SE * clear["difference_se"]
    )
    # as good give or take the noise (an independent perturbation that happens to score
    # a little higher on this sample)
    jitter = torch.randn(400, generator=torch.Generator().manual_seed(7))
    slightly = probs(blurred + 0.3 * jitter)
    close = choose([final, _candidate("trial", slightly, y, task)], _Prepared(400), why_not=None)
    assert close["kept"] == "final" and "not clearly better" in close["reason"]
    assert 0 < close["difference"] < KEEP_MARGIN_SE * close["difference_se"]
    better_final = [
        _candidate("final", probs(sharp), y, task),
        _candidate("trial", probs(blurred), y, task),
    ]
    worse = choose(better_final, _Prepared(400), why_not=None)
    assert worse["kept"] == "final" and "higher than the best trial's model" in worse["reason"]
    alone = choose([final], _Prepared(400), why_not="its checkpoint is gone")
    assert alone["kept"] == "final" and "its checkpoint is gone" in alone["reason"]
    assert "fixed before either model is tested" in clear["rule"]


def test_run_final_keeps_a_model_chosen_without_test_scores_and_tests_both(phantom_dir, tmp_path):
    config = {**TINY, "data_dir": str(phantom_dir), "cache_dir": str(tmp_path / "cache")}
    trial_dir = tmp_path / "trial"
    run_trial({**config, "checkpoint_dir": str(trial_dir)}, None)  # leaves model.pt
    fixmatch = {**config, "method": "fixmatch", "mu": 1}  # the EMA model: gradients for GradCAM
    out = tmp_path / "final"
    summary = run_final(fixmatch, out, reference=trial_dir, external=(phantom_dir, None))
    assert set(summary["candidates"]) == {"final", "trial"}
    assert summary["train"]["select"] == "last", "no epoch picked by a validation score"
    prepared = prepare_data(TrialConfig.from_dict(fixmatch))
    assert summary["train"]["train_crops"] == len(prepared.train), "trained on train only"
    kept = summary["kept"]
    model, info = load_model(out)
    # the kept model's threshold is the one chosen on validation for that very model
    assert info["threshold"] == summary["candidates"][kept]["threshold"]
    assert evaluate(model, prepared.val).threshold == info["threshold"]
    for c in summary["candidates"].values():
        assert "test/auroc" in c["test"] and "val/auroc" in c["val"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(summary["candidates"][kept]["test"], nan_ok=True)
    assert saved["external"]["crops"] > 0 and "external/auroc" in saved["external"]["metrics"]
    assert (out / "gallery.png").is_file()
    page = (out / "report.html").read_text()
    assert "not available" not in page and "Both candidates" in page and "External data" in page
