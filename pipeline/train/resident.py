"""The device-resident data path: a run's crops on the training device, batches gathered there.

The loader path (a ``DataLoader`` over ``StepDataset``) reads every crop of every step
from the preprocessing cache and stacks the batch on the CPU; on a GPU that feeding,
not the network, sets the pace. A run's crops are small (6,000 crops of 64 x 64 uint16
are 49 MB), so the resident path loads each set (labeled, unlabeled, validation) once
as one tensor on the training device and gathers every batch there by index. The
indices come from the same ``StepSampler`` (same seeds, same order), the augmentations
then run where the batch is (``pipeline.train.augment`` is device-agnostic), and no
``DataLoader`` worker is started.

Same values as the loader path: a set is stored as the 16-bit codes of its crops
(``code / 65535`` is the crop, as ``pipeline.data`` decodes the cache's uint16) when
every image is exactly such a code, else as float32; decoding goes through one table
of the 65,536 float32 values, so a batch is bit-identical to the loader path's.

``data_path`` (a training key) chooses: ``"loader"``, ``"device"``, or ``"auto"``: the
resident path on a GPU when the crops take at most ``RESIDENT_SHARE`` of its memory
(and half of what is free now: other trials may share the GPU), the loader path on
the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.train.batches import StepSampler, image_tensor

log = logging.getLogger(__name__)

#: where a run's batches come from: chosen per device, the cache loader, or the device
DATA_PATHS = ("auto", "loader", "device")
#: the largest share of a GPU's memory a run's resident crops may take under ``auto``
#: (1/16: eight trials sharing a GPU keep their data in half of it at most)
RESIDENT_SHARE = 1 / 16

_CODES = 65536
_OFFSET = 32768  # codes are stored as int16 (code - 32768): index_select runs on every device
#: float32 value of every 16-bit code, as ``pipeline.data.to_unit_float`` computes it
_DECODE = torch.arange(_CODES, dtype=torch.float32) / float(_CODES - 1)


def _encode(x: torch.Tensor) -> torch.Tensor | None:
    """The int16-stored codes of ``x`` when every value is exactly ``code / 65535``, else None."""
    if x.numel() == 0 or not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):  # NaN: None
        return None
    codes = torch.round(x * float(_CODES - 1)).to(torch.int32)
    if not torch.equal(_DECODE[codes], x):
        return None
    return (codes - _OFFSET).to(torch.int16)


@dataclass(frozen=True)
class ResidentImages:
    """One set's images on a device: ``store`` (N, C, H, W), int16 codes when ``table``
    (the (65536,) decode table, on the same device) is set, else float32 values."""

    store: torch.Tensor
    table: torch.Tensor | None

    @classmethod
    def load(cls, dataset: Dataset, device: torch.device | str) -> ResidentImages:
        """Read every image of ``dataset`` once (through its items, as the loader path
        does) and put them on ``device``."""
        n = len(dataset)
        first = image_tensor(dataset[0]["image"])
        codes: torch.Tensor | None = torch.empty((n, *first.shape), dtype=torch.int16)
        values: torch.Tensor | None = None
        for i in range(n):
            x = first if i == 0 else image_tensor(dataset[i]["image"])  # (C, H, W) float32
            if codes is not None:
                code = _encode(x)
                if code is not None:
                    codes[i] = code
                    continue
                # an image that is not a 16-bit code: keep the whole set as float32
                values = _DECODE[codes[:i].to(torch.int32) + _OFFSET]
                values = torch.cat([values, torch.empty((n - i, *first.shape))])
                codes = None
            values[i] = x
        device = torch.device(device)
        if codes is not None:
            return cls(codes.to(device), _DECODE.to(device))
        return cls(values.to(device), None)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def device(self) -> torch.device:
        return self.store.device

    @property
    def nbytes(self) -> int:
        return self.store.numel() * self.store.element_size()

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """Images ``indices`` (B,) (on the store's device) as float32 (B, C, H, W)."""
        picked = self.store.index_select(0, indices)
        if self.table is None:
            return picked
        return self.table[picked.to(torch.int64) + _OFFSET]


def _indices(values: list[int], device: torch.device) -> torch.Tensor:
    """A draw's indices (B,) on ``device``; to a GPU from pinned memory, without waiting
    for the work already queued there."""
    index = torch.as_tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index


class ResidentSteps:
    """One epoch of training batches, gathered on the device, one per ``StepSampler`` draw.

    Yields what ``StepDataset`` does for the same draw: ``{"x": (B, C, H, W), "y": (B,),
    "u": (B_u, C, H, W), "u_y": (B_u,)}`` ("u" and "u_y" only when the step draws
    unlabeled images), on the store's device. ``sampler`` is the ``StepSampler``:
    Lightning calls its ``set_epoch`` before each epoch, as it does a loader's.
    """

    def __init__(
        self,
        sampler: StepSampler,
        labeled: ResidentImages,
        y: np.ndarray,
        unlabeled: ResidentImages | None = None,
        u_y: np.ndarray | None = None,
    ):
        self.sampler = sampler
        self.labeled, self.unlabeled = labeled, unlabeled
        device = labeled.device
        self.y = torch.as_tensor(y, dtype=torch.long).to(device)
        self.u_y = None if u_y is None else torch.as_tensor(u_y, dtype=torch.long).to(device)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for xi, ui in self.sampler:
            yield self.batch(xi, ui)

    def batch(self, xi: list[int], ui: list[int]) -> dict[str, torch.Tensor]:
        """The batch of one draw ``(labeled indices, unlabeled indices)``."""
        device = self.labeled.device
        ix = _indices(xi, device)
        batch = {"x": self.labeled.gather(ix), "y": self.y[ix]}
        if ui and self.unlabeled is not None:
            iu = _indices(ui, device)
            batch["u"] = self.unlabeled.gather(iu)
            if self.u_y is not None:
                batch["u_y"] = self.u_y[iu]
        return batch


class ResidentEval:
    """Validation batches in the dataset's order, ``batch_size`` at a time, as the loader
    path's evaluation ``DataLoader`` gives them: ``{"x": (B, C, H, W), "y": (B,)}``."""

    def __init__(self, images: ResidentImages, y: np.ndarray, batch_size: int):
        self.images, self.batch_size = images, int(batch_size)
        self.y = torch.as_tensor(y, dtype=torch.long).to(images.device)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        device = self.images.device
        for start in range(0, len(self.images), self.batch_size):
            index = torch.arange(
                start, min(start + self.batch_size, len(self.images)), device=device
            )
            yield {"x": self.images.gather(index), "y": self.y[index]}


def resident_bytes(*datasets: Dataset | None) -> int:
    """At most how many bytes the resident path stores for ``datasets`` (float32 each; the
    16-bit codes of cache crops take half), from the first item of each."""
    return sum(
        len(d) * image_tensor(d[0]["image"]).numel() * 4
        for d in datasets
        if d is not None and len(d)
    )


def choose_data_path(
    requested: str, device: torch.device, *datasets: Dataset | None
) -> tuple[str, str]:
    """``"loader"`` or ``"device"`` for a run on ``device`` with ``datasets``, and why.

    ``requested`` other than ``"auto"`` is obeyed (on any device). ``auto``: the resident
    path on a GPU when the crops take at most ``RESIDENT_SHARE`` of its memory and half
    of what is free now; the loader path on the CPU (and on a GPU they do not fit).
    """
    if requested != "auto":
        return requested, f"data_path={requested}"
    if device.type != "cuda":
        return "loader", "auto: the CPU reads crops through the loader"
    need = resident_bytes(*datasets)
    free, total = torch.cuda.mem_get_info(device)
    room = min(RESIDENT_SHARE * total, free / 2)
    mib = 2**20
    if need <= room:
        return "device", f"auto: the crops ({need / mib:.0f} MiB) fit the GPU"
    return "loader", (
        f"auto: the crops ({need / mib:.0f} MiB) exceed {room / mib:.0f} MiB of the GPU "
        f"(1/{round(1 / RESIDENT_SHARE)} of it, half of what is free)"
    )


def resident_loaders(
    sampler: StepSampler,
    labeled: Dataset,
    y: np.ndarray,
    val: Dataset,
    y_val: np.ndarray,
    *,
    device: torch.device,
    eval_batch_size: int,
    unlabeled: Dataset | None = None,
    u_y: np.ndarray | None = None,
) -> tuple[ResidentSteps, ResidentEval]:
    """The training and validation iterables of the resident path (the sets loaded on
    ``device`` once, here)."""
    stores = {
        name: ResidentImages.load(ds, device)
        for name, ds in (("labeled", labeled), ("unlabeled", unlabeled), ("val", val))
        if ds is not None
    }
    log.info(
        "resident data on %s: %s",
        device,
        ", ".join(
            f"{name} {len(s)} ({'uint16' if s.table is not None else 'float32'}, "
            f"{s.nbytes / 2**20:.1f} MiB)"
            for name, s in stores.items()
        ),
    )
    train = ResidentSteps(sampler, stores["labeled"], y, stores.get("unlabeled"), u_y)
    return train, ResidentEval(stores["val"], y_val, eval_batch_size)
