"""pipeline.train on a CUDA device: mixed precision, channels-last, augmentation on the GPU."""

from __future__ import annotations

import pytest
import timm
import torch

from pipeline.train import LOSSES, TrainConfig, build_loss, fit, pretrain_ssl
from pipeline.train.augment import ssl_augment, strong_augment, weak_augment
from pipeline.train.toy import toy_train_data

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
