"""Tiny trained models shared by the explain and active-learning tests.

Each is trained once per test session (``pipeline.run_final`` on the phantom fixture,
32 px, one ``test_resnet`` epoch) and reused by every test module that asks for it.
"""

from __future__ import annotations

from pathlib import Path

TINY = {
    "backbone": "test_resnet",
    "image_size": 32,
    "epochs": 1,
    "batch_size": 8,
    "threads": 1,
    "localize": False,
    "val_fraction": 0.25,
    "test_fraction": 0.25,
    "pretrained": "none",
}


def tiny_model(root: Path, phantom_dir: Path, task: str = "binary") -> Path:
    """The model folder of a tiny ``task`` model under ``root`` (trained on first use)."""
    from filelock import FileLock

    from pipeline import run_final

    out = root / f"tiny-{task}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "model.pt").exists():
            config = {
                **TINY,
                "task": task,
                "data_dir": str(phantom_dir),
                "cache_dir": str(root / "cache"),
            }
            run_final(config, out, bootstrap=0)
    return out
