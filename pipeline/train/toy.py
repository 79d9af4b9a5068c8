"""A tiny in-memory stand-in for radiograph datasets, for tests, smoke runs and benchmarks.

Images are noisy grey backgrounds; a "fracture" of Schatzker type k (1..6) is a
bright line segment at orientation (k - 1) * 30 degrees, at a random place. A
laterality marker (a small bright square in the top-left corner for L, top-right
for R) ties the ``meta`` dict to the pixels, so metadata pretraining has something
to learn. Items follow ``pipeline.data``'s dataset contract.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.train.batches import TrainData


class ToyRadiographs(Dataset):
    """In-memory dataset of dict items: image (C, H, W) float32, label, patient, meta.

    ``hide_labels``: items report label -1 (an unlabeled pool) while ``true_labels``
    keeps the truth for the pseudo-label accuracy monitor.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        meta: list[dict[str, Any]],
        *,
        hide_labels: bool = False,
        name: str = "toy",
    ):
        self.images = images  # (N, C, H, W)
        self.true_labels = np.asarray(labels, dtype=np.int64)
        self.labels = np.full_like(self.true_labels, -1) if hide_labels else self.true_labels
        self.meta = meta
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "image": self.images[i],
            "label": int(self.labels[i]),
            "true_label": int(self.true_labels[i]),
            "patient": f"{self.name}-{i:05d}",
            "file": f"{self.name}/{i:05d}.dcm",
            "laterality": self.meta[i]["laterality"],
            "meta": self.meta[i],
        }


def toy_images(
    labels: np.ndarray, *, size: int = 32, in_chans: int = 1, seed: int = 0
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Images (N, C, size, size) for raw Schatzker ``labels`` (N,) and their meta dicts."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    images = np.empty((n, in_chans, size, size), dtype=np.float32)
    meta: list[dict[str, Any]] = []
    for i, label in enumerate(labels):
        tilt = rng.uniform(-0.3, 0.3)
        img = 0.3 + 0.15 * (tilt * (xx - 0.5) + (yy - 0.5)) + rng.normal(0.0, 0.05, (size, size))
        if label > 0:
            angle = math.radians((label - 1) * 30.0)
            cx, cy = rng.uniform(0.3, 0.7, size=2)
            half = 0.3
            # distance of each pixel to the segment through (cx, cy) at ``angle``
            dx, dy = xx - cx, yy - cy
            along = dx * math.cos(angle) + dy * math.sin(angle)
            across = -dx * math.sin(angle) + dy * math.cos(angle)
            on = (np.abs(along) <= half) * np.exp(-((across * size / 1.5) ** 2))
            img = img + 0.5 * on
        lat = "L" if rng.random() < 0.5 else "R"
        m = max(2, size // 10)
        if lat == "L":
            img[:m, :m] = 0.95
        else:
            img[:m, -m:] = 0.95
        images[i] = np.clip(img, 0.0, 1.0)[None].repeat(in_chans, axis=0)
        meta.append(
            {
                "view": "AP",
                "laterality": lat,
                "body_part": "KNEE",
                "patient_sex": float(rng.random() < 0.5),
                "patient_age": float(rng.uniform(20, 90)),
            }
        )
    return torch.from_numpy(images), meta


def toy_labels(n: int, *, fracture_rate: float, task: str = "binary", seed: int = 0) -> np.ndarray:
    """Raw Schatzker labels: 0 with probability 1 - fracture_rate, else type 1..6 (or 1)."""
    rng = np.random.default_rng(seed)
    fracture = rng.random(n) < fracture_rate
    kinds = rng.integers(1, 7, size=n) if task != "binary" else np.ones(n, dtype=np.int64)
    labels = np.where(fracture, kinds, 0).astype(np.int64)
    if n >= 2 and fracture_rate > 0:  # at least one of each class that the task needs
        labels[0] = 0
        labels[1] = 1
    return labels


def toy_train_data(
    *,
    n_labeled: int = 64,
    n_unlabeled: int = 128,
    n_val: int = 64,
    size: int = 32,
    in_chans: int = 1,
    fracture_rate: float = 0.3,
    task: str = "binary",
    seed: int = 0,
) -> TrainData:
    """Labeled, unlabeled (labels hidden) and validation toy sets."""
    parts = {}
    for k, (name, n) in enumerate(
        (("labeled", n_labeled), ("unlabeled", n_unlabeled), ("val", n_val))
    ):
        labels = toy_labels(n, fracture_rate=fracture_rate, task=task, seed=seed * 10 + k)
        images, meta = toy_images(labels, size=size, in_chans=in_chans, seed=seed * 10 + k + 100)
        parts[name] = ToyRadiographs(
            images, labels, meta, hide_labels=name == "unlabeled", name=name
        )
    identity = (
        f"toy/{n_labeled}/{n_unlabeled}/{n_val}/{size}/{in_chans}/{fracture_rate}/{task}/{seed}"
    )
    return TrainData(
        labeled=parts["labeled"], val=parts["val"], unlabeled=parts["unlabeled"], identity=identity
    )
