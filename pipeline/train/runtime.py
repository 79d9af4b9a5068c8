"""Runtime helpers shared by the training loop and the pretraining stages.

Devices and precision, peak GPU memory, thread counts, seed derivation (every random
stream of a run is derived from its seed and a stream name, never from global state)
and the small loop the pretraining stages use.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.train.batches import load_images
from pipeline.train.samplers import UniformSampler

log = logging.getLogger(__name__)


def derive_seed(seed: int, stream: str, *extra: int) -> int:
    """A 63-bit seed for the named random ``stream`` of a run (and e.g. an epoch)."""
    words = [int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode()), *(int(e) for e in extra)]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> 1)


def generator(seed: int, stream: str, *extra: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, *extra))


@contextlib.contextmanager
def seeded(seed: int, stream: str, *extra: int) -> Iterator[None]:
    """Run a block (e.g. weight initialisation) under a derived global torch seed,
    restoring the previous global RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, stream, *extra))
        yield


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """Run a block on exactly ``threads`` CPU threads for torch ops (None: torch's default),
    restoring the previous count afterwards. Oversubscribed cores cost far more than
    idle ones: two trials with 2 threads each on 2 cores run ~3x slower in total than
    with 1 thread each."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str) -> torch.device:
    """'auto' -> the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "gpu":
        return torch.device("cuda")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Lightning precision string.

    ``auto``: bf16 (or fp16) mixed on a GPU, fp32 on the CPU (the same numbers on every
    CPU). ``bf16-if-native``: bf16 mixed on a GPU and on a CPU that computes bf16
    natively (:func:`native_cpu_bf16`, about twice as fast there), fp32 on other CPUs
    (where bf16 is emulated and slower): the fastest choice, whose CPU results then
    depend on the machine.
    """
    if precision == "auto" or (precision == "bf16-if-native" and device.type == "cuda"):
        if device.type != "cuda":
            return "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if precision == "bf16-if-native":
        return "bf16-mixed" if native_cpu_bf16() else "32-true"
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[precision]


@functools.lru_cache(maxsize=1)
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16; read from
    Linux's /proc/cpuinfo, False elsewhere). On such a CPU ``precision: bf16`` with
    ``channels_last`` trains a small convolutional network about twice as fast as fp32
    (resnet10t at 64 px, one thread: 284 against 135 images/s); elsewhere bf16 on the
    CPU is emulated and slower, which is why ``auto`` stays fp32 on the CPU."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def reset_peak_memory(device: torch.device) -> None:
    """Start counting ``device``'s peak memory afresh (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory this process allocated on ``device`` since the last reset, in MiB
    (``torch.cuda.max_memory_allocated``: tensors, not the allocator's cache or the CUDA
    context); 0 on the CPU. What a trial needs of a GPU it shares with others."""
    if device.type != "cuda":
        return 0.0
    return torch.cuda.max_memory_allocated(device) / 2**20


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for a Lightning precision string (no-op for 32-true)."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def pretrain_loop(
    module: nn.Module,
    step_loss: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
    dataset: Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    stream: str,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    weight_decay: float = 1e-4,
    after_step: Callable[[float], None] | None = None,
    targets: torch.Tensor | None = None,
) -> list[float]:
    """Train ``module`` with AdamW + cosine decay on ``step_loss(images, targets, generator)``.

    One epoch is one pass over ``dataset`` in batches of ``batch_size`` (the last
    partial batch is dropped unless it is the only one). ``after_step(progress in
    [0, 1])`` runs after each optimiser step (BYOL's momentum update). Returns the
    mean loss of each epoch.
    """
    device = torch.device(device)
    module.to(device).train()
    steps = max(1, len(dataset) // batch_size)
    total = steps * epochs
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1.0 + np.cos(np.pi * min(k, total) / total))
    )
    sampler = UniformSampler(
        np.zeros(len(dataset), dtype=np.int64),
        min(batch_size, len(dataset)),
        steps,
        seed=derive_seed(seed, stream),
    )
    history: list[float] = []
    done = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        g = generator(seed, stream + "/augment", epoch)
        t0, losses = time.perf_counter(), []
        with seeded(seed, stream + "/torch", epoch):
            for idx in sampler:
                x = load_images(dataset, idx).to(device)  # (B, C, H, W)
                t = None if targets is None else targets[idx].to(device)
                with autocast(device, precision):
                    loss = step_loss(x, t, g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if after_step is not None:
                    after_step(done / total)
                losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        log.info(
            "%s epoch %d/%d: loss %.4f (%.1fs)",
            stream,
            epoch + 1,
            epochs,
            history[-1],
            time.perf_counter() - t0,
        )
    module.eval()
    return history
