"""Trials that keep a GPU busy: the two data paths, several trials per GPU, memory, utilisation.

    python benchmarks/gpu.py                      # on a CUDA machine: about 7 minutes
    python benchmarks/gpu.py --json gpu.json      # also save the tables as JSON
    python benchmarks/gpu.py --cpu-smoke          # the same measuring code on the CPU, tiny

Everything goes through the project's own entry points, on a phantom (``--phantom-n``
images, generated once and preprocessed into the cache, like every trial's data):

1. **Training steps** (``pipeline.train.fit`` on the phantom's crops): images/s of
   supervised steps and labeled images/s of FixMatch steps (mu 7), resnet18 at 64 px,
   bf16 mixed precision, channels-last, through the loader path (a ``DataLoader`` reading
   the preprocessing cache each step: 0 workers, the trials' default, and ``--workers``)
   and the device path (``data_path: device``: the crops on the GPU, batches gathered
   there). Each figure is the second of two epochs (the first warms up cuDNN and the
   allocator), as the run reports it (``train/images_per_s``, ``train/labeled_per_s``),
   with the run's peak GPU memory (``train/gpu_mem_mib``).
2. **Trials per GPU**: real searches (``search.runner.run_search``: Ray Tune, Ax, and
   ``pipeline.run_trial`` in each Ray worker) with k = 1, 2, 4 and 8 trials at once on
   one GPU (``gpus_per_trial`` 1/k, ``--cpus-per-trial`` each), k trials each (two for
   k = 1): trials/hour (completed trials over the span from the first trial's start to
   the last one's end), its ratio to one trial per GPU, each trial's peak GPU memory
   (``train/gpu_mem_mib``: what torch allocated; and the largest process footprint
   nvidia-smi saw: CUDA context and allocator cache included), and the GPU's
   utilisation sampled by nvidia-smi every 0.5 s, over the span and while all k trials
   run. The documented reduction of ``spaces/fixmatch-gpu.yaml``: a trial is FixMatch
   (mu 7, batch 64) for ``--trial-epochs`` x ``--trial-steps`` steps of resnet18 at 64 px
   on the small phantom, where the full space runs 2,560 steps at 128 px on 6,000
   images. Each trial's start (a Ray worker, imports, CUDA context, data) weighs more
   in these short trials than in the full space's: one trial per GPU leaves the GPU
   idle through it, several overlap it, so the gain of sharing is larger here than it
   will be there.

Targets on an H100 (issue 17): at least 25,000 images/s supervised and 6,000 labeled
images/s FixMatch (mu 7) through the device path; 4 trials per GPU at least 3x the
trials/hour of one; GPU utilisation above 80% while 4 trials run.

``--budget-s`` (default 450) bounds the whole run: a measurement that would not end
within it (by the time the earlier ones took) is skipped and marked so. Without a CUDA
device the script says so and exits with status 0; ``--cpu-smoke`` runs every
measurement on the CPU at toy sizes (timm's ``test_resnet`` at 32 px, a few steps, 1
and 2 trials at once with no GPU fraction) in about a minute on two cores, which
tests/test_search_gpu.py runs. pynvml is not part of the project's environment:
utilisation comes from ``nvidia-smi`` when it is on PATH, and the tables say so when it
is not.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("WANDB_MODE", "disabled"),
    ("RADSEARCH_SALT", "benchmark"),
):
    os.environ.setdefault(_key, _value)

# issue 17's targets on an H100
TARGET_SUPERVISED = 25_000  # images/s, resnet18, 64 px, bf16, device path
TARGET_FIXMATCH = 6_000  # labeled images/s, FixMatch mu 7
TARGET_SPEEDUP_4 = 3.0  # trials/hour with 4 trials per GPU over 1
TARGET_UTILISATION_4 = 80.0  # % while 4 trials run

NO_GPU = (
    "benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False), so there "
    "is nothing to measure. Run it on a GPU machine; `python benchmarks/gpu.py --cpu-smoke` "
    "runs its measuring code on the CPU at toy sizes."
)


@dataclass(frozen=True)
class Plan:
    """What one run measures, and at which sizes."""

    device: str  # "cuda" or "cpu"
    backbone: str
    image_size: int
    precision: str  # trial key: "bf16" on the GPU, "32" in the smoke run
    phantom: dict[str, Any]  # the data section: phantom_* keys, or data_dir
    localize: bool
    threads: int
    workers: int  # DataLoader workers of the second loader row
    supervised_batch: int
    fixmatch_batch: int
    mu: int
    step_steps: int  # steps per epoch of the step measurements (2 epochs)
    per_gpu: tuple[int, ...]
    cpus_per_trial: int
    trial_epochs: int
    trial_steps: int
    trial_batch: int


def gpu_plan(args: argparse.Namespace) -> Plan:
    return Plan(
        device="cuda",
        backbone=args.backbone,
        image_size=args.image_size,
        precision="bf16",
        phantom=_phantom(args),
        localize=True,
        threads=args.threads,
        workers=args.workers,
        supervised_batch=args.supervised_batch,
        fixmatch_batch=args.fixmatch_batch,
        mu=args.mu,
        step_steps=args.step_steps,
        per_gpu=tuple(args.per_gpu),
        cpus_per_trial=args.cpus_per_trial,
        trial_epochs=args.trial_epochs,
        trial_steps=args.trial_steps,
        trial_batch=args.fixmatch_batch,
    )


def smoke_plan(args: argparse.Namespace) -> Plan:
    return Plan(
        device="cpu",
        backbone="test_resnet",
        image_size=32,
        precision="32",
        phantom=_phantom(args, default_n=60),
        localize=False,
        threads=1,
        workers=1,
        supervised_batch=8,
        fixmatch_batch=4,
        mu=2,
        step_steps=2,
        per_gpu=(1, 2),
        cpus_per_trial=1,
        trial_epochs=1,
        trial_steps=2,
        trial_batch=4,
    )


def _phantom(args: argparse.Namespace, default_n: int | None = None) -> dict[str, Any]:
    if args.data_dir is not None:
        return {"data_dir": str(Path(args.data_dir).resolve())}
    return {
        "phantom_n": default_n or args.phantom_n,
        "phantom_seed": 0,
        "phantom_size": 256,
        "phantom_labeled_fraction": 0.6,
    }


def trial_settings(plan: Plan) -> dict[str, Any]:
    """Trial keys every measurement shares (data and preprocessing, model, runtime)."""
    return {
        "image_size": plan.image_size,
        "localize": plan.localize,
        "val_fraction": 0.3,
        "test_fraction": 0.25,
        "backbone": plan.backbone,
        "pretrained": "none",  # no download, the same start everywhere
        "precision": plan.precision,
        "channels_last": plan.device == "cuda",
        "select": "last",
    }


# ----------------------------------------------------------------------------- clock


class Clock:
    """The run's time budget: whether a measurement may still start."""

    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def allows(self, needed_s: float) -> bool:
        return self.elapsed() + needed_s <= self.budget_s


# ----------------------------------------------------------------------------- GPU sampling


class GpuSampler:
    """Polls nvidia-smi in a thread: one GPU's utilisation (%) and every compute
    process's memory (MiB), each sample stamped with ``time.time()``."""

    def __init__(self, gpu_index: int = 0, interval_s: float = 0.5):
        self.exe = shutil.which("nvidia-smi")
        self.gpu_index, self.interval_s = gpu_index, interval_s
        self.samples: list[tuple[float, float]] = []
        self.process_mib: dict[int, float] = {}
        self.note: str | None = (
            None
            if self.exe
            else "nvidia-smi is not on PATH and pynvml is not installed: GPU utilisation "
            "and process memory not sampled"
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if self.exe:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _query(self, what: str) -> list[list[str]]:
        out = subprocess.run(
            [str(self.exe), f"--query-{what}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            try:
                for cells in self._query("gpu=index,utilization.gpu"):
                    if len(cells) >= 2 and _number(cells[0]) == self.gpu_index:
                        util = _number(cells[1])
                        if util is not None:
                            self.samples.append((t, util))
                for cells in self._query("compute-apps=pid,used_memory"):
                    pid, mib = (_number(c) for c in cells[:2]) if len(cells) >= 2 else (None, None)
                    if pid is not None and mib is not None:
                        self.process_mib[int(pid)] = max(mib, self.process_mib.get(int(pid), 0.0))
            except (OSError, subprocess.SubprocessError) as e:
                self.note = f"nvidia-smi failed ({e}): sampling stopped"
                return
            self._stop.wait(self.interval_s)

    def mean_utilisation(self, start: float, end: float) -> float | None:
        values = [u for t, u in self.samples if start <= t <= end]
        return statistics.fmean(values) if values else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def visible_gpu_index() -> int:
    """nvidia-smi's index of this process's first CUDA device."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


# ----------------------------------------------------------------------------- 1. steps


@dataclass
class StepRow:
    method: str
    path: str  # "loader" or "device"
    workers: int
    batch: int
    unlabeled_batch: int
    images_per_s: float | None = None
    labeled_per_s: float | None = None
    gpu_mem_mib: float | None = None
    wall_s: float | None = None
    note: str = ""


def measure_steps(plan: Plan, data: Any, clock: Clock, stages: Path) -> list[StepRow]:
    """``fit`` for two epochs per row; the second epoch's rates."""
    import torch

    from pipeline.train import TrainConfig, fit

    shared = {k: v for k, v in trial_settings(plan).items() if k in set(TrainConfig.keys())}
    rows = []
    for method, batch in (("supervised", plan.supervised_batch), ("fixmatch", plan.fixmatch_batch)):
        unlabeled = plan.mu * batch if method == "fixmatch" else 0
        for path, workers in (("loader", 0), ("loader", plan.workers), ("device", 0)):
            row = StepRow(method, path, workers, batch, unlabeled)
            rows.append(row)
            if not clock.allows(30):
                row.note = "skipped: time budget"
                continue
            config = TrainConfig.from_dict(
                {
                    **shared,
                    "method": method,
                    "batch_size": batch,
                    "mu": plan.mu,
                    "epochs": 2,
                    "steps_per_epoch": plan.step_steps,
                    "threads": plan.threads,
                    "device": plan.device,
                    "data_path": path,
                    "num_workers": workers,
                }
            )
            t0 = time.perf_counter()
            result = fit(config, data, cache_root=stages)
            row.wall_s = time.perf_counter() - t0
            last = result.history[-1]
            row.images_per_s = last["train/images_per_s"]
            row.labeled_per_s = last["train/labeled_per_s"]
            row.gpu_mem_mib = last["train/gpu_mem_mib"]
            if result.runtime["data_path"] != path:
                row.note = f"ran through {result.runtime['data_path']}"
            del result
            gc.collect()
            if plan.device == "cuda":
                torch.cuda.empty_cache()
    return rows


def measure_resident_load(plan: Plan, data: Any) -> dict[str, Any]:
    """How long loading a run's three sets onto the device takes, and their size."""
    import torch

    from pipeline.train.resident import ResidentImages

    t0 = time.perf_counter()
    sets = [
        ResidentImages.load(ds, plan.device)
        for ds in (data.labeled, data.unlabeled, data.val)
        if ds is not None
    ]
    if plan.device == "cuda":
        torch.cuda.synchronize()
    out = {
        "crops": sum(len(s) for s in sets),
        "mib": sum(s.nbytes for s in sets) / 2**20,
        "dtype": "uint16" if all(s.table is not None for s in sets) else "float32",
        "seconds": time.perf_counter() - t0,
    }
    del sets
    if plan.device == "cuda":
        torch.cuda.empty_cache()
    return out


def measure_augment(plan: Plan, repeats: int = 10) -> dict[str, float]:
    """Milliseconds a FixMatch step spends in its augmentations on ``plan.device`` (weak
    view of the labeled batch, weak and strong views of the unlabeled one, as
    ``pipeline.train.methods.FixMatch`` calls them), and in drawing the strong view's
    noise on the CPU alone: the part of a step the data path does not change."""
    import torch

    from pipeline.train.augment import strong_augment, weak_augment

    b, size = plan.fixmatch_batch, plan.image_size
    x = torch.rand(b, 1, size, size, device=plan.device)
    u = torch.rand(plan.mu * b, 1, size, size, device=plan.device)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        weak_augment(x, g)
        weak_augment(u, g)
        strong_augment(u, g)

    def timed(fn: Any) -> float:
        fn()  # warm-up
        if plan.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if plan.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats * 1000.0

    return {
        "augment_ms": timed(step),
        "noise_ms": timed(lambda: torch.randn((2, *u.shape), generator=g)),
    }


# ----------------------------------------------------------------------------- 2. trials


@dataclass
class TrialsRow:
    per_gpu: int
    trials: int
    concurrency: int | None = None
    completed: int = 0
    span_s: float | None = None
    trials_per_hour: float | None = None
    speedup: float | None = None
    mean_trial_s: float | None = None
    peak_alloc_mib: float | None = None  # the largest trial's train/gpu_mem_mib
    peak_process_mib: float | None = None  # nvidia-smi: the largest trial process
    util_span: float | None = None
    util_all_running: float | None = None
    note: str = ""
    errors: list[str] = field(default_factory=list)


def trial_space(plan: Plan, k: int, trials: int, cache_dir: Path) -> Any:
    """The reduced space: fixed FixMatch trials, lr and lambda_u searched (Sobol)."""
    from search.space import SpaceConfig

    return SpaceConfig.from_dict(
        {
            "name": f"gpu-bench-{k}-per-gpu",
            "seed": 0,
            "data": {**plan.phantom, "cache_dir": str(cache_dir)},
            "objective": {"metric": "val/auroc"},
            "parameters": {
                **trial_settings(plan),
                "method": "fixmatch",
                "mu": plan.mu,
                "batch_size": plan.trial_batch,
                "data_path": "auto",
                "lr": {"type": "range", "bounds": [3e-4, 3e-3], "scale": "log"},
                "lambda_u": {"type": "range", "bounds": [0.5, 2.0]},
            },
            "budget": {
                "trials": trials,
                "concurrency": k,
                "cpus_per_trial": plan.cpus_per_trial,
                "gpus_per_trial": 1.0 / k if plan.device == "cuda" else 0.0,
                "epochs": plan.trial_epochs,
                "steps_per_epoch": plan.trial_steps,
                "scheduler": "none",
                "algorithm": "sobol",
                "initial_trials": trials,
                "max_failures": 0,
            },
            "tracking": {"mode": "disabled"},
        },
        source="benchmarks/gpu.py",
    )


def measure_trials(
    plan: Plan, clock: Clock, work: Path, cache_dir: Path, cpus: int
) -> tuple[list[TrialsRow], str | None]:
    """One search per k (largest last after 1 and 4, the targets' pair), in one Ray."""
    import ray

    from search.runner import open_experiment, run_search

    order = sorted(plan.per_gpu, key=lambda k: (k not in (1, 4), k))
    rows: dict[int, TrialsRow] = {}
    note = None
    ray.init(  # a Ray of its own, even when another runs on this machine
        address="local",
        num_cpus=cpus,
        num_gpus=1 if plan.device == "cuda" else 0,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        for k in order:
            trials = max(2, k)
            row = rows[k] = TrialsRow(per_gpu=k, trials=trials)
            # about what this search takes: one trial per GPU's span scaled by k / 4, Ray's
            # and Ax's start-up on top (one GPU's work grows with k; each trial's start-up
            # overlaps the others')
            span_1 = rows[1].span_s if rows[1].span_s else 30.0
            if not clock.allows(30.0 + (span_1 if k == 1 else span_1 * k / 4)):
                row.note = "skipped: time budget"
                continue
            space = trial_space(plan, k, trials, cache_dir)
            with GpuSampler(visible_gpu_index()) as sampler:
                result = run_search(
                    space, name=space.name, results_dir=work, progress=False, num_cpus=cpus
                )
            note = sampler.note
            row.concurrency = result.concurrency
            records = list(open_experiment(result.path).trials.values())
            _fill_trials_row(row, records, result.path / "history.jsonl", sampler)
    finally:
        ray.shutdown()
    base = rows.get(1)
    for row in rows.values():
        if base and base.trials_per_hour and row.trials_per_hour:
            row.speedup = row.trials_per_hour / base.trials_per_hour
    return [rows[k] for k in sorted(rows)], note


def _fill_trials_row(
    row: TrialsRow, records: list[dict[str, Any]], history: Path, sampler: GpuSampler
) -> None:
    timed = [r for r in records if r.get("started_t") and r.get("duration_s") is not None]
    done = [r for r in timed if r.get("status") == "completed"]
    row.completed = len(done)
    row.errors = [str(r.get("error"))[:200] for r in records if r.get("status") == "failed"]
    if not timed:
        return
    starts = [float(r["started_t"]) for r in timed]
    ends = [float(r["started_t"]) + float(r["duration_s"]) for r in timed]
    row.span_s = max(ends) - min(starts)
    row.mean_trial_s = statistics.fmean(float(r["duration_s"]) for r in timed)
    if done and row.span_s > 0:
        row.trials_per_hour = len(done) * 3600.0 / row.span_s
    row.util_span = sampler.mean_utilisation(min(starts), max(ends))
    first_wave = sorted(timed, key=lambda r: float(r["started_t"]))[: row.concurrency or 1]
    all_start = max(float(r["started_t"]) for r in first_wave)
    all_end = min(float(r["started_t"]) + float(r["duration_s"]) for r in first_wave)
    if all_end - all_start >= 1.0:
        row.util_all_running = sampler.mean_utilisation(all_start, all_end)
    if history.is_file():
        peaks: dict[int, float] = {}
        for line in history.read_text().splitlines():
            rec = json.loads(line)
            if "train/gpu_mem_mib" in rec:
                trial = int(rec["trial"])
                peaks[trial] = max(peaks.get(trial, 0.0), float(rec["train/gpu_mem_mib"]))
        row.peak_alloc_mib = max(peaks.values()) if peaks else None
    own = os.getpid()
    footprints = [mib for pid, mib in sampler.process_mib.items() if pid != own]
    row.peak_process_mib = max(footprints) if footprints else None
    sampler.process_mib.clear()


# ----------------------------------------------------------------------------- printing


def _f(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def print_steps(
    plan: Plan, rows: list[StepRow], load: dict[str, Any] | None, augment: dict[str, float]
) -> None:
    print(
        f"\n### Training steps: {plan.backbone}, {plan.image_size} px, "
        f"{'bf16 mixed, channels-last' if plan.precision == 'bf16' else 'fp32'}, on {plan.device}"
        f" ({plan.step_steps} steps an epoch, the second of two epochs)\n"
    )
    print(
        "| method | data path | workers | batch (labeled + unlabeled) | images/s "
        "| labeled images/s | peak GPU MiB | fit s | note |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        batch = f"{r.batch} + {r.unlabeled_batch}" if r.unlabeled_batch else f"{r.batch}"
        print(
            f"| {r.method} | {r.path} | {r.workers} | {batch} | {_f(r.images_per_s)} "
            f"| {_f(r.labeled_per_s)} | {_f(r.gpu_mem_mib)} | {_f(r.wall_s, '.1f')} | {r.note} |"
        )
    if load:
        print(
            f"\nResident data: {load['crops']} crops ({load['dtype']}), {load['mib']:.1f} MiB, "
            f"loaded onto {plan.device} in {load['seconds']:.1f} s (once per trial)."
        )
    print(
        f"Augmentations of one FixMatch step ({plan.fixmatch_batch} + "
        f"{plan.mu * plan.fixmatch_batch} images) on {plan.device}: "
        f"{augment['augment_ms']:.1f} ms, of which {augment['noise_ms']:.1f} ms draw the strong "
        "view's noise on the CPU (pipeline.train.augment)."
    )


def print_trials(plan: Plan, rows: list[TrialsRow], note: str | None) -> None:
    print(
        f"\n### Trials per GPU: FixMatch mu {plan.mu}, {plan.backbone} at {plan.image_size} px, "
        f"{plan.trial_epochs} x {plan.trial_steps} steps of {plan.trial_batch} + "
        f"{plan.mu * plan.trial_batch} images, {plan.cpus_per_trial} CPU(s) a trial"
        f"{'' if plan.device == 'cuda' else ', on the CPU (no GPU fraction)'}\n"
    )
    print(
        "| trials per GPU | at once | completed | span s | mean trial s | trials/hour | vs 1 "
        "| peak alloc MiB / trial | peak process MiB | GPU util % (span) "
        "| GPU util % (all running) | note |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r.per_gpu} | {_f(r.concurrency)} | {r.completed}/{r.trials} | {_f(r.span_s, '.1f')} "
            f"| {_f(r.mean_trial_s, '.1f')} | {_f(r.trials_per_hour)} | {_f(r.speedup, '.2f')} "
            f"| {_f(r.peak_alloc_mib)} | {_f(r.peak_process_mib)} | {_f(r.util_span)} "
            f"| {_f(r.util_all_running)} | {r.note} |"
        )
        for error in r.errors:
            print(f"  failed trial ({r.per_gpu} per GPU): {error}")
    if note:
        print(f"\nGPU sampling: {note}.")


def targets(steps: list[StepRow], trials: list[TrialsRow]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's targets (None: not measured)."""

    def device_rate(method: str, attr: str) -> float | None:
        return next(
            (getattr(r, attr) for r in steps if r.method == method and r.path == "device"), None
        )

    sup = device_rate("supervised", "images_per_s")
    fix = device_rate("fixmatch", "labeled_per_s")
    four = next((r for r in trials if r.per_gpu == 4), None)
    out = [
        (
            f"supervised >= {TARGET_SUPERVISED:,} images/s",
            _f(sup),
            None if sup is None else sup >= TARGET_SUPERVISED,
        ),
        (
            f"FixMatch >= {TARGET_FIXMATCH:,} labeled images/s",
            _f(fix),
            None if fix is None else fix >= TARGET_FIXMATCH,
        ),
    ]
    speed = four.speedup if four else None
    util = four.util_all_running if four else None
    out.append(
        (
            f"4 trials per GPU >= {TARGET_SPEEDUP_4:g}x the trials/hour of 1",
            _f(speed, ".2f"),
            None if speed is None else speed >= TARGET_SPEEDUP_4,
        )
    )
    out.append(
        (
            f"GPU utilisation > {TARGET_UTILISATION_4:g}% while 4 trials run",
            _f(util),
            None if util is None else util > TARGET_UTILISATION_4,
        )
    )
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cpu-smoke", action="store_true", help="run the measuring code on the CPU, tiny"
    )
    p.add_argument("--budget-s", type=float, default=450.0, help="bound on the whole run (s)")
    p.add_argument(
        "--data-dir", type=Path, help="a DICOM folder with labels.csv (default: the phantom)"
    )
    p.add_argument("--phantom-n", type=int, default=800, help="phantom images (default 800)")
    p.add_argument(
        "--work", type=Path, help="cache and experiment folders (default: a temporary one)"
    )
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--supervised-batch", type=int, default=256)
    p.add_argument("--fixmatch-batch", type=int, default=64, help="labeled images a FixMatch step")
    p.add_argument("--mu", type=int, default=7)
    p.add_argument("--step-steps", type=int, default=100, help="steps an epoch, step table")
    p.add_argument("--threads", type=int, default=4, help="torch threads of the step table's runs")
    p.add_argument(
        "--workers", type=int, default=4, help="DataLoader workers of the second loader row"
    )
    p.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--cpus-per-trial", type=int, help="default: the CPUs / 8, at least 1")
    p.add_argument("--trial-epochs", type=int, default=3)
    p.add_argument("--trial-steps", type=int, default=100)
    p.add_argument("--json", type=Path, help="also write the tables here")
    args = p.parse_args(argv)
    cpus = os.cpu_count() or 1
    if args.cpus_per_trial is None:
        args.cpus_per_trial = max(1, cpus // max(args.per_gpu))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each table as soon as it is measured
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 0
    plan = smoke_plan(args) if args.cpu_smoke else gpu_plan(args)
    clock = Clock(args.budget_s)
    cpus = 2 if args.cpu_smoke else os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="radsearch-gpu-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("RADSEARCH_CACHE", str(work / "cache"))
        return run(plan, clock, work, cpus, args.json)


def run(plan: Plan, clock: Clock, work: Path, cpus: int, json_path: Path | None) -> int:
    import torch

    import pipeline
    from pipeline.trial import TrialConfig, prepare_data

    device = torch.cuda.get_device_name(0) if plan.device == "cuda" else "CPU (smoke run)"
    print(f"## benchmarks/gpu.py on {device}: torch {torch.__version__}, {cpus} CPUs")
    cache_dir = work / "cache"
    config = {**plan.phantom, "cache_dir": str(cache_dir), **trial_settings(plan)}
    t0 = time.perf_counter()
    counts = pipeline.prepare(config, workers=cpus)
    data = prepare_data(TrialConfig.from_dict({**config, "preprocess_workers": cpus})).train_data()
    source = plan.phantom.get("data_dir") or f"a phantom of {plan.phantom['phantom_n']} images"
    print(
        f"Data: {source}; crops per split {counts['splits']}; prepared (generated and "
        f"preprocessed, or found in the cache) in {time.perf_counter() - t0:.0f} s."
    )
    load = measure_resident_load(plan, data)
    augment = measure_augment(plan)
    steps = measure_steps(plan, data, clock, work / "stages")
    print_steps(plan, steps, load, augment)
    del data
    gc.collect()
    trials, note = measure_trials(plan, clock, work / "results", cache_dir, cpus)
    print_trials(plan, trials, note)
    checks = targets(steps, trials)
    print(
        f"\n### Targets ({'H100, issue 17' if plan.device == 'cuda' else 'not judged in a smoke run'})\n"
    )
    print("| target | measured | met |")
    print("| --- | ---: | --- |")
    for name, measured, met in checks:
        verdict = "-" if met is None or plan.device != "cuda" else ("yes" if met else "no")
        print(f"| {name} | {measured} | {verdict} |")
    print(f"\nTotal {clock.elapsed():.0f} s.")
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "device": device,
                    "plan": asdict(plan),
                    "resident_load": load,
                    "augment": augment,
                    "steps": [asdict(r) for r in steps],
                    "trials": [asdict(r) for r in trials],
                    "targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in checks],
                    "gpu_sampling": note,
                },
                indent=2,
            )
        )
    failed = any(r.errors for r in trials)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
