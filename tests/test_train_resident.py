"""The device-resident data path: the loader path's batches, augmentations and weights.

On the CPU the "device" is the CPU, so both paths must agree bit for bit: the same
batches for a seed (indices, order and values), the same tensors into the same
augmentation functions, and the same trained weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import pipeline.train.methods as methods
from pipeline.data.datasets import to_unit_float
from pipeline.train import ConfigError, TrainConfig, fit
from pipeline.train.batches import (
    EvalDataset,
    StepDataset,
    StepSampler,
    collate_eval,
    dataset_labels,
)
from pipeline.train.loop import report_keys
from pipeline.train.resident import (
    RESIDENT_SHARE,
    ResidentEval,
    ResidentImages,
    ResidentSteps,
    choose_data_path,
    resident_bytes,
)
from pipeline.train.samplers import UniformSampler, build_sampler
from pipeline.train.toy import toy_train_data
from pipeline.trial import trial_keys
from search.worker import is_out_of_memory

CPU = torch.device("cpu")
TIMING = ("train/epoch_s", "train/images_per_s", "train/labeled_per_s", "time/elapsed_s")
BASE = {
    "backbone": "test_resnet",
    "pretrained": "none",
    "batch_size": 8,
    "epochs": 2,
    "mu": 2,
    "ema_decay": 0.9,
    "threads": 1,
    "device": "cpu",
}


class CachedCrops(Dataset):
    """uint16 crops decoded as ``pipeline.data.CachedRadiographs`` decodes the cache's."""

    def __init__(self, n: int, size: int = 16, channels: int = 1, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.crops = rng.integers(0, 65536, (n, channels, size, size), dtype=np.uint16)
        self.labels = (rng.random(n) < 0.3).astype(np.int64)
        self.labels[:2] = (0, 1)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(to_unit_float(self.crops[i]))  # (C, H, W) float32
        return {"image": image, "label": int(self.labels[i]), "patient": f"p{i}"}


@pytest.fixture(scope="module")
def toy():
    return toy_train_data(n_labeled=32, n_unlabeled=48, n_val=20, size=16, seed=0)


def _samplers(y: np.ndarray, n_unlabeled: int | None, seed: int = 5) -> StepSampler:
    labeled = build_sampler("ratio", y, 8, 5, seed=seed, ratio=0.5)
    unlabeled = None
    if n_unlabeled:
        unlabeled = UniformSampler(np.zeros(n_unlabeled, dtype=np.int64), 16, 5, seed=seed + 1)
    return StepSampler(labeled, unlabeled)


def _loader_batches(labeled, y, unlabeled, u_y, epoch):
    sampler = _samplers(y, len(unlabeled) if unlabeled is not None else None)
    sampler.set_epoch(epoch)
    loader = DataLoader(StepDataset(labeled, y, unlabeled, u_y), sampler=sampler, batch_size=None)
    return list(loader)


def _resident_batches(labeled, y, unlabeled, u_y, epoch):
    sampler = _samplers(y, len(unlabeled) if unlabeled is not None else None)
    sampler.set_epoch(epoch)
    steps = ResidentSteps(
        sampler,
        ResidentImages.load(labeled, CPU),
        y,
        None if unlabeled is None else ResidentImages.load(unlabeled, CPU),
        u_y,
    )
    assert len(steps) == 5
    return list(steps)


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys()
        and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b)
    )


def _sets(kind: str):
    if kind == "uint16 crops":
        labeled, unlabeled = CachedCrops(24, seed=1), CachedCrops(40, seed=2)
    else:
        data = toy_train_data(n_labeled=24, n_unlabeled=40, n_val=8, size=16, seed=1)
        labeled, unlabeled = data.labeled, data.unlabeled
    y = (dataset_labels(labeled) > 0).astype(np.int64)
    u_y = np.full(len(unlabeled), -1, dtype=np.int64)
    return labeled, y, unlabeled, u_y


@pytest.mark.parametrize("kind", ["uint16 crops", "float images"])
@pytest.mark.parametrize("with_unlabeled", [False, True], ids=["labeled", "semi-supervised"])
def test_both_paths_give_the_same_batches_for_a_seed(kind, with_unlabeled):
    labeled, y, unlabeled, u_y = _sets(kind)
    if not with_unlabeled:
        unlabeled, u_y = None, None
    epochs = []
    for epoch in (0, 1):
        loader = _loader_batches(labeled, y, unlabeled, u_y, epoch)
        resident = _resident_batches(labeled, y, unlabeled, u_y, epoch)
        assert _same_batches(loader, resident)
        assert ("u" in resident[0]) == with_unlabeled
        epochs.append(resident)
    assert not _same_batches(*epochs), "each epoch draws other batches"


def test_cache_crops_are_stored_as_16_bit_codes_and_other_images_as_float32():
    crops = ResidentImages.load(CachedCrops(6, size=8, channels=2), CPU)
    assert crops.store.dtype == torch.int16 and crops.store.shape == (6, 2, 8, 8)
    assert crops.nbytes == 6 * 2 * 8 * 8 * 2
    toy = ResidentImages.load(toy_train_data(n_labeled=6, size=8).labeled, CPU)
    assert toy.store.dtype == torch.float32 and toy.table is None


def test_a_set_that_stops_being_16_bit_codes_midway_keeps_every_value():
    class Mixed(CachedCrops):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            if i == 3:  # a float image after three coded ones
                item["image"] = item["image"] * 0.5 + 1e-7
            return item

    ds = Mixed(6, size=8)
    stored = ResidentImages.load(ds, CPU)
    assert stored.table is None
    gathered = stored.gather(torch.arange(6))
    assert torch.equal(gathered, torch.stack([ds[i]["image"] for i in range(6)]))


def test_validation_batches_match_the_evaluation_loader():
    val = CachedCrops(21, seed=3)
    y = dataset_labels(val)
    loader = DataLoader(EvalDataset(val, y), batch_size=8, shuffle=False, collate_fn=collate_eval)
    resident = ResidentEval(ResidentImages.load(val, CPU), y, 8)
    assert len(resident) == len(loader) == 3
    assert _same_batches(list(loader), list(resident))


# ----------------------------------------------------------------------------- fit


def _fit(data, **changes):
    rows: list[dict[str, float]] = []
    result = fit(TrainConfig.from_dict({**BASE, **changes}), data, report=rows.append)
    return result, rows


def _same_history(a, b) -> bool:
    def numbers(row):
        return {k: v for k, v in row.items() if k not in TIMING}

    return len(a) == len(b) and all(
        numbers(x).keys() == numbers(y).keys()
        and all((math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k] for k in numbers(x))
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize("method", ["supervised", "fixmatch", "mixmatch"])
def test_fit_trains_the_same_weights_through_both_paths_on_the_cpu(method, toy):
    by_path = {p: _fit(toy, method=method, data_path=p) for p in ("loader", "device")}
    (loader, rows_l), (device, rows_d) = by_path["loader"], by_path["device"]
    assert loader.runtime["data_path"] == "loader" and device.runtime["data_path"] == "device"
    a, b = loader.model.state_dict(), device.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _same_history(rows_l, rows_d)
    other = _fit(toy, method=method, data_path="device", seed=1)[0].model.state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a), "the comparison can tell runs apart"


def test_the_device_path_feeds_the_augmentations_the_loader_paths_tensors(toy, monkeypatch):
    """FixMatch's weak and strong views: the same functions get the same tensors (and
    generator states) through both paths, and give the same outputs."""
    calls: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    path = {"now": ""}

    def recording(name, fn):
        def wrapper(x, g, **kwargs):
            out = fn(x, g, **kwargs)
            calls.setdefault(path["now"], []).append((name, x.clone(), out.clone()))
            return out

        return wrapper

    monkeypatch.setattr(methods, "weak_augment", recording("weak", methods.weak_augment))
    monkeypatch.setattr(methods, "strong_augment", recording("strong", methods.strong_augment))
    for p in ("loader", "device"):
        path["now"] = p
        _fit(toy, method="fixmatch", data_path=p, epochs=1)
    loader, device = calls["loader"], calls["device"]
    assert {name for name, _, _ in device} == {"weak", "strong"}
    assert len(loader) == len(device) > 0
    for (name_l, x_l, out_l), (name_d, x_d, out_d) in zip(loader, device):
        assert name_l == name_d
        assert x_d.device == CPU and torch.equal(x_l, x_d) and torch.equal(out_l, out_d)


def test_the_data_path_is_chosen_per_device_and_can_be_forced(toy, monkeypatch):
    assert trial_keys()["data_path"] == "auto" and TrainConfig().data_path == "auto"
    with pytest.raises(ConfigError, match="data_path"):
        TrainConfig(data_path="gpu")
    sets = (toy.labeled, toy.unlabeled, toy.val)
    assert choose_data_path("auto", CPU, *sets)[0] == "loader"
    assert choose_data_path("device", CPU, *sets)[0] == "device"
    assert choose_data_path("loader", torch.device("cuda"), *sets)[0] == "loader"
    need = resident_bytes(*sets)
    assert need == (32 + 48 + 20) * 16 * 16 * 4
    cuda = torch.device("cuda")
    total = int(need / RESIDENT_SHARE)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total, total))
    assert choose_data_path("auto", cuda, *sets)[0] == "device"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total, total - 1))
    path, why = choose_data_path("auto", cuda, *sets)
    assert path == "loader" and "exceed" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need, 10 * total))
    assert choose_data_path("auto", cuda, *sets)[0] == "loader", "half of what is free at most"


def test_gpu_memory_is_reported_every_epoch_and_zero_on_the_cpu(toy):
    assert "train/gpu_mem_mib" in report_keys("binary", "fixmatch")
    _, rows = _fit(toy, method="supervised", data_path="device", epochs=2)
    assert [r["train/gpu_mem_mib"] for r in rows] == [0.0, 0.0]


def test_out_of_memory_on_the_device_path_reaches_the_search_retry(toy, monkeypatch):
    """The worker retries a trial with half the batch when torch.OutOfMemoryError is in
    the exception chain: the device path must let it through."""

    def no_memory(self, indices):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ResidentImages, "gather", no_memory)
    with pytest.raises(Exception) as caught:
        _fit(toy, method="supervised", data_path="device", epochs=1)
    assert is_out_of_memory(caught.value)
