"""Pretraining stages: SSL (lightly) and metadata objectives learn; the stage cache is shared."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import timm
import torch

from pipeline.train import SSL_METHODS, TrainConfig, cached_stage, fit, metadata_targets, pretrain
from pipeline.train import stages as stages_module
from pipeline.train.metadata import pretrain_metadata
from pipeline.train.ssl import pretrain_ssl
from pipeline.train.toy import toy_train_data


@pytest.fixture(scope="module")
def data():
    return toy_train_data(n_labeled=32, n_unlabeled=96, n_val=32, size=32, seed=3)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _backbone():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", in_chans=1, num_classes=0)


@pytest.mark.parametrize("method", [m for m in SSL_METHODS.names() if m != "none"])
def test_ssl_methods_lower_their_loss_and_change_the_backbone(method, data):
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    state, history = pretrain_ssl(
        backbone, data.unlabeled, method=method, epochs=3, lr=3e-3, batch_size=32
    )
    assert len(history) == 3 and history[-1] < history[0]
    assert state.keys() == before.keys()
    assert any(not torch.equal(state[k], before[k]) for k in state)


def test_ssl_none_is_a_no_op(data):
    backbone = _backbone()
    state, history = pretrain_ssl(backbone, data.unlabeled, method="none", epochs=3)
    assert history == [] and all(torch.equal(v, backbone.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (
            {
                "view": "ap",
                "laterality": "R",
                "body_part": "KNEE",
                "patient_sex": 1.0,
                "patient_age": 45.0,
            },
            {"view": 0, "laterality": 1, "body_part": 0, "sex": 1, "age_band": 2},
        ),
        (
            {
                "view": "LL",
                "laterality": "B",
                "body_part": "CHEST",
                "patient_sex": 0.0,
                "patient_age": 12,
            },
            {"view": 2, "laterality": -1, "body_part": 1, "sex": 0, "age_band": 0},
        ),
        ({}, {"view": -1, "laterality": -1, "body_part": -1, "sex": -1, "age_band": -1}),
        (
            {"view": "PA", "patient_age": 80.0, "patient_sex": None},
            {"view": 1, "age_band": 4, "sex": -1},
        ),
    ],
)
def test_metadata_targets_from_deidentified_tags(meta, expected):
    got = metadata_targets(meta)
    for key, value in expected.items():
        assert got[key] == value, key


def test_metadata_pretraining_learns_the_laterality_marker(data):
    _, history = pretrain_metadata(_backbone(), data.unlabeled, epochs=4, lr=3e-3, batch_size=32)
    assert len(history) == 4 and history[-1] < history[0]


def test_cached_stage_computes_once_and_loads_after(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.arange(4.0)}, [1.0, 0.5]

    spec = {"parent": "root", "epochs": 2, "data": "abc"}
    a, rec_a = cached_stage("ssl", spec, compute, cache_root=tmp_path)
    b, rec_b = cached_stage("ssl", spec, compute, cache_root=tmp_path)
    assert len(calls) == 1 and not rec_a.hit and rec_b.hit
    assert torch.equal(a["w"], b["w"]) and rec_b.history == [1.0, 0.5]
    _, rec_c = cached_stage("ssl", {**spec, "epochs": 3}, compute, cache_root=tmp_path)
    assert len(calls) == 2 and not rec_c.hit and rec_c.key != rec_a.key


def test_racing_threads_compute_a_stage_once(tmp_path):
    calls, results = [], []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"w": torch.ones(2)}, []

    def worker():
        results.append(cached_stage("metadata", {"k": 1}, compute, cache_root=tmp_path)[1].hit)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(results) == [False, True, True]


RACER = """
import sys, time, torch
from pipeline.train.cache import cached_stage

def compute():
    with open(sys.argv[2], "a") as f:
        f.write("x")
    time.sleep(1.0)
    return {"w": torch.ones(2)}, []

print(cached_stage("ssl", {"race": 1}, compute, cache_root=sys.argv[1])[1].hit)
"""


def test_racing_processes_compute_a_stage_once(tmp_path):
    marker = tmp_path / "computed"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / "cache"), str(marker)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert marker.read_text() == "x"
    assert outputs == ["False", "True"]


def test_pretrain_chain_hits_the_cache_and_skips_the_stage(data, tmp_path, monkeypatch):
    config = TrainConfig(
        backbone="test_resnet",
        pretrained="none",
        metadata_epochs=1,
        ssl_method="simclr",
        ssl_epochs=1,
        batch_size=32,
        threads=1,
        device="cpu",
    )
    first = pretrain(config, data, cache_root=tmp_path)
    assert [(r.kind, r.hit) for r in first.stages] == [("metadata", False), ("ssl", False)]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached stage ran again")

    monkeypatch.setattr(stages_module, "pretrain_ssl", must_not_run)
    monkeypatch.setattr(stages_module, "pretrain_metadata", must_not_run)
    second = pretrain(config, data, cache_root=tmp_path)
    assert [(r.kind, r.hit) for r in second.stages] == [("metadata", True), ("ssl", True)]
    assert all(torch.equal(v, second.state[k]) for k, v in first.state.items())
    # a different SSL setting is another stage; the shared metadata stage stays cached
    with pytest.raises(AssertionError, match="ran again"):
        pretrain(config.replace(ssl_epochs=2), data, cache_root=tmp_path)


def test_fit_starts_from_the_pretrained_backbone(data, tmp_path):
    config = TrainConfig(
        backbone="test_resnet",
        pretrained="none",
        ssl_method="byol",
        ssl_epochs=1,
        epochs=1,
        batch_size=16,
        threads=1,
        device="cpu",
    )
    result = fit(config, data, cache_root=tmp_path)
    assert [r.kind for r in result.pretrained.stages] == ["ssl"]
    again = fit(config, data, cache_root=tmp_path)
    assert again.pretrained.stages[0].hit
    assert again.history[0]["val/loss"] == result.history[0]["val/loss"]
