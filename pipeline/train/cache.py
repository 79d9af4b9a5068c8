"""The on-disk cache of pretraining stage outputs, safe for concurrent trials.

A stage's output (a state dict) is stored under ``<cache root>/stages/<kind>-<key>.pt``
with a JSON sidecar describing it; the key hashes everything the output depends on.
A file lock per key makes two processes that need the same stage at once compute it
once: the second waits, then loads. Kept free of heavy imports so any process can
use it cheaply.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from pipeline.io import atomic_write_bytes, atomic_write_json, cache_home, stable_hash

log = logging.getLogger(__name__)

STAGE_VERSION = 1
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StageRecord:
    """One stage of a run: its cache key, whether the cache had it, its loss history."""

    kind: str
    key: str
    hit: bool
    path: Path
    seconds: float
    history: list[float] = field(default_factory=list)


def cached_stage(
    kind: str,
    spec: dict[str, Any],
    compute: Callable[[], tuple[StateDict, list[float]]],
    *,
    cache_root: str | os.PathLike[str] | None = None,
) -> tuple[StateDict, StageRecord]:
    """Load the stage ``kind`` for ``spec`` from the cache, or compute and store it.

    ``spec`` must name everything the result depends on (settings, parent stage key,
    data identity). ``compute() -> (state_dict, loss history)`` runs only on a miss.
    ``cache_root``: default ``$RADSEARCH_CACHE``, else ``./.cache/radsearch``.
    """
    key = stable_hash({"kind": kind, "version": STAGE_VERSION, **spec})
    folder = (Path(cache_root) if cache_root is not None else cache_home()) / "stages"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{key}.pt"
    t0 = time.perf_counter()
    with FileLock(str(folder / f"{kind}-{key}.lock")):
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            sidecar = folder / f"{kind}-{key}.json"
            history: list[float] = []
            if sidecar.exists():
                history = list(json.loads(sidecar.read_text()).get("history", []))
            log.info("stage %s: cache hit %s", kind, path.name)
            return state, StageRecord(kind, key, True, path, time.perf_counter() - t0, history)
        state, history = compute()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        seconds = time.perf_counter() - t0
        atomic_write_json(
            folder / f"{kind}-{key}.json",
            {"kind": kind, "key": key, "spec": spec, "history": history, "seconds": seconds},
        )
    log.info("stage %s: computed in %.1fs -> %s", kind, seconds, path.name)
    return state, StageRecord(kind, key, False, path, seconds, list(history))
