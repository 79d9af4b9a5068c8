"""The main job, end to end through the command line, with real trials on a tiny phantom.

``python -m search run`` (two real ``pipeline.run_trial`` trials, one of them FixMatch),
``resume`` (one more trial), ``report`` and ``promote`` (the real ``pipeline.run_final``:
the final model against the best trial's own model, both tested once, the GradCAM
gallery, the test metrics in ``promote.yaml``), each as a user types it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

SPACE = """
name: tiny
seed: 0
data:
  phantom_n: 60
  phantom_size: 128
  phantom_labeled_fraction: 0.7
objective:
  metric: val/auroc
parameters:
  backbone: test_resnet
  image_size: 32
  batch_size: 8
  localize: false
  val_fraction: 0.3
  test_fraction: 0.3
  mu: 1
  method: {type: choice, values: [fixmatch, supervised]}
  lr: {type: range, bounds: [1.0e-3, 1.0e-2], scale: log}
budget:
  trials: 2
  concurrency: 2
  epochs: 2
  steps_per_epoch: 2
  initial_trials: 2
  final_epochs: 2
tracking:
  mode: offline
"""


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A finished tiny search, resumed once: (working folder, environment, outputs)."""
    work = tmp_path_factory.mktemp("main-path")
    (work / "tiny.yaml").write_text(SPACE)
    env = {
        **os.environ,
        "RADSEARCH_CACHE": str(work / "cache"),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT),
    }
    run = _cli("run", "tiny.yaml", "--name", "t", "--no-progress", cwd=work, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    resume = _cli("resume", "results/t", "--trials", "3", "--no-progress", cwd=work, env=env)
    assert resume.returncode == 0, resume.stdout + resume.stderr
    return work, env, run.stdout, resume.stdout


def test_run_prepares_the_data_warns_and_finds_a_best_trial(experiment):
    work, _, out, _ = experiment
    assert "preparing the data" in out and "data ready" in out
    # a few dozen images: the validation split is far too small, and the run says so
    assert "the validation split is too small to rank configurations" in out
    assert "objective.folds" in out, "the warning names the fix"
    assert "best: trial" in out and "(standard error)" in out
    state = json.loads((work / "results" / "t" / "experiment.json").read_text())
    assert state["data"]["val"] > 0 and state["data"]["warning"]
    # the phantom's lateral views and other body parts are kept out by their pixels, counted
    assert "files out of scope by their pixels (not a knee" in out
    out_of_scope = state["data"]["out_of_scope"]
    assert out_of_scope["other knee view"] > 0 and out_of_scope["not a knee"] > 0
    history = [
        json.loads(line) for line in (work / "results/t/history.jsonl").read_text().splitlines()
    ]
    assert all("val/auroc_sem" in row for row in history if "val/auroc" in row)
    methods = {r["params"]["method"] for r in state["trials"].values()}
    assert "fixmatch" in methods, "a FixMatch trial ran"


def test_resume_runs_the_rest_of_the_budget(experiment):
    work, _, _, out = experiment
    state = json.loads((work / "results" / "t" / "experiment.json").read_text())
    assert len(state["trials"]) == 3
    assert {r["status"] for r in state["trials"].values()} <= {"completed", "early_stopped"}
    assert len(state["sessions"]) == 2 and "finished" in out


def test_every_completed_trial_leaves_its_model(experiment):
    work, _, _, _ = experiment
    state = json.loads((work / "results" / "t" / "experiment.json").read_text())
    done = [r for r in state["trials"].values() if r["status"] == "completed"]
    folder = work / "results" / "t"
    assert done and all((folder / r["checkpoint"] / "model.pt").is_file() for r in done)


def test_report_names_parameters_as_written(experiment):
    work, env, _, _ = experiment
    out = _cli("report", "results/t", cwd=work, env=env)
    assert out.returncode == 0, out.stderr
    page = (work / "results" / "t" / "report.html").read_text()
    assert "_OH_PARAM_" not in page


def test_promote_tests_both_models_draws_the_gallery_and_records_the_metrics(experiment):
    work, env, _, _ = experiment
    phantom = next(p for p in (work / "cache" / "phantom").glob("n60-*") if p.is_dir())
    out = _cli("promote", "results/t", "--external", str(phantom), cwd=work, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "could not be drawn" not in out.stdout + out.stderr
    assert "kept: the" in out.stdout and "test/auroc = " in out.stdout
    assert "external/auroc = " in out.stdout
    final = work / "results" / "t" / "final"
    for name in ("model.pt", "gallery.png", "gallery.html", "report.html", "metrics.json"):
        assert (final / name).is_file(), name
    record = yaml.safe_load((final / "promote.yaml").read_text())
    assert "test/auroc" in record["metrics"] and "test/sensitivity" in record["metrics"]
    assert record["kept"] in ("final", "trial") and record["decision"]["rule"]
    summary = json.loads((final / "metrics.json").read_text())
    assert set(summary["candidates"]) == {"final", "trial"}, "compared with the trial's model"
    for c in summary["candidates"].values():
        assert "test/auroc" in c["test"] and "val/auroc" in c["val"]
    assert summary["external"]["crops"] > 0
    assert summary["train"]["select"] == "last"
