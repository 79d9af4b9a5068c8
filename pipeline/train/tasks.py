"""Prediction tasks: the one place that defines each task's class order.

Every part that depends on which output column means which class (label encoding,
loss weights, the prior-initialised output bias, metrics, reports) asks the task.
Raw labels are Schatzker grades (0 = no fracture, 1..6 = plateau fracture types);
``Task.encode`` maps them to the task's class indices, so a binary label table
(0/1) is also accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.registry import Registry

SCHATZKER_NAMES = ("none", "I", "II", "III", "IV", "V", "VI")


@dataclass(frozen=True)
class Task:
    """Class order and label mapping of one prediction task.

    ``head`` is ``"linear"`` (one softmax over ``classes``) or ``"hierarchical"``
    (fracture yes/no, then the type given a fracture; same 7 classes).
    """

    name: str
    classes: tuple[str, ...]
    head: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_multiclass(self) -> bool:
        return self.num_classes > 2

    def encode(self, label: int) -> int:
        """Class index of a raw label (Schatzker grade 0..6); -1 stays -1 (unlabeled)."""
        label = int(label)
        if label < 0:
            return -1
        if label > 6:
            raise ValueError(f"task {self.name!r}: label {label} is not a Schatzker grade 0..6")
        if self.num_classes == 2:
            return int(label > 0)
        return label

    def encode_many(self, labels: Iterable[int]) -> np.ndarray:
        return np.asarray([self.encode(v) for v in labels], dtype=np.int64)

    def class_counts(self, labels: Iterable[int]) -> np.ndarray:
        """Counts per class in this task's order (labels are raw; -1 ignored). (C,)"""
        encoded = self.encode_many(labels)
        encoded = encoded[encoded >= 0]
        return np.bincount(encoded, minlength=self.num_classes).astype(np.int64)

    def fracture_probability(self, probs: torch.Tensor) -> torch.Tensor:
        """P(fracture) from class probabilities (N, C) -> (N,): 1 - P(class 0)."""
        return 1.0 - probs[:, 0]


TASKS: Registry[Task] = Registry("task")


def class_priors(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Laplace-smoothed class priors (C,): classes absent from the labels keep a finite log prior."""
    counts = torch.as_tensor(counts).detach().cpu().double()
    return ((counts + 1.0) / (counts.sum() + counts.numel())).float()


TASKS.register("binary", doc="fracture vs no fracture (2 classes)")(
    Task("binary", ("no_fracture", "fracture"), "linear")
)
TASKS.register("schatzker", doc="Schatzker type, 7 classes (0 = no fracture)")(
    Task("schatzker", SCHATZKER_NAMES, "linear")
)
TASKS.register("hierarchical", doc="fracture yes/no, then the Schatzker type given a fracture")(
    Task("hierarchical", SCHATZKER_NAMES, "hierarchical")
)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def list_tasks() -> list[str]:
    return TASKS.names()
