"""pipeline.train on a CUDA device: mixed precision, channels-last, augmentation on the GPU,
the device-resident data path and each run's peak GPU memory."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader

from pipeline.train import LOSSES, TrainConfig, build_loss, fit, pretrain_ssl
from pipeline.train.augment import ssl_augment, strong_augment, weak_augment
from pipeline.train.batches import StepDataset, StepSampler, dataset_labels
from pipeline.train.resident import ResidentImages, ResidentSteps
from pipeline.train.samplers import UniformSampler, build_sampler
from pipeline.train.toy import toy_train_data
from search.worker import is_out_of_memory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def data():
    return toy_train_data(n_labeled=48, n_unlabeled=96, n_val=48, size=32, seed=0)


@pytest.mark.parametrize("fn", [weak_augment, strong_augment, ssl_augment])
def test_augmentation_on_the_gpu_matches_the_cpu(fn):
    x = torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as inside a mixed-precision step
        assert fn(x.cuda(), torch.Generator().manual_seed(5)).dtype == torch.float32
    on_cpu = fn(x, torch.Generator().manual_seed(5))
    on_gpu = fn(x.cuda(), torch.Generator().manual_seed(5))
    assert on_gpu.is_cuda
    diff = (on_gpu.cpu() - on_cpu).abs()
    assert float(diff.mean()) < 2e-3 and float(diff.max()) < 0.1


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_gives_the_same_value_on_the_gpu(name):
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(32, 7, generator=g), torch.randint(0, 7, (32,), generator=g)
    counts = torch.tensor([50.0, 9, 8, 7, 6, 5, 0])
    loss = build_loss(name, counts)
    on_cpu = float(loss(logits, y))
    on_gpu = float(loss.cuda()(logits.cuda(), y.cuda()))
    assert on_gpu == pytest.approx(on_cpu, rel=1e-4)


@pytest.mark.parametrize("method", ["supervised", "fixmatch", "mixmatch"])
def test_fit_on_the_gpu_is_mixed_precision_channels_last_and_learns(method, data):
    config = TrainConfig(
        backbone="test_resnet",
        pretrained="none",
        method=method,
        epochs=3,
        batch_size=16,
        lr=3e-3,
        mu=2,
        pseudo_label_threshold=0.7,
    )
    rows = []
    result = fit(config, data, report=rows.append)
    assert result.runtime["device"].startswith("cuda")
    assert result.runtime["precision"] in ("bf16-mixed", "16-mixed")
    assert result.runtime["channels_last"] is True
    assert rows[-1]["train/loss_x"] < rows[0]["train/loss_x"]
    assert result.metrics["val/auroc"] >= 0.8


def test_compiled_fit_runs_on_the_gpu(data):
    config = TrainConfig(
        backbone="test_resnet", pretrained="none", epochs=1, batch_size=16, compile=True
    )
    result = fit(config, data)
    assert result.runtime["compile"] and len(result.history) == 1


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_ssl_pretraining_on_the_gpu(method, data):
    backbone = timm.create_model("test_resnet", in_chans=1, num_classes=0)
    state, history = pretrain_ssl(
        backbone,
        data.unlabeled,
        method=method,
        epochs=2,
        batch_size=32,
        device="cuda",
        precision="bf16-mixed",
    )
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(history)))
    assert all(not v.is_cuda for v in state.values())


def test_the_device_path_gathers_the_loader_paths_batches_on_the_gpu(data):
    y = (dataset_labels(data.labeled) > 0).astype(np.int64)
    u_y = np.full(len(data.unlabeled), -1, dtype=np.int64)

    def sampler():
        s = StepSampler(
            build_sampler("ratio", y, 16, 4, seed=3, ratio=0.5),
            UniformSampler(np.zeros(len(data.unlabeled), dtype=np.int64), 32, 4, seed=4),
        )
        s.set_epoch(1)
        return s

    loader = DataLoader(
        StepDataset(data.labeled, y, data.unlabeled, u_y), sampler=sampler(), batch_size=None
    )
    cuda = torch.device("cuda")
    steps = ResidentSteps(
        sampler(),
        ResidentImages.load(data.labeled, cuda),
        y,
        ResidentImages.load(data.unlabeled, cuda),
        u_y,
    )
    for a, b in zip(loader, steps, strict=True):
        assert a.keys() == b.keys()
        assert all(b[k].is_cuda and torch.equal(a[k].cuda(), b[k]) for k in a)


@pytest.mark.parametrize("method", ["supervised", "fixmatch"])
def test_auto_keeps_the_data_on_the_gpu_and_reports_its_memory(method, data):
    config = TrainConfig(
        backbone="test_resnet", pretrained="none", method=method, epochs=2, batch_size=16, mu=2
    )
    rows = []
    result = fit(config, data, report=rows.append)
    assert result.runtime["data_path"] == "device"
    assert all(r["train/gpu_mem_mib"] > 0 for r in rows)
    forced = fit(config.replace(data_path="loader", epochs=1), data)
    assert forced.runtime["data_path"] == "loader"


def test_out_of_memory_on_the_gpu_reaches_the_search_retry():
    """The search retries a trial with half the batch when it finds torch's
    OutOfMemoryError in the exception chain: the device path lets it through."""
    big = toy_train_data(n_labeled=256, n_unlabeled=8, n_val=32, size=128)  # 16 MiB labeled
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1e-6)  # no new CUDA memory segment fits
    try:
        with pytest.raises(Exception) as caught:
            fit(TrainConfig(backbone="test_resnet", pretrained="none", data_path="device"), big)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert is_out_of_memory(caught.value)
