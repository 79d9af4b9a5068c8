"""Small stand-ins for ``pipeline.run_trial`` used by the search tests.

Each has run_trial's signature ``fn(config, report) -> metrics``. They are loaded by
file path (``--trainable tests/search_fakes.py:quadratic``), so Ray workers receive
them by value and need not import the tests folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import uuid
from pathlib import Path


def _score(config: dict) -> float:
    """A smooth bowl over the test spaces' parameters, best near lr=1e-3, lambda_u=1."""
    lr = float(config.get("lr", 1e-3))
    lam = float(config.get("lambda_u", 1.0))
    bonus = 0.05 if config.get("loss") == "focal" else 0.0
    return 0.95 - 0.08 * (math.log10(lr) + 3.0) ** 2 - 0.1 * (lam - 1.0) ** 2 + bonus


def quadratic(config: dict, report) -> dict:
    """Reports ``config['epochs']`` epochs of a noisy curve rising to the bowl's value."""
    rng = random.Random(
        json.dumps({k: config.get(k) for k in ("lr", "lambda_u", "loss")}, sort_keys=True)
    )
    target = _score(config)
    epochs = int(config.get("epochs", 3))
    if config.get("barrier_dir"):
        _barrier(Path(config["barrier_dir"]), int(config.get("barrier_n", 2)))
    auroc = 0.5
    for epoch in range(1, epochs + 1):
        auroc = 0.5 + (target - 0.5) * epoch / epochs + rng.gauss(0, 0.005)
        report(
            {"epoch": epoch, "train/loss": 1.0 / epoch, "val/auroc": auroc, "val/sensitivity": 0.9}
        )
        time.sleep(float(config.get("sleep_s", 0.0) or os.environ.get("SEARCH_FAKE_SLEEP", 0.05)))
    return {
        "val/auroc": auroc,
        "val/sensitivity": 0.9,
        "val/loss": 1.0 - auroc,
        "val/threshold": 0.4,
    }


def _barrier(folder: Path, n: int) -> None:
    """Check in, then wait until ``n`` trials have (the first ``n`` trials run together).

    No deadline of its own: the test's timeout (pytest-timeout) ends a run that hangs."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / uuid.uuid4().hex).touch()
    while sum(1 for _ in folder.iterdir()) < n:
        time.sleep(0.05)


def raising(config: dict, report) -> dict:
    """Fails for focal loss (after one epoch), like a trial that crashes mid-run."""
    if config.get("loss") == "focal":
        report({"epoch": 1, "val/auroc": 0.6})
        raise RuntimeError("simulated crash in the focal-loss branch")
    return quadratic(config, report)


def logged_quadratic(config: dict, report) -> dict:
    """``quadratic`` that also appends one line per start to ``$SEARCH_FAKE_LOG``, and
    resumes from (and writes) ``checkpoint_dir/last.pt`` like the real trial does."""
    log = os.environ.get("SEARCH_FAKE_LOG")
    ckpt = Path(config["checkpoint_dir"]) / "last.pt"
    start = int(ckpt.read_text()) if ckpt.is_file() else 0
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    {
                        "lr": config["lr"],
                        "lambda_u": config["lambda_u"],
                        "start": start,
                        "pid": os.getpid(),
                    }
                )
                + "\n"
            )

    def report_and_save(metrics: dict) -> None:
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(str(metrics["epoch"]))
        os.replace(tmp, ckpt)
        report(metrics)

    target = _score(config)
    epochs = int(config.get("epochs", 3))
    auroc = 0.5
    for epoch in range(start + 1, epochs + 1):
        time.sleep(float(os.environ.get("SEARCH_FAKE_SLEEP", 0.3)))
        auroc = 0.5 + (target - 0.5) * epoch / epochs
        report_and_save({"epoch": epoch, "val/auroc": auroc})
    return {"val/auroc": auroc}


def hartmann_like(config: dict, report) -> dict:
    """A trainable over free parameter names (x1, x2): no run_trial keys."""
    y = (config["x1"] - 0.3) ** 2 + (config["x2"] - 0.7) ** 2
    return {"loss": y}
