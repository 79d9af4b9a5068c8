"""Run a configured chain of steps on one radiograph: ``preprocess(radiograph, config)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipeline.dicom import parse_spacing
from pipeline.preprocess.arrays import to_uint16
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.steps import STEPS, Work, clip_box


class RadiographLike(Protocol):
    """What the chain needs from :class:`pipeline.dicom.Radiograph`."""

    image: np.ndarray  # float32 (H, W) in [0, 1], bone bright
    meta: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Crop:
    """One preprocessed image (one knee of a bilateral radiograph)."""

    image: np.ndarray  # uint16 (H, W), the configured output size
    laterality: str | None  # "L" / "R" / None (unknown)
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the source image
    confidence: float  # localizer confidence in [0, 1] (1.0 without localisation)
    fallback: bool  # True when the localizer was unsure and a centre crop was used


def start_work(radiograph: RadiographLike) -> Work:
    """The chain's first item for a decoded radiograph."""
    image = np.asarray(radiograph.image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D radiograph, got shape {image.shape}")
    meta = dict(radiograph.meta or {})
    lat = meta.get("laterality")
    return Work(
        image=image,
        meta=meta,
        source_shape=(int(image.shape[0]), int(image.shape[1])),
        spacing_mm=parse_spacing(meta.get("pixel_spacing_mm")),
        laterality=lat if lat in ("L", "R") else None,
        source=str(getattr(radiograph, "path", None) or "") or None,
    )


def run_steps(
    radiograph: RadiographLike,
    config: PreprocessConfig,
    *,
    on_step: Callable[[str, list[Work]], None] | None = None,
) -> list[Work]:
    """Apply every step of ``config`` in order; ``on_step(name, items)`` sees each result."""
    items = [start_work(radiograph)]
    if on_step is not None:
        on_step("input", items)
    for step in config.steps:
        spec = STEPS.get(step.name)
        items = [out for item in items for out in spec.apply(item, step.params)]
        if on_step is not None:
            on_step(step.name, items)
    return items


def _final_box(work: Work) -> tuple[int, int, int, int]:
    if work.box is not None:
        return work.box
    h, w = work.image.shape
    return clip_box(work.source_box(0, 0, w, h), work.source_shape)


def to_crops(items: list[Work]) -> list[Crop]:
    """The chain's final items as 16-bit crops."""
    return [
        Crop(
            image=to_uint16(work.image),
            laterality=work.laterality,
            box=_final_box(work),
            confidence=float(work.confidence),
            fallback=bool(work.fallback),
        )
        for work in items
    ]


def preprocess(radiograph: RadiographLike, config: PreprocessConfig) -> list[Crop]:
    """Preprocess one radiograph into 16-bit crops (one per knee; bilateral gives two)."""
    return to_crops(run_steps(radiograph, config))


__all__ = ["Crop", "RadiographLike", "preprocess", "run_steps", "start_work", "to_crops"]
