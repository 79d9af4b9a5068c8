"""Faults: the search keeps going, records why, tells Ax, and loses nothing.

- trials that raise, return NaN, diverge, run out of memory or lose their worker
  process (one search on Ray, a stand-in trainable that plays one fault per trial);
- a space that asks for more than the cluster has; a second driver on one folder;
- a full disk while writing results;
- the driver killed with SIGKILL (``benchmarks/robustness_faults.py``; the long run
  with ten kill points is ``slow``).

One Ray session is shared by the tests of this module that need one.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_trial import TINY  # the tiny trial of the trial tests

from search.cluster import fit_concurrency
from search.errors import SearchError
from search.experiment import ExperimentFolder
from search.runner import resume_search, run_search
from search.space import SpaceConfig
from search.statefiles import ExperimentDiskFull, ExperimentLocked
from search.worker import divergence, is_out_of_memory, load_trainable

ROOT = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "search_fault_fakes.py"
PLAIN_FAKES = Path(__file__).resolve().parent / "search_fakes.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

FAULTS = ("none", "raise", "nan", "nan_loss", "diverge", "oom_once", "oom_always", "worker_kill")


def _space(name: str, fault_dir: Path | None = None, **budget) -> SpaceConfig:
    parameters: dict = {
        "lr": {"type": "range", "bounds": [1e-4, 1e-1], "scale": "log"},
        "lambda_u": {"type": "range", "bounds": [0.0, 2.0]},
    }
    if fault_dir is not None:
        parameters.update(fault_dir=str(fault_dir), faults=",".join(FAULTS), batch_size=32)
    return SpaceConfig.from_dict(
        {
            "name": name,
            "seed": 3,
            "objective": {"metric": "val/auroc", "direction": "maximize"},
            "parameters": parameters,
            "budget": {
                "trials": 4,
                "concurrency": 2,
                "epochs": 3,
                "scheduler": "none",
                "max_failures": 1,
                "algorithm": "sobol",
                **budget,
            },
            "tracking": {"mode": "disabled"},
        },
        source=f"{name}.yaml",
        check_names=False,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ax_statuses(path: Path) -> dict[int, str]:
    from ax import Client

    df = Client.load_from_json_file(str(path / "ax_state.json")).summarize()
    return {int(i): str(s).upper() for i, s in zip(df["trial_index"], df["trial_status"])}


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs, no GPU) for the module; the search uses it as it is."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield dict(ray.cluster_resources())
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def faults_run(ray_cluster, tmp_path_factory):
    """A search of eight trials, each playing one fault (see search_fault_fakes.faulty)."""
    root = tmp_path_factory.mktemp("faults")
    fault_dir = root / "faults"
    fault_dir.mkdir()
    result = run_search(
        _space("faults", fault_dir, trials=len(FAULTS)),
        name="faults",
        results_dir=root,
        trainable=load_trainable(f"{FAKES}:faulty"),
        progress=False,
    )
    claims = {}
    for i, fault in enumerate(FAULTS):
        lr, lambda_u = json.loads((fault_dir / f"claim-{i}").read_text())
        claims[fault] = (lr, lambda_u)
    rows = {}
    for row in _rows(result.path):
        key = (float(row["lr"]), float(row["lambda_u"]))
        fault = next(
            f for f, p in claims.items() if all(math.isclose(a, b) for a, b in zip(p, key))
        )
        rows[fault] = row
    starts = [json.loads(x) for x in (fault_dir / "starts.jsonl").read_text().splitlines()]
    return result, rows, starts


# ------------------------------------------------------------------------------------------
# Trials that raise, return NaN, diverge
# ------------------------------------------------------------------------------------------
def test_divergence_rule():
    assert divergence({"epoch": 1, "train/loss": 0.7}, None) is None
    assert divergence({"epoch": 4, "train/loss": 6.9}, 0.7) is None
    reason = divergence({"epoch": 4, "train/loss": 7.1}, 0.7)
    assert reason is not None and "diverged" in reason and "epoch 4" in reason and "10" in reason
    assert "train/loss is nan" in divergence({"epoch": 2, "train/loss": float("nan")}, 0.7)
    assert "val/loss is inf" in divergence({"val/loss": float("inf"), "train/loss": 0.5}, 0.7)
    assert divergence({"epoch": 3, "train/loss": 3.0}, 0.7, factor=4.0) is not None
    assert divergence({"epoch": 3, "val/auroc": float("nan")}, 0.7) is None, "not a loss"


def test_out_of_memory_is_found_through_wrapped_causes():
    import torch

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        except Exception as e:
            raise RuntimeError("trial failed: OutOfMemoryError") from e
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shapes do not match"))


def test_failed_and_stopped_trials_say_why_and_the_search_goes_on(faults_run):
    result, rows, _ = faults_run
    assert result.status == "finished"
    assert len(rows) == len(FAULTS), "every trial of the budget ran despite the faults"
    assert rows["none"]["status"] == "completed" and rows["none"]["epochs"] == "3"

    assert rows["raise"]["status"] == "failed"
    assert "simulated crash in epoch 2" in rows["raise"]["error"]

    assert rows["nan"]["status"] == "failed"
    assert "no finite 'val/auroc'" in rows["nan"]["error"] and "nan" in rows["nan"]["error"]
    assert rows["nan"]["val/auroc"] == "", "a NaN result is never replaced by an earlier epoch's"

    assert rows["nan_loss"]["status"] == "early_stopped"
    assert "diverged: train/loss is nan at epoch 2" in rows["nan_loss"]["stop_reason"]
    assert rows["nan_loss"]["epochs"] == "1", "the last good epoch"

    assert rows["diverge"]["status"] == "early_stopped"
    assert (
        "diverged: train loss 70 > 10 x its first value 0.7 at epoch 3"
        in (rows["diverge"]["stop_reason"])
    )
    assert rows["diverge"]["epochs"] == "2"


def test_ax_is_told_failed_or_early_stopped_never_completed(faults_run):
    result, rows, _ = faults_run
    ax = _ax_statuses(result.path)
    expected = {
        "none": "COMPLETED",
        "oom_once": "COMPLETED",
        "worker_kill": "COMPLETED",
        "raise": "FAILED",
        "nan": "FAILED",
        "oom_always": "FAILED",
        "nan_loss": "EARLY_STOPPED",
        "diverge": "EARLY_STOPPED",
    }
    assert {f: ax[int(rows[f]["trial"])] for f in FAULTS} == expected
    from ax import Client

    client = Client.load_from_json_file(str(result.path / "ax_state.json"))
    data = client._experiment.lookup_data().df  # what Ax will model on
    for fault in ("nan", "nan_loss", "diverge"):
        values = data[data["trial_index"] == int(rows[fault]["trial"])]["mean"]
        assert all(math.isfinite(v) for v in values), fault


# ------------------------------------------------------------------------------------------
# Out of memory
# ------------------------------------------------------------------------------------------
def test_out_of_memory_is_retried_once_with_half_the_batch(faults_run):
    result, rows, starts = faults_run
    once, always = rows["oom_once"], rows["oom_always"]
    assert once["status"] == "completed" and once["fake/batch_size"] == "16"
    assert once["retries"] == "1" and once["reduced_batch_size"] == "16"
    assert "out of memory at batch_size 32; retried with batch_size 16" in once["retry_reason"]

    assert always["status"] == "failed" and always["reduced_batch_size"] == "16"
    assert "out of memory at batch_size 16" in always["error"]
    assert "retried with batch_size 16" in always["error"] and "OutOfMemoryError" in always["error"]
    tried = [s["batch_size"] for s in starts if s["fault"] == "oom_always"]
    assert tried == [32, 16], "one retry with half the batch, then failed (no Ray retry)"
    state = json.loads((result.path / "experiment.json").read_text())
    assert state["trials"][once["trial"]]["reduced_batch_size"] == 16


# ------------------------------------------------------------------------------------------
# A worker process dies mid-trial
# ------------------------------------------------------------------------------------------
def test_a_killed_worker_resumes_the_trial_from_its_checkpoint(faults_run):
    result, rows, starts = faults_run
    row = rows["worker_kill"]
    assert row["status"] == "completed" and row["epochs"] == "3"
    assert row["retries"] == "1" and "restarted from its last checkpoint" in row["retry_reason"]
    assert [s["start"] for s in starts if s["fault"] == "worker_kill"] == [0, 2], (
        "the second attempt continued after epoch 2, not from zero"
    )
    pids = {s["pid"] for s in starts if s["fault"] == "worker_kill"}
    assert len(pids) == 2, "a new worker process"
    epochs = [
        h["epoch"]
        for h in map(json.loads, (result.path / "history.jsonl").read_text().splitlines())
        if h["trial"] == int(row["trial"])
    ]
    assert epochs == [1, 2, 3], "each epoch reported once"
    from ax import Client

    client = Client.load_from_json_file(str(result.path / "ax_state.json"))
    assert len(client._experiment.trials) == len(FAULTS), "one Ax trial per trial"
    trial = client._experiment.trials[int(row["trial"])]
    assert trial.status.is_completed
    steps = client._experiment.lookup_data(trial_indices=[trial.index]).df["step"].tolist()
    assert 3.0 in steps and len(steps) == len(set(steps)), "completed once, at epoch 3"


# ------------------------------------------------------------------------------------------
# Resources
# ------------------------------------------------------------------------------------------
def test_resources_that_the_cluster_lacks_are_refused_naming_what_it_has():
    one = _space("r", gpus_per_trial=2)
    with pytest.raises(SearchError, match="asks 2 GPUs per trial; this cluster has 1 GPU, 8 CPUs"):
        fit_concurrency(one, {"CPU": 8.0, "GPU": 1.0})
    big = _space("r", cpus_per_trial=2)
    nodes = [{"CPU": 1.0}, {"CPU": 1.0}]
    with pytest.raises(SearchError, match="on one node; this cluster has 0 GPUs, 2 CPUs over 2"):
        fit_concurrency(big, {"CPU": 2.0}, nodes)
    assert fit_concurrency(big, {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}])[0] == 2


def test_a_space_asking_too_much_is_refused_before_any_trial(ray_cluster, tmp_path):
    trainable = load_trainable(f"{PLAIN_FAKES}:quadratic")
    cases = [
        ({"gpus_per_trial": 2}, "asks 2 GPUs per trial; this cluster has 0 GPUs, 2 CPUs"),
        ({"cpus_per_trial": 3}, "asks 3 CPUs per trial; this cluster has 0 GPUs, 2 CPUs"),
    ]
    for budget, message in cases:
        with pytest.raises(SearchError, match=message):
            run_search(
                _space("big", **budget),
                name="big",
                results_dir=tmp_path,
                trainable=trainable,
                progress=False,
            )
        assert not (tmp_path / "big").exists(), "nothing written: the name stays free"


# ------------------------------------------------------------------------------------------
# Two drivers on one experiment
# ------------------------------------------------------------------------------------------
def test_a_second_run_of_a_running_experiment_refuses_naming_the_holder(tmp_path):
    space = _space("twice")
    folder = ExperimentFolder.create(tmp_path / "twice", space)
    (tmp_path / "space.yaml").write_text(space.to_yaml())
    before = (folder.path / "experiment.json").read_bytes()
    with folder.locked(command="run spaces/twice.yaml --name twice"):
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "search",
                "run",
                str(tmp_path / "space.yaml"),
                "--name",
                "twice",
                "--results",
                str(tmp_path),
                "--trainable",
                f"{PLAIN_FAKES}:quadratic",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert second.returncode == 2, second.stderr
    err = second.stderr
    assert "in use by another driver" in err and f"pid {os.getpid()}" in err
    assert "python -m search run spaces/twice.yaml --name twice" in err
    assert "pick another --name" in err.lower() and "Traceback" not in err
    assert (folder.path / "experiment.json").read_bytes() == before, "the folder is untouched"


def test_a_run_that_starts_while_another_creates_the_folder_refuses(tmp_path):
    folder = ExperimentFolder(tmp_path / "race")
    with (
        folder.locked(command="run race.yaml"),
        pytest.raises(ExperimentLocked, match=r"in use by another driver \(pid \d+"),
    ):
        run_search(_space("race"), name="race", results_dir=tmp_path, progress=False)
    assert not (folder.path / "experiment.json").exists()


# ------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------
def _disk_full_after(monkeypatch, calls: int) -> None:
    """``os.fsync`` (called on every temporary file before its rename) fails with
    ENOSPC from the ``calls``-th call on."""
    real = os.fsync
    count = {"n": 0}

    def fsync(fd: int) -> None:
        count["n"] += 1
        if count["n"] >= calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_keeps_the_last_good_state_and_says_where(tmp_path, monkeypatch):
    from search.searcher import build_client

    space = _space("full")
    folder = ExperimentFolder.create(tmp_path / "full", space)
    client = build_client(space)
    folder.save_ax(client)
    folder.trial_queued(0, {"lr": 0.01, "lambda_u": 1.0})
    folder.write_tables()
    saved = {
        n: (folder.path / n).read_bytes()
        for n in ("experiment.json", "ax_state.json", "trials.csv")
    }
    _disk_full_after(monkeypatch, 1)
    writes = [
        ("experiment.json", lambda: folder.trial_note(0, node="n1")),
        ("trials.csv", folder.write_tables),
        ("ax_state.json", lambda: folder.save_ax(client)),
    ]
    for name, write in writes:
        with pytest.raises(ExperimentDiskFull) as err:
            write()
        message = str(err.value)
        assert message.startswith("the disk is full: could not write")
        assert name in message and "free there" in message
        assert "the last good state" in message and "python -m search resume" in message
        assert isinstance(err.value.__cause__, OSError)
    monkeypatch.undo()
    for name, data in saved.items():
        assert (folder.path / name).read_bytes() == data, f"{name} kept as it was"
    assert not list(folder.path.glob(".*.tmp")), "no temporary file left behind"


def test_a_search_on_a_full_disk_stops_clearly_and_resumes(ray_cluster, tmp_path, monkeypatch):
    trainable = load_trainable(f"{PLAIN_FAKES}:quadratic")
    _disk_full_after(monkeypatch, 12)  # a few trials in, every write fails
    with pytest.raises(SearchError) as err:
        run_search(
            _space("disk", epochs=2), name="disk", results_dir=tmp_path, trainable=trainable,
            progress=False,
        )  # fmt: skip
    monkeypatch.undo()
    message = str(err.value)
    assert message.startswith("the disk is full: could not write")
    assert str(tmp_path / "disk") in message or "disk/" in message
    folder = tmp_path / "disk"
    state = json.loads((folder / "experiment.json").read_text())  # still valid JSON
    _rows(folder)
    json.loads((folder / "ax_state.json").read_text())
    assert not list(folder.glob(".*.tmp"))
    done = [i for i, r in state["trials"].items() if r["status"] == "completed"]

    result = resume_search(folder, trainable=trainable, progress=False)  # space freed
    assert result.status == "finished"
    rows = _rows(folder)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert set(_ax_statuses(folder).values()) == {"COMPLETED"}
    for i in done:
        assert rows[int(i)]["session"] == "1", "what completed before the full disk stays"


# ------------------------------------------------------------------------------------------
# The driver killed with SIGKILL
# ------------------------------------------------------------------------------------------
def test_resume_after_a_kill_during_an_ax_state_write(tmp_path):
    from robustness_faults import kill_resume

    result = kill_resume(points=1, seed=1, workdir=tmp_path)
    assert result == {
        "kill_points": 1,
        "resumed": 1,
        "lost": 0,
        "duplicated": 0,
        "invalid_state_files": 0,
    }


@pytest.mark.slow
def test_resume_after_ten_kills_at_random_moments(tmp_path):
    from robustness_faults import kill_resume

    result = kill_resume(points=10, seed=0, workdir=tmp_path)
    assert result["kill_points"] >= 10 and result["resumed"] == result["kill_points"]
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["invalid_state_files"] == 0


# ------------------------------------------------------------------------------------------
# The real trial entry point keeps the causes the worker looks for
# ------------------------------------------------------------------------------------------


def test_run_trial_stops_at_a_diverged_report_and_keeps_oom_as_the_cause(
    phantom_dir, tmp_path, monkeypatch
):
    import torch

    from pipeline import TrialError, run_trial
    from search.worker import TrialDiverged
    from search.worker import find_in_chain as _find

    config = {**TINY, "data_dir": str(phantom_dir), "cache_dir": str(tmp_path / "cache")}
    rows = []

    def report(row: dict) -> None:
        rows.append(row)
        raise TrialDiverged(f"diverged: train/loss is nan at epoch {int(row['epoch'])}")

    with pytest.raises(TrialError) as err:
        run_trial(config, report)
    assert len(rows) == 1, "the trial stopped at the report that diverged"
    found = _find(err.value, TrialDiverged)
    assert found is not None and "epoch 1" in str(found)

    def fit(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr("pipeline.trial.run.fit", fit)
    with pytest.raises(TrialError) as err:
        run_trial(config, None)
    assert is_out_of_memory(err.value)


def test_a_trial_that_diverges_before_its_first_score_is_failed_in_ax(tmp_path):
    from search.keys import FINAL_KEY, INDEX_KEY, OUTCOME_KEY, REASON_KEY
    from search.searcher import AxSearcher, ax_trial_statuses, build_client

    space = _space("early")
    folder = ExperimentFolder.create(tmp_path / "early", space)
    searcher = AxSearcher(build_client(space), space, folder=folder, max_trials=2, concurrency=2)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_result("b", {"epoch": 1, "val/auroc": 0.7, "train/loss": 0.7})
    reason = "diverged: train/loss is nan at epoch {}"
    for trial_id, epoch in (("a", 1), ("b", 2)):
        searcher.on_trial_complete(
            trial_id,
            {FINAL_KEY: 1, OUTCOME_KEY: "early_stopped", REASON_KEY: reason.format(epoch)},
        )
    ax = ax_trial_statuses(folder.load_ax())
    rows = {r["trial"]: r for r in folder.rows()}
    a, b = first[INDEX_KEY], second[INDEX_KEY]
    assert ax[a] == "FAILED" and rows[a]["status"] == "failed"
    assert rows[a]["error"] == reason.format(1), "no score at all: failed, with the reason"
    assert ax[b] == "EARLY_STOPPED" and rows[b]["status"] == "early_stopped"
    assert rows[b]["stop_reason"] == reason.format(2) and rows[b]["val/auroc"] == 0.7
