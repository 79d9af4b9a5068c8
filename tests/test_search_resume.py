"""`resume` after the driver is killed with SIGKILL mid-run.

The driver runs as ``python -m search run`` in its own process group; once some trials
have completed it gets SIGKILL (the leftover Ray processes of its group are then ended
too), and ``python -m search resume`` must finish the budget without losing or
repeating a completed trial, continuing from the same Ax state.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ax import Client

FAKES = Path(__file__).resolve().parent / "search_fakes.py"

SPACE = """
name: killme
seed: 2
objective: {metric: val/auroc, direction: maximize}
parameters:
  lr: {type: range, bounds: [1.0e-4, 1.0e-1], scale: log}
  lambda_u: {type: range, bounds: [0.0, 2.0]}
budget: {trials: 8, concurrency: 2, epochs: 3, scheduler: none, max_failures: 0, initial_trials: 4}
tracking: {mode: disabled}
"""


def _rows(folder: Path) -> list[dict[str, str]]:
    path = folder / "trials.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _ax(folder: Path) -> dict[int, tuple[str, dict]]:
    client = Client.load_from_json_file(str(folder / "ax_state.json"))
    df = client.summarize()
    out = {}
    for _, row in df.iterrows():
        out[int(row["trial_index"])] = (
            str(row["trial_status"]).upper(),
            {"lr": float(row["lr"]), "lambda_u": float(row["lambda_u"])},
        )
    return out


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / "experiment.json").read_text())
    except (OSError, ValueError):
        return {}


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def test_resume_after_sigkill_loses_and_repeats_no_completed_trial(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    folder = tmp_path / "results" / "k"
    log = tmp_path / "starts.jsonl"
    env = {
        **os.environ,
        "SEARCH_FAKE_LOG": str(log),
        "SEARCH_FAKE_SLEEP": "0.5",
        "WANDB_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",
    }
    trainable = f"{FAKES}:logged_quadratic"
    driver_out = open(tmp_path / "driver.log", "wb")  # noqa: SIM115 - closed in the finally below
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search",
            "run",
            str(space),
            "--name",
            "k",
            "--results",
            str(tmp_path / "results"),
            "--trainable",
            trainable,
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        stdout=driver_out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while True:  # until the event; the test's timeout ends a run that never gets there
            state = _state(folder)
            statuses = [rec["status"] for rec in state.get("trials", {}).values()]
            running = [
                rec
                for rec in state.get("trials", {}).values()
                if rec["status"] == "running" and rec.get("checkpoint")
            ]
            if statuses.count("completed") >= 2 and running:
                break
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        time.sleep(0.5)
        _kill_group(driver.pid)  # the Ray processes the killed driver left behind
        driver_out.close()

    before = {int(r["trial"]): r for r in _rows(folder)}
    completed_before = {i: r for i, r in before.items() if r["status"] == "completed"}
    assert completed_before
    ax_before = _ax(folder)
    state_before = json.loads((folder / "experiment.json").read_text())
    checkpointed = {
        int(i)
        for i, rec in state_before["trials"].items()
        if rec["status"] == "running" and rec.get("checkpoint")
    }
    assert checkpointed, "a trial was running with a checkpoint when the driver died"

    status = subprocess.run(
        [sys.executable, "-m", "search", "status", str(folder)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0
    assert "crashed" in status.stdout and "python -m search resume" in status.stdout

    resumed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search",
            "resume",
            str(folder),
            "--trainable",
            trainable,
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = resumed.communicate(timeout=300)
    finally:
        _kill_group(resumed.pid)
    text = out.decode(errors="replace")
    assert resumed.returncode == 0, text[-4000:]

    after = {int(r["trial"]): r for r in _rows(folder)}
    assert sorted(after) == list(range(8)), "the budget of eight trials is complete"
    assert all(r["status"] == "completed" for r in after.values())
    for i, r in completed_before.items():  # nothing completed was lost or changed
        for key in ("lr", "lambda_u", "val/auroc", "epochs", "session", "attempts"):
            assert after[i][key] == r[key], (i, key)
    ax_after = _ax(folder)
    assert sorted(ax_after) == list(range(8)) and {s for s, _ in ax_after.values()} == {"COMPLETED"}
    for i, (_status, params) in ax_before.items():  # the same Ax trials, with the same parameters
        assert ax_after[i][1] == params

    starts = [json.loads(line) for line in log.read_text().splitlines()]
    for i, r in completed_before.items():  # nothing completed was run again
        n = sum(
            1
            for s in starts
            if abs(s["lr"] - float(r["lr"])) < 1e-12
            and abs(s["lambda_u"] - float(r["lambda_u"])) < 1e-12
        )
        assert n == 1, (i, n)
    for i in checkpointed:  # an interrupted trial continued from its last checkpoint
        r = after[i]
        restarts = [s["start"] for s in starts if abs(s["lr"] - float(r["lr"])) < 1e-12]
        assert len(restarts) == 2 and restarts[1] >= 1, (i, restarts)
        assert after[i]["session"] == "2" and after[i]["attempts"] == "2"
    state = json.loads((folder / "experiment.json").read_text())
    assert [s["status"] for s in state["sessions"]] == ["running", "finished"]
