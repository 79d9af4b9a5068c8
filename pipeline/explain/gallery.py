"""The gallery: each image beside its heat-map overlay, with prediction and label.

:func:`write_gallery` writes, into one folder::

    gallery.png          every group as a row of (image, overlay) pairs
    gallery.html         the same as a page (thumbnails in gallery/, captions as text)
    gallery/NNN_image.png, gallery/NNN_overlay.png

and returns an HTML fragment (:attr:`GalleryFiles.fragment`) that the final report
embeds. Pages link the thumbnails instead of inlining them, so a page copied
elsewhere (a W&B HTML panel) carries no pixels unless the pictures go with it.
Captions name images by their salted pseudonym (``pipeline.deid.pseudonym``), never
by path: paths can carry names.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from pipeline.io import atomic_write_bytes, atomic_write_text

GROUPS = ("true positive", "false positive", "false negative", "true negative", "unlabeled")
THUMB = 128  # thumbnail side in pixels


@dataclass(frozen=True, kw_only=True)
class GalleryItem:
    """One crop in the gallery."""

    key: str  # de-identified image key (+ laterality)
    image: np.ndarray  # (H, W) float in [0, 1], the frontal view the model saw
    heat: np.ndarray  # (H, W) float in [0, 1]
    predicted: str  # predicted class name
    probability: float  # probability of the predicted class
    p_fracture: float
    label: str | None  # true class name; None when unlabeled
    group: str  # one of GROUPS
    mass_inside: float | None = None  # heat-map score when the region is known
    pointing_hit: bool | None = None

    def caption(self) -> str:
        parts = [
            self.key,
            f"pred {self.predicted} {self.probability:.2f}",
            f"P(fracture) {self.p_fracture:.2f}",
            f"label {self.label if self.label is not None else '?'}",
        ]
        if self.mass_inside is not None and not math.isnan(self.mass_inside):
            parts.append(
                f"in-region {self.mass_inside:.2f}, " + ("hit" if self.pointing_hit else "miss")
            )
        return " | ".join(parts)


@dataclass(frozen=True, kw_only=True)
class GalleryFiles:
    png: Path
    html: Path
    fragment: str  # HTML to embed in a page in the same folder
    counts: dict[str, int] = field(default_factory=dict)  # items shown per group


def group_of(label_positive: bool | None, predicted_positive: bool) -> str:
    """``true positive`` / ``false positive`` / ``false negative`` / ``true negative``,
    or ``unlabeled`` when the label is unknown."""
    if label_positive is None:
        return "unlabeled"
    if label_positive:
        return "true positive" if predicted_positive else "false negative"
    return "false positive" if predicted_positive else "true negative"


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def display_scale(heat: np.ndarray, *, percentile: float = 99.0) -> np.ndarray:
    """The map divided by its ``percentile`` and clipped to [0, 1], so a map whose mass
    sits in a few pixels (LRP) stays visible; smooth maps (GradCAM) barely change."""
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, None)
    top = float(np.percentile(heat, percentile)) if heat.size else 0.0
    if top <= 0.0:
        top = float(heat.max()) if heat.size else 0.0
    return np.clip(heat / top, 0.0, 1.0) if top > 0 else heat


def overlay(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grey image under a jet-coloured heat map (scaled by
    :func:`display_scale`), the colour's opacity growing with the heat so cold areas
    show the image."""
    heat = display_scale(heat)
    grey = to_uint8(image)
    colour = cv2.applyColorMap(to_uint8(heat), cv2.COLORMAP_JET)[..., ::-1]  # (H, W, 3) RGB
    weight = (alpha * np.clip(heat, 0.0, 1.0))[..., None].astype(np.float32)
    out = grey[..., None].astype(np.float32) * (1 - weight) + colour.astype(np.float32) * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _png(rgb_or_grey: np.ndarray) -> bytes:
    array = rgb_or_grey
    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("could not encode a PNG")
    return buf.tobytes()


def _thumb(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    if max(h, w) >= THUMB:
        return array
    scale = THUMB / max(h, w)
    return cv2.resize(array, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)


def grouped(items: Sequence[GalleryItem]) -> dict[str, list[GalleryItem]]:
    """The items by group, in :data:`GROUPS` order; empty groups left out."""
    by_group = {g: [i for i in items if i.group == g] for g in GROUPS}
    return {g: members for g, members in by_group.items() if members}


def draw_png(items: Sequence[GalleryItem], *, title: str) -> bytes:
    """One row per group, each item as an (image, overlay) pair with its caption."""
    groups = grouped(items)
    rows = max(1, len(groups))
    cols = max([len(v) for v in groups.values()] or [1])
    # A bare Figure, not pyplot: no backend to choose, no global figure to close.
    fig = Figure(figsize=(2 * cols * 1.6, rows * 2.0))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, members) in enumerate(groups.items()):
        axes[r, 0].set_title(name, loc="left", fontsize=8, fontweight="bold", pad=14)
        for c, item in enumerate(members):
            a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
            a.imshow(item.image, cmap="gray", vmin=0, vmax=1)
            b.imshow(overlay(item.image, item.heat))
            label = item.label if item.label is not None else "?"
            b.set_title(
                f"{item.predicted} {item.probability:.2f}, P(fx) {item.p_fracture:.2f}\n"
                f"label {label}",
                fontsize=6,
                pad=2,
            )
            a.text(0, -2, item.key, fontsize=5, va="bottom")
    if not groups:
        axes[0, 0].text(0, 0.5, "no images", fontsize=10)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_gallery(
    items: Sequence[GalleryItem],
    out_dir: str | Path,
    *,
    title: str,
    notes: Sequence[str] = (),
    totals: Mapping[str, int] | None = None,
) -> GalleryFiles:
    """Write the gallery of ``items`` into ``out_dir`` (module docstring).

    ``notes``: lines shown under the title (method, scores). ``totals``: how many
    items each group has in all (the gallery shows a few).
    """
    out = Path(out_dir)
    thumbs = out / "gallery"
    thumbs.mkdir(parents=True, exist_ok=True)
    for old in thumbs.glob("*_*.png"):  # a previous gallery's thumbnails
        old.unlink()
    groups = grouped(items)
    sections = []
    n = 0
    for name, members in groups.items():
        figures = []
        for item in members:
            stem = f"{n:03d}"
            n += 1
            atomic_write_bytes(thumbs / f"{stem}_image.png", _png(_thumb(to_uint8(item.image))))
            atomic_write_bytes(
                thumbs / f"{stem}_overlay.png", _png(_thumb(overlay(item.image, item.heat)))
            )
            alt = html.escape(item.key)
            figures.append(
                "<figure>"
                f'<img src="gallery/{stem}_image.png" alt="{alt}">'
                f'<img src="gallery/{stem}_overlay.png" alt="{alt} heat map">'
                f"<figcaption>{html.escape(item.caption())}</figcaption></figure>"
            )
        total = (totals or {}).get(name, len(members))
        shown = f"{len(members)} of {total}" if total != len(members) else f"{total}"
        sections.append(
            f'<section class="group"><h3>{html.escape(name.capitalize())}s ({shown})</h3>'
            f'<div class="row">{"".join(figures)}</div></section>'
        )
    if not sections:
        sections.append("<p>No images to show.</p>")
    style = (
        "<style>.gallery .row{display:flex;flex-wrap:wrap;gap:8px}"
        ".gallery figure{margin:0;width:264px;font-size:11px}"
        ".gallery img{width:128px;height:auto;margin-right:4px;image-rendering:auto}"
        ".gallery h3{margin:12px 0 4px}</style>"
    )
    note_html = "".join(f"<p>{html.escape(line)}</p>" for line in notes)
    fragment = (
        f'<div class="gallery">{style}<h2>{html.escape(title)}</h2>{note_html}'
        f'<p><a href="gallery.png">gallery.png</a></p>{"".join(sections)}</div>'
    )
    page = (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}</style>"
        f"{fragment}"
    )
    png = atomic_write_bytes(out / "gallery.png", draw_png(items, title=title))
    page_path = atomic_write_text(out / "gallery.html", page)
    return GalleryFiles(
        png=png,
        html=page_path,
        fragment=fragment,
        counts={name: len(members) for name, members in groups.items()},
    )
