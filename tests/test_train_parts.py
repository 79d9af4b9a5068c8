"""pipeline.train parts: samplers, augmentation, tasks and models, configuration."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from pipeline.registry import UnknownNameError
from pipeline.train import (
    SAMPLERS,
    ConfigError,
    ModelSpec,
    TrainConfig,
    build_model,
    build_sampler,
    get_task,
)
from pipeline.train import models as models_module
from pipeline.train.augment import RANDAUGMENT_OPS, ssl_augment, strong_augment, weak_augment
from pipeline.train.samplers import minority_classes
from pipeline.train.tasks import class_priors

# ----------------------------------------------------------------------------- samplers


def _imbalanced(
    n: int = 200, minority: float = 0.05, classes: int = 2, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    k = max(classes - 1, round(minority * n))
    labels[rng.choice(n, k, replace=False)] = 1 + np.arange(k) % (classes - 1)
    return labels


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_is_deterministic_per_epoch_and_valid(name):
    labels = _imbalanced()
    a = build_sampler(name, labels, 16, 10, seed=3, ratio=0.25)
    b = build_sampler(name, labels, 16, 10, seed=3, ratio=0.25)
    a.set_epoch(1)
    b.set_epoch(1)
    batches = list(a)
    assert batches == list(b)
    assert len(batches) == len(a) == 10
    assert all(len(batch) == 16 and all(0 <= i < len(labels) for i in batch) for batch in batches)
    b.set_epoch(2)
    assert list(b) != batches


@pytest.mark.parametrize("classes", [2, 7])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 1.0])
def test_ratio_sampler_batches_hold_the_minority_share(ratio, classes):
    labels = _imbalanced(n=300, minority=0.05, classes=classes)
    sampler = build_sampler("ratio", labels, 20, 25, seed=0, ratio=ratio)
    need = math.ceil(ratio * 20)
    minority = set(minority_classes(labels).tolist())
    for batch in sampler:
        got = sum(int(labels[i]) in minority for i in batch)
        assert got >= need
    if classes == 7 and need >= 6:  # every minority class in every batch
        for batch in sampler:
            assert {int(labels[i]) for i in batch} >= minority


def test_uniform_sampler_covers_the_set_once_per_pass():
    labels = _imbalanced(n=64)
    sampler = build_sampler("uniform", labels, 16, 4, seed=0)
    seen = sorted(i for batch in sampler for i in batch)
    assert seen == list(range(64))


def test_weighted_sampler_balances_classes():
    labels = _imbalanced(n=400, minority=0.05)
    sampler = build_sampler("weighted", labels, 50, 40, seed=0)
    drawn = np.array([labels[i] for batch in sampler for i in batch])
    assert 0.4 < drawn.mean() < 0.6
    assert labels.mean() < 0.1


def test_unknown_sampler_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'ratio'"):
        build_sampler("ration", [0, 1], 2, 1)


# ----------------------------------------------------------------------------- augmentation


def _images(n: int = 6, c: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


AUGMENTS = {"weak": weak_augment, "strong": strong_augment, "ssl": ssl_augment}


@pytest.mark.parametrize("name", list(AUGMENTS))
@pytest.mark.parametrize("channels", [1, 2])
def test_augment_is_seeded_bounded_and_leaves_global_rng(name, channels):
    fn = AUGMENTS[name]
    x = _images(c=channels)
    before = torch.get_rng_state()
    a = fn(x, torch.Generator().manual_seed(1))
    b = fn(x, torch.Generator().manual_seed(1))
    c = fn(x, torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_augment_stays_full_precision_under_autocast(name):
    x = _images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = AUGMENTS[name](x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32
    assert torch.equal(out, AUGMENTS[name](x, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("op", [k for k in RANDAUGMENT_OPS if k != "identity"])
def test_each_randaugment_op_changes_the_image_within_range(op):
    x = _images(n=4)
    m, s = torch.ones(4), torch.ones(4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    out = RANDAUGMENT_OPS[op](x, m, s, noise).clamp(0, 1)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, x)


def test_weak_augment_without_translation_only_flips():
    x = _images(n=16)
    out = weak_augment(x, torch.Generator().manual_seed(0), translate=0.0)
    flipped = [bool(torch.allclose(o, xi.flip(-1), atol=1e-5)) for o, xi in zip(out, x)]
    same = [bool(torch.allclose(o, xi, atol=1e-5)) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


# ----------------------------------------------------------------------------- tasks and models


def test_unknown_backbone_suggests_timm_names():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        ModelSpec(backbone="resnt18")


@pytest.mark.parametrize("task", ["binary", "schatzker", "hierarchical"])
def test_model_output_matches_task_and_starts_at_priors(task):
    t = get_task(task)
    counts = t.class_counts([0] * 20 + [1] * 5 + [3] * 2)
    priors = class_priors(counts)
    model = build_model(
        ModelSpec(backbone="test_resnet", task=task, in_chans=2, pretrained="none"), priors=priors
    )
    logits = model(_images(n=3, c=2))
    assert logits.shape == (3, t.num_classes)
    # zero-initialised head weights: every image starts at the class priors
    assert torch.allclose(torch.softmax(logits, 1), priors.expand(3, -1), atol=1e-5)
    if task == "hierarchical":
        assert torch.allclose(torch.logsumexp(logits, 1), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize(
    "backbone", ["test_resnet", "test_efficientnet", "test_convnext", "mobilenetv3_small_050"]
)
def test_heads_fit_every_backbone_family(backbone):
    # MobileNetV3's conv head widens its features beyond num_features
    model = build_model(
        ModelSpec(backbone=backbone, task="hierarchical", in_chans=1, pretrained="none")
    )
    assert model(_images(n=2)).shape == (2, 7)


def test_one_class_order_for_labels_counts_and_bias():
    binary, schatzker = get_task("binary"), get_task("schatzker")
    raw = [0, 0, 0, 2, 5, 5, -1]
    assert binary.encode_many(raw).tolist() == [0, 0, 0, 1, 1, 1, -1]
    assert binary.class_counts(raw).tolist() == [3, 3]
    assert schatzker.class_counts(raw).tolist() == [3, 0, 1, 0, 0, 2, 0]
    assert binary.classes == ("no_fracture", "fracture") and schatzker.classes[0] == "none"
    priors = class_priors(schatzker.class_counts(raw))
    model = build_model(
        ModelSpec(backbone="test_resnet", task="schatzker", pretrained="none"), priors=priors
    )
    bias = model.head.fc.bias.detach()
    assert int(torch.argmax(bias)) == 0 and float(bias[5]) > float(bias[2]) > float(bias[1])
    with pytest.raises(ValueError, match="not a Schatzker grade"):
        schatzker.encode(9)


def test_missing_imagenet_weights_are_announced_once(monkeypatch, caplog):
    monkeypatch.setattr(models_module, "_ANNOUNCED", set())
    monkeypatch.setattr(models_module, "cached_imagenet_weights", lambda name: None)
    spec = ModelSpec(backbone="test_resnet", pretrained="imagenet")
    with caplog.at_level(logging.WARNING, logger="pipeline.train.models"):
        build_model(spec)
        build_model(spec)
    messages = [r.getMessage() for r in caplog.records if "ImageNet" in r.getMessage()]
    assert len(messages) == 1 and "test_resnet" in messages[0]


def test_cached_imagenet_weights_are_loaded_from_the_local_file(monkeypatch, tmp_path):
    reference = timm.create_model("test_resnet")
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(models_module, "cached_imagenet_weights", lambda name: path)
    backbone, used = models_module.build_backbone("test_resnet", in_chans=3, pretrained="imagenet")
    assert used
    ref = reference.state_dict()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_no_cached_weights_for_an_unlikely_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("timm.models._hub.get_cache_dir", lambda *a: str(tmp_path))
    assert models_module.cached_imagenet_weights("convnext_atto") is None


# ----------------------------------------------------------------------------- configuration


def test_config_rejects_unknown_keys_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'lambda_u'"):
        TrainConfig.from_dict({"lamda_u": 1.0})


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"loss": "focall"}, "did you mean 'focal'"),
        ({"method": "fixmach"}, "did you mean 'fixmatch'"),
        ({"pseudo_label_threshold": 1.5}, "pseudo_label_threshold must be in"),
        ({"mu": 0}, "mu must be"),
        ({"batch_size": 2.5}, "batch_size must be an int"),
        ({"sampler_ratio": -0.1}, "sampler_ratio"),
        ({"device": "tpu"}, "device must be"),
        ({"dist_align": "yes"}, "dist_align must be true or false"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig.from_dict(changes)


def test_config_coerces_what_search_spaces_hand_over():
    c = TrainConfig.from_dict(
        {"mu": 7.0, "K": np.int64(3), "lr": np.float32(0.01), "epochs": 2, "T": 1}
    )
    assert (c.mu, c.K, c.epochs) == (7, 3, 2) and isinstance(c.mu, int) and isinstance(c.K, int)
    assert isinstance(c.lr, float) and isinstance(c.T, float)


def test_config_keys_are_the_documented_trial_keys():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    groups = ("model", "pretraining", "method", "imbalance", "optimisation", "runtime")
    documented = set()
    for line in doc.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] in groups:
            documented |= set(re.findall(r"`([A-Za-z_]+)`", cells[2]))
    data_keys = {
        "views",
        "checkpoint_dir",
    }  # input channels come with the data; folders are fit() arguments
    assert set(TrainConfig.keys()) == documented - data_keys
    defaults = TrainConfig()
    assert (defaults.pseudo_label_threshold, defaults.lambda_u, defaults.mu) == (0.95, 1.0, 7)
    assert (defaults.T, defaults.K, defaults.alpha) == (0.5, 2, 0.75)


def test_list_parts_by_kind():
    from pipeline import list_parts
    from pipeline.train import LOSSES

    assert [name for name, _ in list_parts("losses")] == LOSSES.names()
    assert dict(list_parts("ssl_methods"))["none"] == "no self-supervised stage"
    assert all(doc for _, doc in list_parts("methods"))
    with pytest.raises(UnknownNameError, match="did you mean 'samplers'"):
        list_parts("sampler")


@pytest.mark.parametrize("name", SAMPLERS.names())
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_sampler_class_shares_are_what_its_batches_hold(name, ratio):
    """``class_shares`` is the prior a post-hoc correction divides out: it must match
    the class mix the sampler really draws."""
    labels = _imbalanced(n=400, minority=0.1, classes=7)
    sampler = build_sampler(name, labels, 32, 200, seed=0, ratio=ratio)
    shares = sampler.class_shares(7)
    drawn = np.bincount([labels[i] for batch in sampler for i in batch], minlength=7)
    assert shares.shape == (7,) and shares.sum() == pytest.approx(1.0)
    assert np.abs(drawn / drawn.sum() - shares).max() < 0.02
    assert sampler.class_shares(9)[7:].tolist() == [0.0, 0.0]  # classes the set lacks


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx2", False)],
)
def test_native_cpu_bf16_reads_the_cpu_flags(monkeypatch, tmp_path, flags, native):
    import builtins

    from pipeline.train import runtime

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="ascii")
    real_open = builtins.open
    monkeypatch.setattr(
        builtins,
        "open",
        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
    )
    runtime.native_cpu_bf16.cache_clear()
    try:
        assert runtime.native_cpu_bf16() is native
    finally:
        runtime.native_cpu_bf16.cache_clear()


def test_bf16_if_native_follows_the_hardware(monkeypatch):
    import torch

    from pipeline.train import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    assert runtime.resolve_precision("bf16-if-native", cpu) == "bf16-mixed"
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    assert runtime.resolve_precision("bf16-if-native", cpu) == "32-true"
    assert runtime.resolve_precision("auto", cpu) == "32-true", "auto stays fp32 on any CPU"
