"""Kill the search driver with SIGKILL at many moments; ``resume`` must lose nothing.

    python benchmarks/robustness_faults.py [--points 10] [--seed 0] [--workdir DIR]

:func:`kill_resume` runs a small search (a stand-in trainable, no pipeline) as
``python -m search run`` in its own process group and kills it ``points`` times, then
lets ``python -m search resume`` finish the budget. The kills cycle through

- ``ax_write``: the driver kills itself between writing the Ax state's temporary file
  and renaming it into place (``RADSEARCH_TEST_KILL_AT=save_ax:N``, random N),
- ``delay``: SIGKILL from outside at a random moment after the session began,
- ``state_write`` / ``tables``: the driver kills itself just before writing
  ``experiment.json`` or ``trials.csv``;

after each kill the leftover Ray processes of the driver's group are ended, every
state file is checked (JSON, CSV, JSON lines, YAML), and the next ``resume`` starts
from what the folder holds (with ``--trials`` raised when the budget is already done,
so every kill lands on a running search). At the end it counts completed trials that
were lost or changed (``lost``) and completed trials that were run again or appear
twice (``duplicated``); both must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

KILL_MODES = ("ax_write", "delay", "state_write", "delay", "tables")
STATE_FILES = ("experiment.json", "ax_state.json", "trials.csv", "history.jsonl", "best.yaml")


# ------------------------------------------------------------------------------------------
# The stand-in trainable (loaded by the driver as FILE.py:trainable, sent to Ray by value)
# ------------------------------------------------------------------------------------------
def trainable(config: dict, report) -> dict:
    """Two short epochs of a smooth score; resumes from ``checkpoint_dir/last.pt`` and
    appends one line per start to ``$KILL_RESUME_LOG`` (which trials ran, and when)."""
    import math

    ckpt = Path(config["checkpoint_dir"]) / "last.pt"
    start = int(ckpt.read_text()) if ckpt.is_file() else 0
    log = os.environ.get("KILL_RESUME_LOG")
    if log:
        line = {"lr": config["lr"], "lambda_u": config["lambda_u"], "start": start}
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({**line, "time": time.time(), "pid": os.getpid()}) + "\n")
    score = (
        0.95 - 0.08 * (math.log10(config["lr"]) + 3.0) ** 2 - 0.1 * (config["lambda_u"] - 1) ** 2
    )
    epochs = int(config.get("epochs", 2))
    auroc = 0.5
    for epoch in range(start + 1, epochs + 1):
        time.sleep(float(os.environ.get("KILL_RESUME_SLEEP", 0.2)))
        auroc = 0.5 + (score - 0.5) * epoch / epochs
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(str(epoch))
        os.replace(tmp, ckpt)
        report({"epoch": epoch, "train/loss": 1.0 / epoch, "val/auroc": auroc})
    return {"val/auroc": auroc}


def _space_yaml(trials: int, seed: int) -> str:
    return f"""
name: killresume
seed: {seed}
objective: {{metric: val/auroc, direction: maximize}}
parameters:
  lr: {{type: range, bounds: [1.0e-4, 1.0e-1], scale: log}}
  lambda_u: {{type: range, bounds: [0.0, 2.0]}}
budget: {{trials: {trials}, concurrency: 2, epochs: 2, scheduler: none, max_failures: 0,
         algorithm: sobol}}
tracking: {{mode: disabled}}
"""


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------
def invalid_state_files(folder: Path) -> list[str]:
    """The state files of ``folder`` that do not parse (a missing file is not invalid)."""
    bad = []
    for name in STATE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        try:
            if name.endswith(".json"):
                json.loads(text)
            elif name.endswith(".jsonl"):
                for line in text.splitlines(keepends=True):
                    if line.endswith("\n"):  # a line cut short by a kill is repaired on resume
                        json.loads(line)
            elif name.endswith(".csv"):
                rows = list(csv.reader(io.StringIO(text)))
                if not rows or rows[0][:2] != ["trial", "status"]:
                    raise ValueError("no trial,status header")
                if any(len(r) != len(rows[0]) for r in rows[1:]):
                    raise ValueError("a row with the wrong number of fields")
            else:
                yaml.safe_load(text)
        except ValueError as e:
            bad.append(f"{name}: {e}")
    return bad


def _state(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _completed(folder: Path) -> dict[int, tuple[float, float, float]]:
    """Completed trials: index -> (lr, lambda_u, val/auroc)."""
    out = {}
    for key, rec in _state(folder).get("trials", {}).items():
        if rec.get("status") == "completed":
            p, m = rec.get("params", {}), rec.get("metrics", {})
            out[int(key)] = (float(p["lr"]), float(p["lambda_u"]), float(m.get("val/auroc", "nan")))
    return out


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) <= 1e-9 * max(1.0, abs(x)) for x, y in zip(a, b))


def _session_pids(sid: int) -> list[int]:
    """Processes of the session ``sid`` (Ray workers leave the process group, not it)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # after "pid (comm)": state ppid pgrp session; a zombie is already gone
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def _kill_group(pid: int) -> None:
    """End what a killed driver left: its Ray processes, all in the session it leads."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.time() + 15
    while time.time() < deadline:
        left = [p for p in _session_pids(pid) if p != os.getpid()]
        if not left:
            return
        for p in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------
def kill_resume(points: int = 10, seed: int = 0, workdir: Path | None = None) -> dict:
    """Kill the driver ``points`` times, resume after each, finish the budget; count.

    Returns ``kill_points`` (kills that landed on a running driver), ``resumed``
    (kills after which the next command took the folder over and went on), ``lost``
    (completed trials missing or changed at the end), ``duplicated`` (completed trials
    run again, or recorded twice) and ``invalid_state_files`` (state files that did not
    parse after a kill or at the end).
    """
    rng = random.Random(seed)
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="kill-resume-")
        workdir = Path(own_tmp.name)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"kill-{seed}"
    results = workdir / "results"
    folder = results / name
    log = workdir / "starts.jsonl"
    budget = max(4, points + 3)
    space = workdir / "space.yaml"
    space.write_text(_space_yaml(budget, seed))
    base_env = {
        **os.environ,
        "KILL_RESUME_LOG": str(log),
        "WANDB_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",
        "RADSEARCH_CACHE": str(workdir / "cache"),
    }
    base_env.pop("RADSEARCH_TEST_KILL_AT", None)
    spec = f"{Path(__file__).resolve()}:trainable"

    def command(extra: list[str]) -> list[str]:
        if (folder / "experiment.json").is_file():
            return [sys.executable, "-m", "search", "resume", str(folder), *extra]
        return [sys.executable, "-m", "search", "run", str(space), "--name", name,
                "--results", str(results), *extra]  # fmt: skip

    def launch(extra: list[str], env: dict[str, str], out: Path) -> subprocess.Popen:
        with open(out, "ab") as f:
            return subprocess.Popen(
                [*command(extra), "--trainable", spec, "--no-progress"],
                cwd=workdir,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    counts = dict(kill_points=0, resumed=0, lost=0, duplicated=0, invalid_state_files=0)
    seen: dict[int, tuple[float, float, float]] = {}  # completed at some snapshot
    seen_at: dict[int, float] = {}
    pending_resume = False
    attempts = 0
    try:
        while counts["kill_points"] < points and attempts < 4 * points + 4:
            attempts += 1
            mode = KILL_MODES[counts["kill_points"] % len(KILL_MODES)]
            extra: list[str] = []
            state = _state(folder)
            done = len(_completed(folder))
            if state and done >= int(
                yaml.safe_load((folder / "space.yaml").read_text())["budget"]["trials"]
            ):
                extra = ["--trials", str(done + 2)]  # keep the search running for the next kill
            sessions_before = len(state.get("sessions", []))
            env = dict(base_env)
            if mode == "ax_write":
                env["RADSEARCH_TEST_KILL_AT"] = f"save_ax:{rng.randint(2, 12)}"
            elif mode == "state_write":
                env["RADSEARCH_TEST_KILL_AT"] = f"save_state:{rng.randint(3, 25)}"
            elif mode == "tables":
                env["RADSEARCH_TEST_KILL_AT"] = f"write_tables:{rng.randint(2, 15)}"
            driver = launch(extra, env, workdir / "driver.log")
            try:
                if mode == "delay":
                    deadline = time.time() + 120
                    while time.time() < deadline and driver.poll() is None:
                        if len(_state(folder).get("sessions", [])) > sessions_before:
                            break
                        time.sleep(0.05)
                    time.sleep(rng.uniform(0.0, 3.0))
                    with contextlib.suppress(ProcessLookupError):
                        driver.send_signal(signal.SIGKILL)
                rc = driver.wait(timeout=300)
            finally:
                _kill_group(driver.pid)
            if len(_state(folder).get("sessions", [])) > sessions_before and pending_resume:
                counts["resumed"] += 1
            pending_resume = False
            if rc == -signal.SIGKILL:
                counts["kill_points"] += 1
                pending_resume = True
            elif rc != 0:
                raise RuntimeError(
                    f"the driver failed (exit {rc}):\n"
                    + (workdir / "driver.log").read_text(errors="replace")[-3000:]
                )
            counts["invalid_state_files"] += len(invalid_state_files(folder))
            now = time.time()
            for index, rec in _completed(folder).items():
                if index in seen and not _same(seen[index], rec):
                    counts["lost"] += 1
                seen.setdefault(index, rec)
                seen_at.setdefault(index, now)

        # finish the budget
        final_out = workdir / "final.log"
        driver = launch([], dict(base_env), final_out)
        try:
            rc = driver.wait(timeout=600)
        finally:
            _kill_group(driver.pid)
        if pending_resume and rc == 0:
            counts["resumed"] += 1
        if rc != 0:
            raise RuntimeError(
                f"the final resume failed (exit {rc}):\n"
                + final_out.read_text(errors="replace")[-3000:]
            )
        counts["invalid_state_files"] += len(invalid_state_files(folder))
        final = _completed(folder)
        budget = int(yaml.safe_load((folder / "space.yaml").read_text())["budget"]["trials"])
        statuses = [r.get("status") for r in _state(folder).get("trials", {}).values()]
        if len(statuses) != budget or any(s != "completed" for s in statuses):
            raise RuntimeError(f"the budget of {budget} trials did not finish: {statuses}")
        for index, rec in seen.items():
            if index not in final or not _same(final[index], rec):
                counts["lost"] += 1
        from ax import Client

        ax = Client.load_from_json_file(str(folder / "ax_state.json")).summarize()
        ax_status = {int(i): str(s).upper() for i, s in zip(ax["trial_index"], ax["trial_status"])}
        if sorted(ax_status) != sorted(final) or set(ax_status.values()) != {"COMPLETED"}:
            raise RuntimeError(f"Ax and the folder disagree: {ax_status} vs {sorted(final)}")
        # duplicates: the same parameters recorded twice, or a completed trial started again
        params = [(round(lr, 12), round(lam, 12)) for lr, lam, _ in final.values()]
        counts["duplicated"] += len(params) - len(set(params))
        starts = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        for index, (lr, lam, _) in seen.items():
            again = [
                s
                for s in starts
                if abs(s["lr"] - lr) < 1e-12
                and abs(s["lambda_u"] - lam) < 1e-12
                and s["time"] > seen_at[index]
            ]
            counts["duplicated"] += 1 if again else 0
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    return {k: int(v) for k, v in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10, help="kill points (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the experiment here (default: a temp)")
    args = parser.parse_args(argv)
    t0 = time.time()
    result = kill_resume(args.points, args.seed, args.workdir)
    print("| measure | value |")
    print("| --- | --- |")
    for key in ("kill_points", "resumed", "lost", "duplicated", "invalid_state_files"):
        print(f"| {key} | {result[key]} |")
    print(f"\n({time.time() - t0:.0f} s; lost, duplicated and invalid_state_files must be 0)")
    ok = result["lost"] == result["duplicated"] == result["invalid_state_files"] == 0
    return 0 if ok and result["resumed"] == result["kill_points"] else 1


if __name__ == "__main__":
    sys.exit(main())
