"""The pipeline on real radiographs: the out-of-scope decision and the knee box, per image.

    python benchmarks/real_images.py                      # ../shared/real_images
    python benchmarks/real_images.py --images DIR --sheet real.png --phantom-n 200

Each picture of the folder (JPEG/PNG exports of real radiographs, RGB-encoded
greyscale) is wrapped in a DICOM file as a user would (Secondary Capture, MONOCHROME2,
8 bits, tagged KNEE / AP whatever it shows, no pixel spacing) and goes through the
cache build of the default trial chain, as a trial's data does. Printed per image: the
decision from the pixels and its score, the knee box, and for each frontal knee its
IoU against the box drawn by hand (``benchmarks/real_image_boxes.csv``, keyed by file
name, with the class each image should get). Then the targets (issue 15): every
frontal knee found with IoU >= 0.6, no lateral, skyline, ankle or hip image taken as a
frontal knee, and the files whose tags (all KNEE / AP here) and pixels disagree.

The hand boxes follow the phantom's knee box: a square of 1.6 times the femoral
condylar width, centred across the condyles, from 0.7 of that width above the joint
line to 0.9 below, clipped to the image (to the frontal panel of a two-view image).

``--phantom-n N`` also decides N held-out phantom images of each style (the default
phantom, and a clinical-style one with every body part; seeds unseen in training)
and prints the accuracy (target >= 0.98). ``--sheet PNG`` draws the contact sheet of
the real images (every preprocessing step, the decision written on the input; the
CC BY-SA images need their attribution wherever the sheet is shown, see the
folder's README). The folder is read where it is and never copied: it defaults to
``$RADSEARCH_REAL_IMAGES``, else ``../shared/real_images`` beside the repository; when
it is missing the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2

from pipeline.data import build_items
from pipeline.preprocess import PreprocessConfig, build_cache
from pipeline.preprocess.hog import box_iou
from pipeline.preprocess.scope_train import evaluate_scope
from pipeline.preprocess.sheet import contact_sheet
from pipeline.synth import ALL_OTHER_PARTS, generate, write_secondary_capture

HERE = Path(__file__).resolve().parent
BOXES = HERE / "real_image_boxes.csv"
SUFFIXES = (".jpg", ".jpeg", ".png")


def default_folder() -> Path:
    env = os.environ.get("RADSEARCH_REAL_IMAGES")
    return Path(env) if env else HERE.parent.parent / "shared" / "real_images"


def read_boxes(path: Path = BOXES) -> dict[str, dict]:
    """file -> {"expected": scope, "box": (x0, y0, x1, y1) or None}."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            box = None
            if row["x0"]:
                box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
            out[row["file"]] = {"expected": row["expected"], "box": box}
    return out


def wrap_folder(images: Path, out: Path) -> list[str]:
    """Every picture of ``images`` as ``out/<same relative path>.dcm``, tagged KNEE / AP;
    returns the pictures' relative paths (the keys of the hand-box CSV)."""
    names = []
    for p in sorted(images.rglob("*")):
        if p.suffix.lower() not in SUFFIXES:
            continue
        rel = p.relative_to(images).as_posix()
        picture = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        target = out / (rel + ".dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        tags = {"BodyPartExamined": "KNEE", "ViewPosition": "AP", "PatientID": rel}
        write_secondary_capture(target, picture, fields=tags)
        names.append(rel)
    return names


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def real_images(images: Path, work: Path, sheet: Path | None) -> bool:
    """Print the per-image table and the targets; True when every target is met."""
    wrapped = work / "dicom"
    names = wrap_folder(images, wrapped)
    truth = read_boxes()
    config = PreprocessConfig.default()
    files = [wrapped / (n + ".dcm") for n in names]
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = build_cache(files, config, work / "cache", progress=False, data_dir=wrapped)
    seconds = time.perf_counter() - t
    by_file: dict[str, list] = {}
    for e in index.entries:
        by_file.setdefault(e.file.removesuffix(".dcm"), []).append(e)
    rows, found, frontal, wrong = [], 0, 0, []
    for name in names:
        entries, want = by_file.get(name, []), truth.get(name, {"expected": "?", "box": None})
        if not entries:
            rows.append([name, want["expected"], "unreadable", "-", "-", "no"])
            continue
        scope = entries[0].scope or {}
        decided = str(scope.get("scope"))
        boxes = [e.box for e in entries]
        iou = max((box_iou(b, want["box"]) for b in boxes), default=0.0) if want["box"] else None
        ok = (
            decided == "frontal_knee"
            if want["expected"] == "frontal_knee"
            else decided != "frontal_knee"
        )
        if want["expected"] == "frontal_knee":
            frontal += 1
            ok = ok and iou is not None and iou >= 0.6
            found += ok
        if not ok:
            wrong.append(name)
        rows.append(
            [
                name,
                want["expected"],
                f"{decided} ({float(scope.get('score', 0)):.2f})",
                "; ".join(
                    f"({', '.join(str(v) for v in b)}) conf {e.confidence:.2f}"
                    for b, e in zip(boxes, entries)
                ),
                "-" if iou is None else f"{iou:.2f}",
                "yes" if ok else "no",
            ]
        )
    print(
        f"### Real radiographs ({len(names)} images from {images}, cache built in {seconds:.1f} s)\n"
    )
    print(
        table(
            [
                "file",
                "expected",
                "decision (score)",
                "knee box (x0, y0, x1, y1)",
                "IoU vs hand box",
                "in or out of scope as expected",
            ],
            rows,
        )
    )
    items = build_items(index, None, data_dir=wrapped)
    print(f"\nfrontal knees found with IoU >= 0.6: {found}/{frontal}")
    taken = [n for n in names if truth.get(n, {}).get("expected") != "frontal_knee" and n in wrong]
    print(f"lateral, skyline, ankle or hip taken as a frontal knee: {len(taken)} {taken or ''}")
    exact = sum(
        str((by_file.get(n) or [None])[0].scope.get("scope")) == truth.get(n, {}).get("expected")
        for n in names
        if by_file.get(n) and by_file[n][0].scope
    )
    print(f"decided as the exact expected class: {exact}/{len(names)}")
    print(f"tags (KNEE / AP on every file) and pixels disagree on {len(items.disagreements)}:")
    for d in items.disagreements:
        print(f"  {d}")
    if sheet is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            contact_sheet(files, config, sheet, count=len(files), tile=180)
        print(f"\ncontact sheet: {sheet}")
    return not wrong


def phantom_accuracy(n: int, work: Path) -> bool:
    """Decide N held-out images of the default phantom and of a clinical one."""
    ok = True
    print(f"\n### Out-of-scope decision on held-out phantom images ({n} of each)\n")
    rows = []
    for name, kwargs in (
        ("default phantom (seed 11)", {"seed": 11}),
        (
            "clinical style, every body part (seed 311)",
            {"seed": 311, "other_parts": ALL_OTHER_PARTS, "other_share": 0.4, "style": "clinical"},
        ),
    ):
        folder = work / f"phantom-{kwargs['seed']}"
        generate(folder, n=n, size=512, **kwargs)
        r = evaluate_scope(folder)
        ok &= r["accuracy"] >= 0.98
        rows.append([name, str(r["images"]), f"{r['accuracy']:.3f}", str(r["confusion"])])
    print(table(["phantom", "images", "accuracy", "confusion (rows truth, cols decision)"], rows))
    print("\n(target: accuracy >= 0.98; classes frontal_knee, other_knee_view, not_knee)")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of pictures (default: ../shared/real_images)",
    )
    ap.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet (PNG)")
    ap.add_argument(
        "--phantom-n",
        type=int,
        default=0,
        help="also decide N held-out phantom images of each style",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("RADSEARCH_SALT", "benchmark-salt")
    cv2.setNumThreads(1)
    images = args.images or default_folder()
    work = Path(tempfile.mkdtemp(prefix="radsearch-bench-real-"))
    try:
        ok = True
        if images.is_dir():
            ok &= real_images(images, work, args.sheet)
        else:
            print(f"{images}: no real images here (set RADSEARCH_REAL_IMAGES or --images); skipped")
        if args.phantom_n > 0:
            ok &= phantom_accuracy(args.phantom_n, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nall targets met: {'yes' if ok else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
