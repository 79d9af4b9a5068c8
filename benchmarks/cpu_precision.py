"""Training speed on the CPU: fp32 against bf16 mixed precision, with and without channels-last.

    python benchmarks/cpu_precision.py                          # resnet10t, 64 px, 1 thread
    python benchmarks/cpu_precision.py --backbone resnet18 --image-size 128 --threads 2

Times optimiser steps (forward, backward, AdamW) of a timm backbone on random greyscale
batches, the four settings interleaved round by round so that other load on the machine
touches them alike, and prints a markdown table: images per second (median of the
rounds) and the ratio to fp32. bf16 pays only where the CPU computes it natively
(AVX512-BF16 or AMX, ``pipeline.train.runtime.native_cpu_bf16``); elsewhere it is
emulated and slower, which is why the trial key ``precision: auto`` stays fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=96, help="FixMatch mu 2: 32 + 2 x 32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import timm
    import torch

    from pipeline.train.runtime import native_cpu_bf16

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {}
    for prec, cl in SETTINGS:
        m = timm.create_model(args.backbone, num_classes=2, in_chans=1)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        models[prec, cl] = (m, torch.optim.AdamW(m.parameters(), 1e-3))
    x = torch.randn(args.batch_size, 1, args.image_size, args.image_size)
    y = torch.randint(0, 2, (args.batch_size,))

    def step(prec: str, cl: bool) -> None:
        m, opt = models[prec, cl]
        xb = x.contiguous(memory_format=torch.channels_last) if cl else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            loss = torch.nn.functional.cross_entropy(m(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for setting in SETTINGS:  # warm-up: oneDNN picks its kernels on the first calls
        for _ in range(2):
            step(*setting)
    rates: dict[tuple[str, bool], list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            t = time.perf_counter()
            for _ in range(args.steps):
                step(*setting)
            rates[setting].append(args.steps * args.batch_size / (time.perf_counter() - t))
    base = statistics.median(rates["fp32", False])
    print(
        f"### Training steps on the CPU: {args.backbone}, {args.image_size} px, batch "
        f"{args.batch_size}, {args.threads} thread(s); native bf16: {native_cpu_bf16()}\n"
    )
    print("| precision | channels-last | images/s | vs fp32 |")
    print("| --- | --- | ---: | ---: |")
    for prec, cl in SETTINGS:
        r = statistics.median(rates[prec, cl])
        print(f"| {prec} | {'yes' if cl else 'no'} | {r:.0f} | {r / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
