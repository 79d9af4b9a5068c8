"""The data side of training: the datasets a run gets, and how steps draw from them.

``TrainData`` holds torch Datasets of dicts (``pipeline.data``'s contract):
``{"image": float32 (C, H, W) in [0, 1], "label": int (-1 = unlabeled), "patient": str,
"meta": dict, ...}``. A dataset may expose ``labels`` (raw labels, one per item) so
samplers do not load images to read them, and an unlabeled dataset may carry the
true labels it hides (``true_labels`` attribute or a ``"true_label"`` item key, as the
phantom does) for the pseudo-label accuracy monitor; they never reach a loss.

One training step's batch comes from one ``StepSampler`` draw: labeled indices from
the configured imbalance sampler and, for semi-supervised methods, unlabeled indices
from a uniform stream, both seeded by ``(seed, epoch)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.train.samplers import BatchSampler, UniformSampler


@dataclass(frozen=True)
class TrainData:
    """Datasets of one run. ``identity``: a stable string naming their content (the cache
    keys of preprocessed images and the split), used to key cached pretraining stages;
    without it the images themselves are hashed."""

    labeled: Dataset
    val: Dataset
    unlabeled: Dataset | None = None
    identity: str | None = None

    def in_chans(self) -> int:
        return int(image_tensor(self.labeled[0]["image"]).shape[0])


def image_tensor(image: Any) -> torch.Tensor:
    """An item's image as float32 (C, H, W); a 2-D image gets one channel."""
    t = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float()
    return t[None] if t.dim() == 2 else t


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Raw labels of every item (N,), from ``dataset.labels`` when offered."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    return np.asarray(labels, dtype=np.int64)


def dataset_groups(dataset: Dataset) -> list[str] | None:
    """The patient of every item (N,) when the dataset offers ``groups``, else ``None``
    (every item its own patient): the unit a bootstrap resamples."""
    groups = getattr(dataset, "groups", None)
    return None if groups is None else [str(g) for g in groups]


def hidden_labels(dataset: Dataset) -> np.ndarray:
    """True labels an unlabeled dataset knows but does not train on (-1 where unknown)."""
    truth = getattr(dataset, "true_labels", None)
    if truth is not None:
        return np.asarray(truth, dtype=np.int64)
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    items = (dataset[i] for i in range(len(dataset)))
    truth = [int(item.get("true_label", item.get("label", -1))) for item in items]
    return np.asarray(truth, dtype=np.int64)


def load_images(dataset: Dataset, indices: Sequence[int]) -> torch.Tensor:
    """Stack the images of ``indices`` into (B, C, H, W) float32."""
    return torch.stack([image_tensor(dataset[int(i)]["image"]) for i in indices])


def dataset_fingerprint(dataset: Dataset | None) -> str:
    """Content identity of a dataset: ``dataset.fingerprint`` if offered, else a hash of its images."""
    if dataset is None:
        return "none"
    offered = getattr(dataset, "fingerprint", None)
    if offered is not None:
        return str(offered() if callable(offered) else offered)
    h = hashlib.sha256()
    h.update(str(len(dataset)).encode())
    for i in range(len(dataset)):
        h.update(image_tensor(dataset[i]["image"]).numpy().tobytes())
    return h.hexdigest()[:16]


class StepSampler(Sampler):
    """Yields one ``(labeled indices, unlabeled indices)`` pair per training step."""

    def __init__(self, labeled: BatchSampler, unlabeled: UniformSampler | None):
        self.labeled = labeled
        self.unlabeled = unlabeled

    def set_epoch(self, epoch: int) -> None:
        self.labeled.set_epoch(epoch)
        if self.unlabeled is not None:
            self.unlabeled.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.labeled)

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        unlabeled = repeat([]) if self.unlabeled is None else self.unlabeled
        yield from zip(self.labeled, unlabeled)


class StepDataset(Dataset):
    """Indexed by a ``StepSampler`` draw; returns the whole step's batch.

    ``{"x": (B, C, H, W), "y": (B,) class indices, "u": (B_u, C, H, W), "u_y": (B_u,)
    hidden true class indices or -1}``; "u" and "u_y" only when the step draws unlabeled.
    """

    def __init__(
        self,
        labeled: Dataset,
        y: np.ndarray,
        unlabeled: Dataset | None = None,
        u_y: np.ndarray | None = None,
    ):
        self.labeled, self.y = labeled, torch.as_tensor(y, dtype=torch.long)
        self.unlabeled = unlabeled
        self.u_y = None if u_y is None else torch.as_tensor(u_y, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, spec: tuple[list[int], list[int]]) -> dict[str, torch.Tensor]:
        xi, ui = spec
        batch = {"x": load_images(self.labeled, xi), "y": self.y[list(xi)]}
        if ui and self.unlabeled is not None:
            batch["u"] = load_images(self.unlabeled, ui)
            if self.u_y is not None:
                batch["u_y"] = self.u_y[list(ui)]
        return batch


class EvalDataset(Dataset):
    """(image, class index) pairs of a labeled dataset, for evaluation loaders."""

    def __init__(self, dataset: Dataset, y: np.ndarray):
        self.dataset, self.y = dataset, np.asarray(y, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return image_tensor(self.dataset[i]["image"]), int(self.y[i])


def collate_eval(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    return {
        "x": torch.stack([x for x, _ in items]),
        "y": torch.as_tensor([y for _, y in items], dtype=torch.long),
    }
