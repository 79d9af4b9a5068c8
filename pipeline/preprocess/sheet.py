"""A contact sheet: every preprocessing step of a few radiographs, side by side, as one PNG.

One row per radiograph: the decoded input with the knee boxes and the out-of-scope
decision drawn on it, then the output of every configured step (the first crop after ``localize``; a bilateral
radiograph's other knee gets a row of its own). The picture is for eyes only, so it
is written as 8-bit PNG; the cache itself stays 16-bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.dicom import DicomError, read_radiograph
from pipeline.io import atomic_write_bytes
from pipeline.preprocess.arrays import scaled_size
from pipeline.preprocess.chain import RadiographLike, run_steps
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.scope import ScopeDecision, decide_image
from pipeline.preprocess.steps import Work

LABEL_H = 18


def _text(img: np.ndarray, text: str, at: tuple[int, int], scale: float, color: Any, *args: int):
    """``cv2.putText`` in the sheet's font; ``args``: thickness and line type."""
    cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, color, *args)


def _tile(image: np.ndarray, size: int, label: str) -> np.ndarray:
    """A (size + LABEL_H, size, 3) uint8 tile: the image fitted in a square, a caption above."""
    img = np.clip(image, 0.0, 1.0)
    h, w = img.shape[:2]
    f = size / max(h, w)
    nw, nh = scaled_size((w, h), f)
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    u8 = (small * 255 + 0.5).astype(np.uint8)
    tile = np.full((size + LABEL_H, size, 3), 40, np.uint8)
    y0, x0 = LABEL_H + (size - nh) // 2, (size - nw) // 2
    tile[y0 : y0 + nh, x0 : x0 + nw] = u8[..., None] if u8.ndim == 2 else u8
    _text(tile, label[:28], (3, 13), 0.4, (230, 230, 230), 1, cv2.LINE_AA)
    return tile


def _with_boxes(
    image: np.ndarray, items: Sequence[Work], scope: ScopeDecision | None = None
) -> np.ndarray:
    rgb = cv2.cvtColor((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    thick = max(1, round(max(image.shape) / 200))
    if scope is not None:  # the out-of-scope decision along the bottom: green in, red out
        color = (0, 220, 0) if scope.in_scope else (40, 40, 255)
        y = image.shape[0] - 6 * thick
        _text(rgb, scope.reason, (3 * thick, y), 0.5 * thick, color, thick)
    for it in items:
        if it.box is None:
            continue
        x0, y0, x1, y1 = it.box
        color = (0, 160, 255) if it.fallback else (0, 220, 0)
        cv2.rectangle(rgb, (int(x0), int(y0)), (int(x1), int(y1)), color, thick)
        text = f"{it.laterality or '?'} {it.confidence:.2f}"
        _text(rgb, text, (int(x0) + 3, int(y0) + 12 * thick), 0.4 * thick, color, thick)
    return rgb.astype(np.float32) / 255.0


def contact_sheet(
    files: Sequence[str | os.PathLike[str]],
    config: PreprocessConfig,
    out: str | os.PathLike[str],
    *,
    count: int = 4,
    tile: int = 160,
    reader: Callable[..., RadiographLike] | None = None,
) -> Path:
    """Write the sheet of the first ``count`` readable files to ``out`` (PNG); returns its path."""
    if reader is None:
        reader, errors = read_radiograph, (DicomError, OSError)
    else:
        errors = (Exception,)
    rows = []
    for f in files:
        if len(rows) >= count:
            break
        try:
            radiograph = reader(f)
        except errors:
            continue  # unreadable: the cache build reports it
        steps: list[tuple[str, list[Work]]] = []
        run_steps(
            radiograph, config, on_step=lambda name, items, s=steps: s.append((name, list(items)))
        )
        final = steps[-1][1]
        scope = decide_image(radiograph.image)
        n_rows = max(1, len(final))
        for k in range(n_rows):
            tiles = [_tile(_with_boxes(radiograph.image, final, scope), tile, f"{Path(f).name}")]
            for name, items in steps[1:]:
                item = items[min(k, len(items) - 1)]
                tiles.append(
                    _tile(item.image, tile, f"{name} {item.image.shape[1]}x{item.image.shape[0]}")
                )
            rows.append(np.hstack(tiles))
    if not rows:
        raise ValueError("no readable radiograph for the contact sheet")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=40) for r in rows]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", np.vstack(rows))
    if not ok:
        raise OSError(f"{out}: cannot encode the contact sheet")
    return atomic_write_bytes(out, png.tobytes())
