"""PyTorch datasets over the preprocessing cache, for labeled and unlabeled items.

Each item is a dict::

    {"image": float32 tensor (C, H, W) in [0, 1],   # C = 1 ("ap") or 2 ("ap+lat")
     "label": int,                                  # Schatzker grade 0..6, -1 = unlabeled
     "patient": str, "file": str, "laterality": "L" | "R" | None,
     "meta": dict,                                  # de-identified header meta + crop_* keys
     "view_mask": bool tensor (C,)}                 # which channels hold a real view

Views (``views``, the space parameter of the same name):

- ``"ap"``: the frontal knee crop, one channel.
- ``"ap+lat"``: the frontal crop and the lateral view of the same study and knee (its
  ``Item.partner``, see :mod:`pipeline.data.items`) stacked as two channels; the
  lateral image is resized to the frontal crop's size when they differ.
  ``missing_view`` says what happens to items without a lateral view:
  ``"zero"`` (default) keeps them with a zero second channel and
  ``view_mask = [True, False]``, so a model can tell "no view" from "dark image";
  ``"drop"`` leaves them out of the dataset (listed in ``dataset.dropped``).

Labels stay raw Schatzker grades; ``pipeline.train.tasks.Task.encode`` maps them to a
task's classes (binary: ``schatzker != 0``). Use :func:`collate` as the DataLoader's
``collate_fn``: PyTorch's default collate cannot batch ``None`` lateralities or meta
dicts with missing values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.items import Item, items_from_entries
from pipeline.registry import check_choice

VIEWS = ("ap", "ap+lat")
MISSING_VIEW = ("zero", "drop")


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """A cached crop (uint16 by contract; other integer types accepted) -> float32 in [0, 1]."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        scale = float(np.iinfo(array.dtype).max)
        return (array.astype(np.float32) / scale).clip(0.0, 1.0)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    raise TypeError(f"cached crop has dtype {array.dtype}; expected uint16")


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


class CachedRadiographs(Dataset):
    """Items of the cache as model inputs (module docstring: keys, views, missing views).

    ``items``: :class:`pipeline.data.Item` objects (from :func:`pipeline.data.build_items`,
    usually filtered by ``Splits.select``), or bare cache entries, which become unlabeled
    items. ``index``: the ``CacheIndex`` whose ``load(entry)`` returns the uint16 crop.
    ``transform``: optional callable on the (C, H, W) float tensor, applied to all
    channels at once.
    """

    def __init__(
        self,
        items: Iterable[Any],
        index: Any,
        *,
        views: str = "ap",
        missing_view: str = "zero",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        data_dir: str | Path | None = None,
    ):
        self.views = check_choice("views", views, VIEWS)
        self.missing_view = check_choice("missing view policy", missing_view, MISSING_VIEW)
        self.index = index
        self.transform = transform
        all_items = [
            x if isinstance(x, Item) else items_from_entries([x], data_dir=data_dir)[0]
            for x in items
        ]
        for item in all_items:
            if item.entry is None:
                raise ValueError(
                    f"{item.file}: item has no cache entry; build items with pipeline.data.build_items(index, ...)"
                )
        self.dropped: list[Item] = []
        if self.views == "ap+lat" and self.missing_view == "drop":
            self.dropped = [i for i in all_items if i.partner is None]
            all_items = [i for i in all_items if i.partner is not None]
        self.items: list[Item] = all_items

    @property
    def channels(self) -> int:
        return 2 if self.views == "ap+lat" else 1

    @property
    def labels(self) -> np.ndarray:
        """Raw labels (N,), -1 = unlabeled: for samplers and class counts."""
        return np.asarray([i.label for i in self.items], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        """The patient key of every item (N,): crops of one patient belong together."""
        return [i.patient for i in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.items[idx]
        ap = to_unit_float(self.index.load(item.entry))  # (H, W)
        if ap.ndim != 2:
            raise ValueError(f"{item.file}: cached crop has shape {ap.shape}; expected (H, W)")
        if self.views == "ap":
            image = ap[None]  # (1, H, W)
            mask = [True]
        else:
            if item.partner is not None:
                lat = to_unit_float(self.index.load(item.partner))
                if lat.shape != ap.shape:
                    lat = _resize(lat, ap.shape)
                mask = [True, True]
            else:
                lat = np.zeros_like(ap)
                mask = [True, False]
            image = np.stack([ap, lat])  # (2, H, W)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if self.transform is not None:
            tensor = self.transform(tensor)
        entry = item.entry
        meta = dict(item.meta)
        meta.update(
            crop_box=getattr(entry, "box", None),
            crop_confidence=getattr(entry, "confidence", None),
            crop_fallback=getattr(entry, "fallback", None),
        )
        return {
            "image": tensor,
            "label": int(item.label),
            "patient": item.patient,
            "file": item.file,
            "laterality": item.laterality,
            "meta": meta,
            "view_mask": torch.tensor(mask, dtype=torch.bool),
        }


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch item dicts: tensors stacked ((B, C, H, W) images), labels as a long tensor,
    everything else (patient, file, laterality, meta) as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif key == "label":
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out
