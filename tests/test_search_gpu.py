"""Trials on GPUs: the GPU-sized space, fractional GPUs refused without a GPU, shared with one.

On a machine without a GPU, a search asking a fraction of a GPU per trial is refused
before anything is written, naming what the cluster has and the fix. On a GPU machine
(``-m gpu``), two trials share one GPU (0.5 each) through the real search and report
their peak GPU memory every epoch. benchmarks/gpu.py says why it measures nothing
without a GPU, and its ``--cpu-smoke`` run measures everything on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from robustness.phi import TINY_PARAMETERS

from search.__main__ import main
from search.cluster import fit_concurrency
from search.runner import open_experiment, run_search
from search.space import SpaceConfig, load_space

ROOT = Path(__file__).resolve().parents[1]
GPU_SPACE = ROOT / "spaces" / "fixmatch-gpu.yaml"
BENCHMARK = ROOT / "benchmarks" / "gpu.py"
#: a stand-in nvidia-smi: one GPU at 87% and one compute process of 1234 MiB
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *query-gpu*) echo "0, 87" ;;
  *query-compute-apps*) echo "424242, 1234" ;;
esac
"""
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def _tiny_space(**budget) -> dict:
    return {
        "name": "tiny-gpu",
        "objective": {"metric": "val/auroc"},
        "parameters": dict(TINY_PARAMETERS),
        "budget": {
            "trials": 2,
            "concurrency": 2,
            "epochs": 2,
            "scheduler": "none",
            "algorithm": "sobol",
            "max_failures": 0,
            **budget,
        },
        "tracking": {"mode": "disabled"},
    }


def test_the_gpu_space_is_the_full_size_search():
    space = load_space(GPU_SPACE)
    b, fixed = space.budget, space.parameters.fixed
    assert b.trials == 64 and 4 <= 1 / b.gpus_per_trial <= 8 and b.cpus_per_trial >= 2
    assert fixed["method"] == "fixmatch" and fixed["mu"] == 7 and fixed["image_size"] == 128
    assert space.trial_base()["phantom_n"] >= 5000
    assert fixed["precision"] == "bf16-if-native" and fixed["select"] == "last"
    assert set(space.baseline) == {p.name for p in space.parameters.searched} - {"focal_gamma"}
    # four trials per GPU on a 16-core one-GPU machine, eight on two GPUs
    assert fit_concurrency(space, {"CPU": 16.0, "GPU": 1.0})[0] == 4
    assert fit_concurrency(space, {"CPU": 32.0, "GPU": 2.0})[0] == 8
    assert fit_concurrency(space, {"CPU": 4.0, "GPU": 1.0})[0] == 2, "CPUs can be the limit"


@NO_GPU
def test_a_fractional_gpu_search_is_refused_clearly_without_a_gpu(tmp_path, capsys):
    path = tmp_path / "tiny-gpu.yaml"
    path.write_text(yaml.safe_dump(_tiny_space()))
    results = tmp_path / "results"
    code = main(
        ["run", str(path), "--gpus-per-trial", "0.5", "--results", str(results), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "asks 0.5 GPUs per trial; this cluster has 0 GPUs" in err
    assert "use --gpus-per-trial 0" in err and "--address" in err, "the message names the fix"
    assert not results.exists() or not any(results.iterdir()), "nothing written"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_trials_share_one_gpu_and_report_their_memory(phantom_dir, tmp_path):
    d = _tiny_space(gpus_per_trial=0.5, cpus_per_trial=1)
    d["data"] = {"data_dir": str(phantom_dir), "cache_dir": str(tmp_path / "cache")}
    space = SpaceConfig.from_dict(d, source="tiny-gpu.yaml")
    result = run_search(space, name="gpu", results_dir=tmp_path, progress=False, num_cpus=2)
    assert result.status == "finished" and result.concurrency == 2
    folder = open_experiment(result.path)
    records = list(folder.trials.values())
    assert [r["status"] for r in records] == ["completed"] * 2
    (a, b) = sorted(records, key=lambda r: r["started_t"])
    assert b["started_t"] < a["started_t"] + a["duration_s"], "the two trials ran together"
    rows = [json.loads(line) for line in (result.path / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["train/gpu_mem_mib"] > 0 for r in rows)


@NO_GPU
def test_the_gpu_benchmark_says_why_it_measures_nothing_without_a_gpu():
    done = subprocess.run(
        [sys.executable, str(BENCHMARK)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0
    assert "no CUDA device" in done.stderr and "--cpu-smoke" in done.stderr


def test_the_gpu_benchmark_measures_everything_on_the_cpu(phantom_dir, tmp_path):
    """--cpu-smoke: both data paths' step rates, 1 and 2 trials at once through the real
    search, and the GPU sampling (from a stand-in nvidia-smi) reach the tables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            "--cpu-smoke",
            "--data-dir",
            str(phantom_dir),
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### Training steps" in done.stdout and "### Trials per GPU" in done.stdout
    table = json.loads(out.read_text())
    steps = table["steps"]
    assert {(r["method"], r["path"]) for r in steps} == {
        (m, p) for m in ("supervised", "fixmatch") for p in ("loader", "device")
    }
    assert all(r["images_per_s"] > 0 and r["labeled_per_s"] > 0 for r in steps)
    assert all(r["gpu_mem_mib"] == 0 and not r["note"] for r in steps)
    trials = {r["per_gpu"]: r for r in table["trials"]}
    assert sorted(trials) == [1, 2]
    for r in trials.values():
        assert r["completed"] == r["trials"] and r["trials_per_hour"] > 0 and not r["errors"]
        assert r["util_span"] == 87.0 and r["peak_process_mib"] == 1234.0
    assert trials[1]["speedup"] == 1.0 and table["gpu_sampling"] is None
    assert table["resident_load"]["dtype"] == "uint16", "cache crops kept as 16-bit codes"
    assert table["augment"]["augment_ms"] > 0
