"""Train and evaluate the knee localizer on a data set with ground-truth knee boxes.

The synthetic phantom (:mod:`pipeline.synth`) writes ``truth.jsonl`` with one box per
knee; any folder laid out the same way (``dicom/*.dcm`` + ``truth.jsonl``) works.

Training (:func:`train_localizer`):

1. Each frontal knee radiograph is decoded and passed through the steps that come
   before ``localize`` in the default chain (``clean``), so the detector learns the
   images it will see; the truth boxes follow the same coordinates.
2. Positives: the window around each knee box (and a few slightly shifted or scaled
   copies), also mirrored left-right, so one detector finds left and right knees.
3. Negatives: random windows elsewhere (other positions and sizes), near misses
   (the knee shifted by a third of its size or scaled by 1.5), then hard negatives
   mined from the detector's own best wrong windows over ``rounds`` rounds.
4. A linear SVM (scikit-learn ``LinearSVC``) separates them; a logistic fit of its
   scores (Platt scaling) turns a score into the confidence.

Evaluation (:func:`evaluate_localizer`) matches each truth knee with the predicted
box of the same laterality (or the best overlap) and reports the mean IoU and the
failure rate (IoU < 0.5, counting missed knees).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from pipeline.dicom import read_radiograph
from pipeline.preprocess.chain import RadiographLike, start_work
from pipeline.preprocess.hog import box_iou, clip_box, patch_features, stretch_levels
from pipeline.preprocess.localizer import KneeLocalizer, save_localizers
from pipeline.preprocess.steps import CleanParams, LocalizeParams, Work, clean_step, detect_knees

FAILURE_IOU = 0.5


@dataclass(frozen=True)
class TruthImage:
    """One frontal radiograph with its knees, from ``truth.jsonl``."""

    file: str  # relative to the data folder
    bilateral: bool
    knees: tuple[tuple[str | None, tuple[float, float, float, float]], ...]  # (laterality, box)


def truth_records(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``folder/truth.jsonl`` (one per image, as the phantom writes them)."""
    path = Path(folder) / "truth.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no ground truth; generate a phantom with `python -m pipeline synth`"
        )
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from e
    return out


def load_truth(data_dir: str | os.PathLike[str], *, view: str = "AP") -> list[TruthImage]:
    """Knee boxes from ``data_dir/truth.jsonl``: the knee images of one view ("AP" or "LAT")."""
    out = []
    for rec in truth_records(data_dir):
        if str(rec.get("view", "")).upper() != view.upper():
            continue
        if str(rec.get("body_part", "KNEE")).upper() != "KNEE":
            continue
        knees = tuple(
            (k.get("laterality"), tuple(float(v) for v in k["box"])) for k in rec.get("knees") or []
        )
        if knees:
            out.append(TruthImage(rec["file"], bool(rec.get("bilateral")), knees))  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class Sample:
    """A decoded image as the localizer sees it, with its truth boxes in its pixels."""

    truth: TruthImage
    work: Work
    boxes: tuple[
        tuple[float, float, float, float], ...
    ]  # current-pixel truth boxes (clipped as given)
    windows: tuple[tuple[float, float, float], ...]  # (cx, cy, side) of each knee, unclipped


def _window_box(cx: float, cy: float, side: float) -> tuple[float, float, float, float]:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _to_current(work: Work, box: Sequence[float]) -> tuple[float, float, float, float]:
    sx, tx, sy, ty = work.to_source
    return ((box[0] - tx) / sx, (box[1] - ty) / sy, (box[2] - tx) / sx, (box[3] - ty) / sy)


def _unclipped_square(box: Sequence[float], shape: tuple[int, int]) -> tuple[float, float, float]:
    """Centre and side of the square knee box that ``box`` is the in-image part of."""
    h, w = shape
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    if x1 - x0 < side - 1:  # cut by the left or right edge
        if x0 <= 1:
            x0 = x1 - side
        elif x1 >= w - 2:
            x1 = x0 + side
    if y1 - y0 < side - 1:
        if y0 <= 1:
            y0 = y1 - side
        elif y1 >= h - 2:
            y1 = y0 + side
    return (x0 + x1) / 2, (y0 + y1) / 2, side


def prepare(radiograph: RadiographLike) -> Work:
    """Apply the steps that come before ``localize`` in the default chain (``clean``)."""
    return clean_step(start_work(radiograph), CleanParams())[0]


def prepare_sample(radiograph: RadiographLike, truth: TruthImage) -> Sample:
    """:func:`prepare`, with the truth boxes mapped to the prepared image's pixels."""
    work = prepare(radiograph)
    shape = radiograph.image.shape
    boxes, windows = [], []
    for _, box in truth.knees:
        cx, cy, side = _unclipped_square(box, shape)
        b = _to_current(work, box)
        u = _to_current(work, _window_box(cx, cy, side))
        boxes.append(b)
        windows.append(((u[0] + u[2]) / 2, (u[1] + u[3]) / 2, u[2] - u[0]))
    return Sample(truth, work, tuple(boxes), tuple(windows))


def _max_iou(box: Sequence[float], sample: Sample) -> float:
    return max((box_iou(box, _window_box(*win)) for win in sample.windows), default=0.0)


def _sample_features(
    sample: Sample, rng: np.random.Generator, context: float, n_random: int
) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """Positives (with jitter and mirror), their side (1 right, 0 left, -1 unknown), negatives."""
    image = sample.work.image
    h, w = image.shape
    pos, sides, neg = [], [], []
    for flip in (False, True):
        img = np.ascontiguousarray(image[:, ::-1]) if flip else image
        feat = functools.partial(patch_features, img, stretch_levels(img))
        for (lat, _), (cx, cy, side) in zip(sample.truth.knees, sample.windows, strict=True):
            if flip:
                cx = w - cx
            right = {"R": 1, "L": 0}.get(str(lat), -1)
            if flip and right >= 0:
                right = 1 - right  # a mirrored right knee looks like a left one
            pos.append(feat(cx, cy, side * context))
            sides.append(right)
            for _ in range(2):  # small shifts and scalings: a peak a few % wide
                j = side * 0.03
                sides.append(right)
                jx, jy = cx + rng.uniform(-j, j), cy + rng.uniform(-j, j)
                pos.append(feat(jx, jy, side * context * rng.uniform(0.97, 1.03)))
            for _ in range(3):  # near misses
                ang = rng.uniform(0, 2 * math.pi)
                d = side * rng.uniform(0.3, 0.5)
                neg.append(feat(cx + d * math.cos(ang), cy + d * math.sin(ang), side * context))
            for sc in (0.6, 1.6):
                neg.append(feat(cx, cy, side * context * sc * rng.uniform(0.95, 1.05)))
    levels = stretch_levels(image)
    med = float(np.median([win[2] for win in sample.windows]))
    tries = 0
    while len(neg) < 10 * len(sample.windows) + n_random and tries < 20 * n_random:
        tries += 1
        side = med * math.exp(rng.uniform(math.log(0.5), math.log(1.8)))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if _max_iou(_window_box(cx, cy, side), sample) < 0.3:
            neg.append(patch_features(image, levels, cx, cy, side * context))
    return pos, sides, neg


def _mine(loc: KneeLocalizer, sample: Sample, per_image: int) -> list[np.ndarray]:
    """The detector's best-scoring windows that are not a knee (IoU < 0.3)."""
    image = sample.work.image
    cands = loc.candidates(image, sample.work.spacing_mm)
    if cands.size == 0:
        return []
    order = np.argsort(-cands[:, 0])
    levels = stretch_levels(image)
    out = []
    for i in order[: 40 * per_image]:
        s, cx, cy, wside = cands[i]
        if s < -1.0:
            break
        if _max_iou(_window_box(cx, cy, wside / loc.context), sample) < 0.3:
            out.append(patch_features(image, levels, cx, cy, wside))
            if len(out) >= per_image:
                break
    return out


def _fit_svm(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    svm = LinearSVC(
        C=c, class_weight="balanced", loss="hinge", max_iter=20000, random_state=seed, dual=True
    )
    svm.fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def _knee_sizes(
    samples: Sequence[Sample],
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(low, median, high) knee box side in mm and as a share of the image height,
    the 1st to 99th percentiles of the training knees widened by 10%."""
    sizes_mm, fracs = [], []
    for s in samples:
        h = s.work.image.shape[0]
        for *_, side in s.windows:
            fracs.append(side / h)
            if s.work.spacing_mm is not None:
                sizes_mm.append(side * math.sqrt(s.work.spacing_mm[0] * s.work.spacing_mm[1]))

    def q(values: list[float], pad: float) -> tuple[float, float, float]:
        lo, med, hi = np.percentile(values, (1, 50, 99))
        return (float(lo / pad), float(med), float(hi * pad))

    return (q(sizes_mm, 1.1) if sizes_mm else (0.0, 0.0, 0.0)), q(fracs, 1.1)


def _platt(loc: KneeLocalizer, pos: list[np.ndarray], neg: list[np.ndarray]) -> tuple[float, float]:
    """Platt scaling of the final scores: (a, c) with P(knee | score) = sigmoid(a * score + c)."""
    x = np.asarray(pos + neg, dtype=np.float32)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    scores = x @ loc.w + loc.b
    lr = LogisticRegression(C=1.0).fit(scores[:, None], y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def _side_model(pos: list[np.ndarray], pos_side: list[int]) -> tuple[np.ndarray | None, float]:
    """Right (1) vs left (0) knee from the same descriptor (the fibula's side), fitted on
    the positives of known side; (None, 0.0) with fewer than 10 of them or one side only."""
    sides = np.asarray(pos_side)
    known = sides >= 0
    if known.sum() < 10 or len(set(sides[known])) != 2:
        return None, 0.0
    side = LogisticRegression(C=0.1, max_iter=2000).fit(
        np.asarray(pos, dtype=np.float32)[known], sides[known]
    )
    return side.coef_[0].astype(np.float32), float(side.intercept_[0])


def train_localizer(
    data_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    rounds: int = 2,
    c: float = 0.01,
    context: float = 1.0,
    negatives_per_image: int = 20,
    mined_per_image: int = 8,
    limit: int | None = None,
    view: str = "ap",
    reader: Callable[..., RadiographLike] | None = None,
    progress: Callable[[str], None] | None = None,
) -> KneeLocalizer:
    """Train the HOG + linear SVM localizer of one view on folders with ``truth.jsonl``.

    Writes the weights (this view alone) to ``out`` when given and returns the
    localizer; :func:`train_localizers` trains and writes every view.
    """
    reader = reader or read_radiograph
    dirs = (
        [Path(data_dir)] if isinstance(data_dir, str | os.PathLike) else [Path(d) for d in data_dir]
    )
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    for d in dirs:
        truth = load_truth(d, view=view)[:limit]
        for i, t in enumerate(truth):
            samples.append(prepare_sample(reader(str(d / t.file)), t))
            if progress is not None and (i + 1) % 50 == 0:
                progress(f"read {i + 1}/{len(truth)} images")
    if not samples:
        raise ValueError(f"no {view.upper()} knee images with boxes in {', '.join(map(str, dirs))}")

    pos, pos_side, neg = [], [], []
    for s in samples:
        p, ps, n = _sample_features(s, rng, context, negatives_per_image)
        pos += p
        pos_side += ps
        neg += n
    size_mm, size_frac = _knee_sizes(samples)
    loc = None
    for r in range(rounds + 1):
        x = np.asarray(pos + neg, dtype=np.float32)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        w, b = _fit_svm(x, y, c, seed)
        loc = KneeLocalizer(
            w=w, b=b, platt=(1.0, 0.0), context=context, size_mm=size_mm, size_frac=size_frac
        )
        if progress is not None:
            progress(f"round {r}: {len(pos)} positives, {len(neg)} negatives")
        if r < rounds:
            for s in samples:
                neg += _mine(loc, s, mined_per_image)
    side_w, side_b = _side_model(pos, pos_side) if view == "ap" else (None, 0.0)
    loc = dataclasses.replace(
        loc,
        platt=_platt(loc, pos, neg),
        side_w=side_w,
        side_b=side_b,
        info={
            "images": len(samples),
            "positives": len(pos),
            "negatives": len(neg),
            "rounds": rounds,
            "C": c,
            "seed": seed,
            "view": view,
            "data": [d.name for d in dirs],
        },
    )
    if out is not None:
        loc.save(out)
    return loc


def train_localizers(
    data_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    views: Sequence[str] = ("ap", "lat"),
    progress: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> dict[str, KneeLocalizer]:
    """One detector per view (frontal "ap", lateral "lat"), written together to ``out``."""
    models = {}
    for v in views:
        say = (lambda m, v=v: progress(f"{v}: {m}")) if progress is not None else None
        try:
            models[v] = train_localizer(data_dir, None, view=v, progress=say, **kwargs)
        except ValueError:
            if v == "ap":
                raise
            if progress is not None:  # no such views: the frontal detector serves them
                progress(f"{v}: no images, skipped")
    if out is not None:
        save_localizers(out, models)
    return models


def match_knees(
    truth: Sequence[tuple[str | None, Sequence[float]]],
    predicted: Sequence[tuple[str | None, Sequence[float]]],
) -> list[float]:
    """IoU of each truth knee with its prediction (same laterality if possible, else best overlap)."""
    ious = []
    for lat, tbox in truth:
        same = [p for p in predicted if lat is not None and p[0] == lat]
        pool = same or list(predicted)
        ious.append(max((box_iou(tbox, p[1]) for p in pool), default=0.0))
    return ious


def evaluate_localizer(
    data_dir: str | os.PathLike[str],
    localizer: KneeLocalizer | None = None,
    *,
    view: str = "ap",
    limit: int | None = None,
    min_confidence: float = 0.5,
    reader: Callable[..., RadiographLike] | None = None,
) -> dict[str, Any]:
    """Mean IoU and failure rate (IoU < 0.5 or a missed knee) over one view's knee images.

    Boxes are compared in source pixels, predictions clipped to the image as the
    truth boxes are.
    """
    reader = reader or read_radiograph
    loc = localizer or KneeLocalizer.load(view=view)
    truth = load_truth(data_dir, view=view)[:limit]
    ious: list[float] = []
    lat_ok = fallbacks = bilateral_ok = bilateral = 0
    for t in truth:
        r = reader(str(Path(data_dir) / t.file))
        work = prepare(r)
        knees = detect_knees(loc, work, LocalizeParams(min_confidence=min_confidence))
        shape = r.image.shape
        pred = [(k.laterality, clip_box(work.source_box(*k.box), shape)) for k in knees]
        fallbacks += sum(k.fallback for k in knees)
        got = match_knees(t.knees, pred)
        ious += got
        lat_ok += sum(1 for lat, _ in t.knees if any(p[0] == lat for p in pred))
        if t.bilateral:
            bilateral += 1
            bilateral_ok += int(
                len(knees) == 2 and {k.laterality for k in knees} == {lat for lat, _ in t.knees}
            )
    n = len(ious)
    return {
        "images": len(truth),
        "knees": n,
        "mean_iou": float(np.mean(ious)) if n else float("nan"),
        "median_iou": float(np.median(ious)) if n else float("nan"),
        "failure_rate": float(np.mean(np.asarray(ious) < FAILURE_IOU)) if n else float("nan"),
        "laterality_accuracy": lat_ok / n if n else float("nan"),
        "bilateral_images": bilateral,
        "bilateral_correct": bilateral_ok,
        "fallbacks": fallbacks,
    }
