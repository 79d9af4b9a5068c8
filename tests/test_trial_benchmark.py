"""``benchmarks/trial.py`` row settings: the 7-class rows get their own sampler and
schedule (every method alike), the binary rows keep the shared ones, and every row's
configuration is a valid trial configuration."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from pipeline.trial import TrialConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("trial_benchmark", ROOT / "benchmarks/trial.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _configs(bench, argv):
    args = bench.parse_args(["--cache", "/nonexistent", *argv])
    base = bench.base_config(args)
    return {row.name: bench.row_config(base, row, args) for row in bench.plan_rows(args)}


def test_schatzker_rows_get_the_balanced_sampler_and_their_schedule(bench):
    configs = _configs(bench, ["--epochs", "3", "--schatzker-epochs", "7"])
    schatzker = {n: c for n, c in configs.items() if n.startswith("schatzker/")}
    binary = {n: c for n, c in configs.items() if n.startswith("binary/")}
    assert len(schatzker) == 6 and binary
    for config in schatzker.values():
        assert config["epochs"] == 7
        assert config["sampler"] == "ratio" and config["sampler_ratio"] == 0.5
    for config in binary.values():
        assert config["epochs"] == 3
        assert "sampler" not in config  # the trial default (uniform)
    for config in configs.values():
        TrialConfig.from_dict(config)  # every row is a valid trial


def test_schatzker_set_overrides_only_the_schatzker_rows(bench):
    configs = _configs(bench, ["--schatzker-set", "sampler=weighted", "--schatzker-set", "mu=2"])
    for name, config in configs.items():
        if name.startswith("schatzker/"):
            assert config["sampler"] == "weighted" and config["mu"] == 2
        else:
            assert config.get("sampler", "uniform") == "uniform"
            assert config["mu"] == bench.parse_args([]).mu


def test_class_f1_counts_each_class(bench):
    pred = torch.tensor([0, 0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 1, 1, 2, 0])
    f1 = bench._class_f1(pred, target, 4)
    assert f1[0] == pytest.approx(2 * 2 / (2 * 2 + 1))  # tp 2, fp 1
    assert f1[1] == pytest.approx(2 * 2 / (2 * 2 + 1))  # tp 2, fn 1
    assert f1[2] == 1.0
    assert math.isnan(f1[3])  # neither present nor predicted
