"""End to end: a tiny search on Ray with a fake trainable (4 trials, 2 at a time).

One search runs once for the module (Ray's start costs seconds); the tests then check
what it left: every file, the failed trial, the W&B offline runs read back, the CLI
views, the report and a promote with a stand-in for ``pipeline.run_final``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.__main__ import main
from search.experiment import ExperimentFolder
from search.runner import run_search
from search.space import SpaceConfig
from search.tracking import offline_runs
from search.worker import load_trainable

FAKES = Path(__file__).resolve().parent / "search_fakes.py"

SPACE = {
    "name": "e2e",
    "seed": 1,
    "objective": {"metric": "val/auroc", "direction": "maximize"},
    "parameters": {
        "lr": {"type": "range", "bounds": [1e-4, 1e-1], "scale": "log"},
        "lambda_u": {"type": "range", "bounds": [0.0, 2.0]},
        "loss": ["ce", "focal"],
        "focal_gamma": {"type": "range", "bounds": [1.0, 3.0], "when": {"loss": "focal"}},
    },
    "budget": {
        "trials": 4,
        "concurrency": 2,
        "epochs": 2,
        "scheduler": "none",
        "max_failures": 0,
        "initial_trials": 4,
    },
    "tracking": {"mode": "offline", "project": "tests"},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """results/e2e after a finished search; the trainable fails for focal loss."""
    import ray

    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    root = tmp_path_factory.mktemp("results")
    mp.setenv("RADSEARCH_CACHE", str(root / "cache"))
    try:
        space = SpaceConfig.from_dict(SPACE, source="e2e.yaml")
        result = run_search(
            space,
            name="e2e",
            results_dir=root,
            trainable=load_trainable(f"{FAKES}:raising"),
            progress=False,
            num_cpus=2,
        )
    finally:
        ray.shutdown()
        mp.undo()
    assert not ray.is_initialized()
    return result


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_finishes_and_writes_every_file(finished):
    path = finished.path
    assert finished.status == "finished" and finished.concurrency == 2
    for name in (
        "space.yaml",
        "ax_state.json",
        "experiment.json",
        "trials.csv",
        "history.jsonl",
        "best.yaml",
    ):
        assert (path / name).is_file(), name
    ray_dir = ExperimentFolder(path).ray_dir  # Ray Tune's folder is local: results/.local/ID
    assert (ray_dir / "session-1").is_dir() and not (path / "ray").exists()
    trial_dirs = sorted((ray_dir / "session-1").glob("trial-*"))
    assert len(trial_dirs) == 4
    assert (path / "wandb").is_dir()
    assert not (path / ".lock.owner").exists(), "the lock is released"
    rows = _rows(path)
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    for row in rows:
        assert row["node"] and float(row["duration_s"]) > 0 and row["session"] == "1"
    space = ExperimentFolder.open(path).space()
    assert space == SpaceConfig.from_dict(SPACE, source="e2e.yaml")


def test_a_trial_that_raises_is_failed_and_the_search_goes_on(finished):
    rows = _rows(finished.path)
    failed = [r for r in rows if r["status"] == "failed"]
    completed = [r for r in rows if r["status"] == "completed"]
    assert failed and completed, "the seed gives both losses among the four trials"
    assert {r["loss"] for r in failed} == {"focal"} and {r["loss"] for r in completed} == {"ce"}
    for r in failed:
        assert "simulated crash in the focal-loss branch" in r["error"]
    for r in completed:
        assert r["epochs"] == "2" and 0.0 < float(r["val/auroc"]) <= 1.0
    assert len(rows) == 4, "the budget ran to the end despite failures"
    from ax import Client

    ax = Client.load_from_json_file(str(finished.path / "ax_state.json")).summarize()
    status = dict(zip(ax["trial_index"], ax["trial_status"]))
    for r in failed:
        assert str(status[int(r["trial"])]).upper() == "FAILED"
    for r in completed:
        assert str(status[int(r["trial"])]).upper() == "COMPLETED"


def test_best_is_the_best_completed_trial(finished, capsys):
    rows = [r for r in _rows(finished.path) if r["status"] == "completed"]
    top = max(rows, key=lambda r: float(r["val/auroc"]))
    best = yaml.safe_load((finished.path / "best.yaml").read_text())
    assert best["trial"] == int(top["trial"])
    assert best["config"]["lr"] == pytest.approx(float(top["lr"])) and best["config"]["epochs"] == 2
    assert main(["best", str(finished.path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["trial"] == best["trial"]


def test_status_command(finished, capsys):
    assert main(["status", str(finished.path)]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "1 session(s)" in out


def test_offline_wandb_runs_hold_the_metrics(finished):
    runs = offline_runs(finished.path)
    trials = {r.config["trial"]: r for r in runs if r.job_type == "trial"}
    assert sorted(trials) == [0, 1, 2, 3]
    history: dict[int, list[float]] = {}
    for line in (finished.path / "history.jsonl").read_text().splitlines():
        row = json.loads(line)
        history.setdefault(row["trial"], []).append(row["val/auroc"])
    for row in _rows(finished.path):
        run = trials[int(row["trial"])]
        assert run.group == "e2e" and run.project == "tests"
        assert run.config["lr"] == pytest.approx(float(row["lr"]))
        assert run.metric("val/auroc") == pytest.approx(history[int(row["trial"])])
        if row["status"] == "completed":
            assert run.exit_code == 0 and len(run.metric("val/auroc")) == 2
            assert run.summary["val/auroc"] == pytest.approx(float(row["val/auroc"]))
        else:
            assert run.exit_code == 1
    summary = [r for r in runs if r.job_type == "search-summary"]
    assert len(summary) == 1
    assert (
        summary[0].summary["best/trial"]
        == yaml.safe_load((finished.path / "best.yaml").read_text())["trial"]
    )


def test_report(finished):
    from search.report import write_report

    path = write_report(finished.path)
    text = path.read_text()
    for title in (
        "Best objective by trial",
        "Parallel coordinates",
        "Parameter importance",
        "Learning curves",
        "Trials",
    ):
        assert f"<h2>{title}</h2>" in text
    assert text.count("<tr>") == 1 + 4, "the trial table: a header and four trials"
    assert "model-free fallback" in text, "four Sobol trials: no fitted model for Ax's sensitivity"


def test_promote_bookkeeping_around_run_final(finished, monkeypatch):
    """What promote does around ``run_final`` (the budget, W&B, promote.yaml); the real
    ``run_final`` runs end to end in tests/test_main_path.py."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen: dict = {}

    def run_final(config, out_dir, *, report, reference=None, external=None):
        seen.update(config=config, out_dir=out_dir, reference=reference, external=external)
        for epoch in (1, 2):
            report({"epoch": epoch, "train/loss": 1.0 / epoch})
        (out_dir / "model.pt").write_bytes(b"weights")
        import matplotlib.pyplot as plt

        for name in ("roc.png", "gallery.png"):  # a curve, and the heat maps of patient images
            plt.imsave(out_dir / name, np.zeros((8, 8)))
        return {
            "metrics": {"test/auroc": 0.93, "test/sensitivity": 0.8},
            "ci95": {"test/auroc": (0.9, 0.96)},
            "kept": "final",
            "decision": {"reason": "nothing to compare it with"},
        }

    from search.promote import headline, promote

    summary = promote(finished.path, run_final=run_final)
    assert summary["metrics"]["test/auroc"] == 0.93
    assert "test/auroc = 0.930 (95% CI 0.900-0.960)" in headline(summary)
    best = yaml.safe_load((finished.path / "best.yaml").read_text())
    config = seen["config"]
    assert config["lr"] == best["config"]["lr"] and config["epochs"] == 4, (
        "twice the trial's epochs"
    )
    assert "checkpoint_dir" not in config and "threads" not in config
    assert seen["reference"] is None, "the fake trainable left no model of record"
    final = finished.path / "final"
    assert seen["out_dir"] == final and (final / "model.pt").is_file()
    record = yaml.safe_load((final / "promote.yaml").read_text())
    assert record["trial"] == best["trial"] and record["metrics"]["test/auroc"] == 0.93
    assert record["ci95"]["test/auroc"] == [0.9, 0.96] and record["kept"] == "final"
    promoted = [r for r in offline_runs(finished.path) if r.job_type == "promote"]
    assert len(promoted) == 1 and promoted[0].summary["test/auroc"] == 0.93
    assert promoted[0].metric("train/loss") == [1.0, 0.5]
    logged = {k.split("/_")[0].rsplit("/", 1)[0] for row in promoted[0].history for k in row}
    assert "final/roc" in logged, "plots go to W&B"  # logged as final/roc/_type, .../format, ...
    assert not any(k.startswith("final/gallery") for k in logged), (
        "patient images only when the space allows them"
    )


def test_a_second_run_of_the_same_name_refuses(finished, capsys):
    code = main(
        [
            "run",
            str(finished.path / "space.yaml"),
            "--name",
            "e2e",
            "--results",
            str(finished.path.parent),
            "--trainable",
            f"{FAKES}:quadratic",
        ]
    )
    assert code == 2
    assert "python -m search resume" in capsys.readouterr().err
