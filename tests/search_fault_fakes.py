"""Stand-ins for ``pipeline.run_trial`` that misbehave on purpose (tests of search faults).

``faulty`` plays one fault per trial. The faults are handed out in the order of
``config["faults"]`` (comma-separated) as trials first start: each trial claims the
next free one in ``config["fault_dir"]`` (an exclusive file per fault, holding the
trial's parameters), so a retry of the same trial plays the same fault again. Every
start appends a line to ``fault_dir/starts.jsonl``. Loaded by file path
(``load_trainable("tests/search_fault_fakes.py:faulty")``), so Ray workers get it by value.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _key(config: dict) -> str:
    return json.dumps([config["lr"], config["lambda_u"]])


def claim_fault(config: dict) -> str:
    """The fault of this trial: the one it claimed before, else the next free one."""
    folder = Path(config["fault_dir"])
    faults = str(config["faults"]).split(",")
    key = _key(config)
    for i in range(len(faults)):
        path = folder / f"claim-{i}"
        if path.is_file() and path.read_text() == key:
            return faults[i]
    for i, fault in enumerate(faults):
        try:
            fd = os.open(folder / f"claim-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return fault
    return "none"


def _wait_for_the_driver(checkpoint_dir: Path, epoch: int, timeout: float = 60.0) -> None:
    """Until the driver has recorded this trial's report of ``epoch`` in the experiment's
    ``history.jsonl`` (the folder two levels above ``checkpoints/trial-NNNN``)."""
    index = int(checkpoint_dir.name.rpartition("-")[2])
    history = checkpoint_dir.parent.parent / "history.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history.is_file():
            for line in history.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if row.get("trial") == index and row.get("epoch") == epoch:
                    return
        time.sleep(0.02)
    raise AssertionError(f"the driver never recorded epoch {epoch} of trial {index} in {history}")


def faulty(config: dict, report) -> dict:
    """One trial with the fault it claimed: ``none``, ``raise``, ``nan`` (returns a NaN
    objective), ``nan_loss`` (NaN training loss at epoch 2), ``diverge`` (loss x 100 at
    epoch 3), ``oom_once`` / ``oom_always`` (``torch.OutOfMemoryError`` at the
    configured batch size / at every batch size), ``worker_kill`` (the worker process
    dies in epoch 3 of its first attempt, after two checkpointed epochs)."""
    fault = claim_fault(config)
    folder = Path(config["fault_dir"])
    batch = int(config.get("batch_size", 32))
    ckpt = Path(config["checkpoint_dir"]) / "last.pt"
    start = int(ckpt.read_text()) if ckpt.is_file() else 0
    with open(folder / "starts.jsonl", "a", encoding="utf-8") as f:
        line = {"fault": fault, "start": start, "batch_size": batch, "pid": os.getpid()}
        f.write(json.dumps(line) + "\n")
    if fault == "oom_always" or (fault == "oom_once" and batch >= 32):
        import torch

        raise torch.OutOfMemoryError(f"simulated: tried to allocate 2 GiB at batch {batch}")
    epochs = int(config.get("epochs", 3))
    sleep = float(config.get("sleep_s", 0.05))
    auroc = 0.5
    for epoch in range(start + 1, epochs + 1):
        time.sleep(sleep)
        if fault == "worker_kill" and epoch == 3 and not (folder / "killed").exists():
            (folder / "killed").write_text(str(os.getpid()))
            _wait_for_the_driver(Path(config["checkpoint_dir"]), epoch=2)
            os._exit(1)  # the worker process dies, as on a node failure or the OOM killer
        if fault == "raise" and epoch == 2:
            raise RuntimeError("simulated crash in epoch 2")
        loss = 0.7 / epoch
        if fault == "nan_loss" and epoch == 2:
            loss = float("nan")
        if fault == "diverge" and epoch == 3:
            loss = 70.0
        auroc = 0.5 + 0.1 * epoch * config["lambda_u"] / 2
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(str(epoch))
        os.replace(tmp, ckpt)
        report({"epoch": epoch, "train/loss": loss, "val/auroc": auroc})
    if fault == "nan":
        return {"val/auroc": float("nan"), "fake/batch_size": batch}
    return {"val/auroc": auroc, "fake/batch_size": batch}
