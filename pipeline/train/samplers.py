"""Batch samplers for imbalanced labeled sets, registered by name.

A sampler yields ``steps`` batches of indices per epoch. Its draws come from a
generator seeded by ``(seed, epoch)`` (``set_epoch``), so an epoch's batches depend
only on the seed and the epoch number: a run resumed at an epoch boundary sees the
same batches as one that never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.registry import Registry

SAMPLERS: Registry[type[BatchSampler]] = Registry("sampler")


def list_samplers() -> list[str]:
    return SAMPLERS.names()


class _Stream:
    """Endless draws without replacement from ``indices``, reshuffled after each pass."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.rng = rng
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0

    def take(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self._pos >= len(self._order):
                self._order = self.rng.permutation(self.indices)
                self._pos = 0
            chunk = self._order[self._pos : self._pos + n]
            self._pos += len(chunk)
            n -= len(chunk)
            out.append(chunk)
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class BatchSampler:
    """Base: ``labels`` (N,) are class indices in the task's order (-1 not allowed)."""

    stream_id = 0

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        steps: int,
        *,
        seed: int = 0,
        ratio: float = 0.25,
    ):
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) == 0:
            raise ValueError("a sampler needs at least one sample")
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.seed = int(seed)
        self.ratio = float(ratio)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream_id, self.epoch])

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        raise NotImplementedError

    def _counts(self, num_classes: int | None) -> np.ndarray:
        size = max(int(self.labels.max()) + 1, num_classes or 0)
        return np.bincount(self.labels, minlength=size).astype(np.float64)

    def class_shares(self, num_classes: int | None = None) -> np.ndarray:
        """Expected share of each class among the drawn samples (C,): the class prior
        the model is trained on, which a post-hoc prior correction divides out."""
        counts = self._counts(num_classes)
        return counts / counts.sum()


@SAMPLERS.register("uniform")
class UniformSampler(BatchSampler):
    """Every sample equally likely: successive shuffled passes over the set."""

    stream_id = 1

    def __iter__(self) -> Iterator[list[int]]:
        stream = _Stream(np.arange(len(self.labels)), self.rng())
        for _ in range(self.steps):
            yield stream.take(self.batch_size).tolist()


@SAMPLERS.register("weighted")
class WeightedSampler(BatchSampler):
    """Draws with replacement, probability inversely proportional to the class count."""

    stream_id = 2

    def __iter__(self) -> Iterator[list[int]]:
        rng = self.rng()
        counts = np.bincount(self.labels, minlength=int(self.labels.max()) + 1)
        p = 1.0 / counts[self.labels]
        p /= p.sum()
        for _ in range(self.steps):
            yield rng.choice(len(self.labels), size=self.batch_size, replace=True, p=p).tolist()

    def class_shares(self, num_classes: int | None = None) -> np.ndarray:
        present = (self._counts(num_classes) > 0).astype(np.float64)
        return present / present.sum()


def minority_classes(labels: np.ndarray) -> np.ndarray:
    """Every present class except the most frequent one(s)."""
    counts = np.bincount(labels)
    present = np.flatnonzero(counts > 0)
    return present[counts[present] < counts.max()]


@SAMPLERS.register("ratio")
class RatioSampler(BatchSampler):
    """At least sampler_ratio of every batch from the minority classes, the rest uniform.

    The minority share is spread round-robin over the minority classes, so each of
    them appears in every batch when the share allows it.
    """

    stream_id = 3

    def minority_per_batch(self) -> int:
        return min(self.batch_size, math.ceil(self.ratio * self.batch_size))

    def class_shares(self, num_classes: int | None = None) -> np.ndarray:
        counts = self._counts(num_classes)
        minority = minority_classes(self.labels)
        share = self.minority_per_batch() / self.batch_size if len(minority) else 0.0
        out = (1.0 - share) * counts / counts.sum()
        out[minority] += share / len(minority) if len(minority) else 0.0
        return out

    def __iter__(self) -> Iterator[list[int]]:
        rng = self.rng()
        everything = _Stream(np.arange(len(self.labels)), rng)
        minority = minority_classes(self.labels)
        per_class = [_Stream(np.flatnonzero(self.labels == c), rng) for c in minority]
        n_min = self.minority_per_batch() if len(minority) else 0
        for step in range(self.steps):
            turns = range(step * n_min, (step + 1) * n_min)
            picks = [per_class[turn % len(per_class)].take(1) for turn in turns]
            picks.append(everything.take(self.batch_size - n_min))
            yield rng.permutation(np.concatenate(picks)).tolist()


def build_sampler(
    name: str,
    labels: Sequence[int] | np.ndarray,
    batch_size: int,
    steps: int,
    *,
    seed: int = 0,
    ratio: float = 0.25,
) -> BatchSampler:
    return SAMPLERS.get(name)(labels, batch_size, steps, seed=seed, ratio=ratio)
