"""``benchmarks/trial.py`` row settings: the 7-class rows get their own sampler and
schedule (every method alike), the binary rows keep the shared ones, and every row's
configuration is a valid trial configuration."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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


def test_every_row_gets_the_minority_sampler_and_schatzker_rows_their_own_settings(bench):
    configs = _configs(bench, ["--epochs", "3", "--schatzker-epochs", "7"])
    schatzker = {n: c for n, c in configs.items() if n.startswith("schatzker/")}
    binary = {n: c for n, c in configs.items() if n.startswith("binary/")}
    assert len(schatzker) == 6 and len(binary) == 6  # no views pair unless asked
    for config in configs.values():
        assert config["sampler"] == "ratio" and config["sampler_ratio"] == 0.5
        assert config["dist_align"] is True
        TrialConfig.from_dict(config)  # every row is a valid trial
    for config in schatzker.values():
        assert config["epochs"] == 7 and config["type_decision"] == "balanced"
    for config in binary.values():
        assert config["epochs"] == 3 and "type_decision" not in config
    same = _configs(bench, ["--epochs", "5"])
    assert {c["epochs"] for c in same.values()} == {5}  # one schedule unless told apart
    with_views = _configs(bench, ["--views"])
    assert [n for n in with_views if "/ap+lat/" in n] == ["binary/fixmatch/ap+lat/seed0"]


def test_schatzker_set_overrides_only_the_schatzker_rows(bench):
    configs = _configs(bench, ["--schatzker-set", "sampler=weighted", "--schatzker-set", "mu=5"])
    for name, config in configs.items():
        if name.startswith("schatzker/"):
            assert config["sampler"] == "weighted" and config["mu"] == 5
        else:
            assert config["sampler"] == "ratio"
            assert config["mu"] == bench.parse_args([]).mu


def test_precision_defaults_to_bf16_only_where_the_cpu_has_it(bench, monkeypatch):
    from pipeline.train import runtime

    for native, expected in ((True, "bf16"), (False, "auto")):
        monkeypatch.setattr(runtime, "native_cpu_bf16", lambda native=native: native)
        args = bench.parse_args(["--device", "cpu"])
        assert args.precision == expected
        assert args.channels_last is (True if native else None)
        config = bench.base_config(args)
        assert config["precision"] == expected
        TrialConfig.from_dict(config)
    args = bench.parse_args(["--device", "cpu", "--precision", "32"])
    assert args.precision == "32" and args.channels_last is None


def test_class_f1_counts_each_class(bench):
    pred = torch.tensor([0, 0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 1, 1, 2, 0])
    f1 = bench._class_f1(pred, target, 4)
    assert f1[0] == pytest.approx(2 * 2 / (2 * 2 + 1))  # tp 2, fp 1
    assert f1[1] == pytest.approx(2 * 2 / (2 * 2 + 1))  # tp 2, fn 1
    assert f1[2] == 1.0
    assert math.isnan(f1[3])  # neither present nor predicted


def test_external_phantom_is_another_seed_with_every_study_labeled(bench):
    args = bench.parse_args(["--cache", "/nonexistent", "--phantom-seed", "3"])
    ext = bench.external_overrides(args)
    assert ext == {"phantom_n": 1500, "phantom_seed": 1003, "phantom_labeled_fraction": 1.0}
    base = bench.base_config(args)
    TrialConfig.from_dict({**base, **ext})  # a valid trial's data
    assert bench.external_overrides(bench.parse_args(["--external-n", "0"])) is None
    with pytest.raises(SystemExit):
        bench.external_overrides(bench.parse_args(["--external-seed", "0"]))


class _Split(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"label": int(self.labels[i])}


def test_external_set_is_every_split_of_the_external_phantom(bench):
    prepared = SimpleNamespace(
        train=_Split([0, 1, 2]), val=_Split([]), test=_Split([3, 0]), unlabeled=_Split([-1] * 9)
    )
    data = bench.external_set(prepared)
    assert len(data) == 5 and data.labels == [0, 1, 2, 3, 0]
    assert [data[i]["label"] for i in range(len(data))] == data.labels


def _result(task, method, test_auroc, ext_auroc, macro_f1=0.5):
    external = None if ext_auroc is None else {"auroc": ext_auroc, "macro_f1": macro_f1}
    return {
        "row": {"group": "main", "task": task, "method": method, "ssl": False, "views": "ap"},
        "val": {"auroc": 0.99, "macro_f1": 0.9},
        "test": {"auroc": test_auroc, "macro_f1": macro_f1},
        "external": external,
        "monitors": {},
        **dict.fromkeys(("fit_s", "test_s", "images_per_s", "peak_rss_mib", "best_epoch"), 1.0),
        "cuda_peak_mib": None,
    }


def test_targets_are_judged_on_the_external_phantom_when_there_is_one(bench):
    with_ext = bench.aggregate(
        [_result("binary", "fixmatch", 0.97, 0.93), _result("binary", "supervised", 0.90, 0.94)]
    )
    lines = bench.check_targets(with_ext)
    assert any("FixMatch" in line and "external 0.930 -> NOT met" in line for line in lines)
    assert any("above supervised" in line and "0.930 vs 0.940 -> NOT met" in line for line in lines)
    assert "**external AUROC**" in bench.markdown_table(with_ext, list(with_ext), cuda=False)
    test_only = bench.aggregate(
        [_result("binary", "fixmatch", 0.97, None), _result("binary", "supervised", 0.90, None)]
    )
    lines = bench.check_targets(test_only)
    assert any("FixMatch" in line and "test 0.970 -> met" in line for line in lines)
    assert any("above supervised" in line and "0.970 vs 0.900 -> met" in line for line in lines)
    assert "external" not in bench.markdown_table(test_only, list(test_only), cuda=False)


def test_cpu_precision_benchmark_prints_every_setting(capsys):
    spec = importlib.util.spec_from_file_location(
        "cpu_precision", ROOT / "benchmarks/cpu_precision.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--image-size", "32", "--batch-size", "4", "--steps", "1", "--rounds", "1"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ")[:2] for line in out if line.startswith(("| fp32", "| bf16"))]
    assert rows == [["| fp32", "no"], ["| fp32", "yes"], ["| bf16", "no"], ["| bf16", "yes"]]
    assert next(line for line in out if line.startswith("| fp32 | no")).endswith("| 1.00x |")
