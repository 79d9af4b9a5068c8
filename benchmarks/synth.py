"""How fast the phantom is made, and how hard it is to learn.

    python benchmarks/synth.py                      # 1,000 x 512 px, 1 and 2 workers; difficulty
    python benchmarks/synth.py --no-cnn --n 200     # quicker

1. Synthesis: ``generate(n=1000, size=512)`` with 1 and 2 worker processes, side by
   side, and whether both runs wrote the same bytes.
2. Difficulty, on a held-out, patient-grouped quarter of a separate set (frontal knee
   images, read with ``pipeline.dicom.read_radiograph``):
   - logistic regression on whole images downsampled to 32x32 (must not solve it);
   - logistic regression on knee crops (from the truth boxes, jittered like a
     localizer's boxes) downsampled to 32x32;
   - a small CNN on 64x64 knee crops: binary AUROC and Schatzker macro-F1 (must learn).
   For the linear models the best regularisation on the test split is reported, an
   optimistic figure for them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synth import generate

os.environ.setdefault("RADSEARCH_SALT", "benchmark")


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def bench_synthesis(root: Path, n: int, size: int) -> list[dict]:
    """Wall-clock and CPU seconds (this process plus its workers) per worker count."""
    rows = []
    for workers in (1, 2):
        out = root / f"speed_w{workers}"
        cpu0 = _cpu_seconds()
        t = time.perf_counter()
        generate(out, n, 0, size=size, workers=workers)
        seconds = time.perf_counter() - t
        rows.append(
            {
                "workers": workers,
                "seconds": seconds,
                "cpu": _cpu_seconds() - cpu0,
                "digest": folder_digest(out),
                "mb": sum(p.stat().st_size for p in out.rglob("*.dcm")) / 1e6,
            }
        )
    return rows


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished worker processes
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _read(path: str) -> np.ndarray:
    from pipeline.dicom import read_radiograph

    return read_radiograph(path).image  # (H, W) float32 in [0, 1], bone bright


def _crop(image: np.ndarray, box: list[int], px: int, rng: np.random.Generator) -> np.ndarray:
    """A square knee crop around a jittered box (shift +-6 %, scale +-8 %), (px, px)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * rng.uniform(0.92, 1.08)
    cx = (x0 + x1) / 2 + rng.uniform(-0.06, 0.06) * side
    cy = (y0 + y1) / 2 + rng.uniform(-0.06, 0.06) * side
    m = np.array([[px / side, 0, px / 2 - cx * px / side], [0, px / side, px / 2 - cy * px / side]])
    crop = cv2.warpAffine(image, m, (px, px), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    lo, hi = np.percentile(crop, [1, 99])
    return np.clip((crop - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def load_difficulty_set(out: Path, crop_px: int):
    records = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    records = [r for r in records if r["view"] == "AP"]
    with ProcessPoolExecutor(2) as pool:
        images = list(pool.map(_read, [str(out / r["file"]) for r in records], chunksize=16))
    rng = np.random.default_rng(0)
    whole, crops = [], []
    for r, image in zip(records, images):
        small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
        whole.append((small.ravel(), int(r["schatzker"] > 0), r["patient"]))
        for knee in r["knees"]:
            c = _crop(image, knee["box"], crop_px, rng)
            crops.append(
                (
                    c,
                    cv2.resize(c, (32, 32), interpolation=cv2.INTER_AREA).ravel(),
                    knee["schatzker"],
                    r["patient"],
                )
            )
    return whole, crops


def grouped_test_mask(patients: list[str], seed: int = 0) -> np.ndarray:
    unique = sorted(set(patients))
    rng = np.random.default_rng(seed)
    test = set(rng.choice(unique, size=len(unique) // 4, replace=False))
    return np.array([p in test for p in patients])


def linear_auroc(x: np.ndarray, y: np.ndarray, test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x[~test])
    xtr, xte = scaler.transform(x[~test]), scaler.transform(x[test])
    best = 0.0
    for c in (0.001, 0.01, 0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=3000).fit(xtr, y[~test])
        best = max(best, roc_auc_score(y[test], model.predict_proba(xte)[:, 1]))
    return best


def cnn_scores(crops: np.ndarray, labels: np.ndarray, test: np.ndarray, epochs: int) -> dict:
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import f1_score, roc_auc_score
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(2)

    def conv(cin: int, cout: int, stride: int = 1, k: int = 3) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(  # (B, 1, 64, 64) -> (B, 7); about 10 M multiply-adds per crop
        *conv(1, 16, stride=2, k=5),  # (B, 16, 32, 32)
        *conv(16, 32),
        nn.MaxPool2d(2),  # (B, 32, 16, 16)
        *conv(32, 48),
        nn.MaxPool2d(2),  # (B, 48, 8, 8)
        *conv(48, 64),
        nn.MaxPool2d(2),  # (B, 64, 4, 4)
        *conv(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 7),
    )
    xtr = torch.from_numpy(crops[~test][:, None])  # (N, 1, H, W)
    ytr = torch.from_numpy(labels[~test])
    xte = torch.from_numpy(crops[test][:, None])
    counts = np.bincount(labels[~test], minlength=7).astype(np.float32)
    weight = torch.from_numpy(counts.sum() / np.maximum(counts, 1) / 7)
    steps = epochs * ((len(xtr) + 63) // 64)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = order[i : i + 64]
            xb = xtr[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # mirror: the fibula flips too
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(net(xb), ytr[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        prob = torch.softmax(net(xte), dim=1).numpy()  # (N_test, 7)
    y = labels[test]
    pred = prob.argmax(1)
    return {
        "auroc": roc_auc_score(y > 0, 1.0 - prob[:, 0]),
        "macro_f1": f1_score(y, pred, labels=list(range(7)), average="macro"),
        "macro_f1_types": f1_score(y, pred, labels=list(range(1, 7)), average="macro"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images for the timing (default 1000)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--learn-n", type=int, default=1500, help="images for the difficulty set")
    parser.add_argument("--learn-size", type=int, default=256)
    parser.add_argument(
        "--fracture-rate",
        type=float,
        default=0.5,
        help="fracture rate of the difficulty set (more of every type)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN")
    parser.add_argument("--no-speed", action="store_true", help="skip the synthesis timing")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temporary)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        root = args.out or Path(tmp)
        if not args.no_speed:
            load = os.getloadavg()[0]
            speed = bench_synthesis(root, args.n, args.size)
            same = speed[0]["digest"] == speed[1]["digest"]
            print(
                f"\n### Synthesis: {args.n} images, size {args.size}, {os.cpu_count()} CPUs, "
                f"load average {load:.1f} at start\n"
            )
            print("| workers | wall s | images/s | CPU s per image | MB written | same bytes |")
            print("| ---: | ---: | ---: | ---: | ---: | :---: |")
            for row in speed:
                print(
                    f"| {row['workers']} | {row['seconds']:.1f} | {args.n / row['seconds']:.1f} "
                    f"| {row['cpu'] / args.n:.3f} | {row['mb']:.0f} | {'yes' if same else 'NO'} |",
                    flush=True,
                )

        out = root / "difficulty"
        t = time.perf_counter()
        summary = generate(
            out, args.learn_n, 1, size=args.learn_size, fracture_rate=args.fracture_rate, workers=2
        )
        whole, crops = load_difficulty_set(out, 64)
        prep = time.perf_counter() - t
        xw = np.stack([w[0] for w in whole])
        yw = np.array([w[1] for w in whole])
        tw = grouped_test_mask([w[2] for w in whole])
        xc = np.stack([c[0] for c in crops])
        xc32 = np.stack([c[1] for c in crops])
        yc = np.array([c[2] for c in crops])
        tc = grouped_test_mask([c[3] for c in crops])
        rows = [
            (
                "logistic regression, whole image 32x32",
                "binary AUROC",
                linear_auroc(xw, yw, tw),
                f"{int(tw.sum())} test images",
            ),
            (
                "logistic regression, knee crop 32x32",
                "binary AUROC",
                linear_auroc(xc32, (yc > 0).astype(int), tc),
                f"{int(tc.sum())} test knees",
            ),
        ]
        if not args.no_cnn:
            t = time.perf_counter()
            scores = cnn_scores(xc, yc, tc, args.epochs)
            took = f"{args.epochs} epochs, {time.perf_counter() - t:.0f} s"
            rows += [
                ("small CNN, knee crop 64x64", "binary AUROC", scores["auroc"], took),
                ("small CNN, knee crop 64x64", "Schatzker macro-F1 (0-6)", scores["macro_f1"], ""),
                (
                    "small CNN, knee crop 64x64",
                    "Schatzker macro-F1 (I-VI)",
                    scores["macro_f1_types"],
                    "",
                ),
            ]
        counts = summary["counts"]["schatzker_knees"]
        print(
            f"\n### Difficulty: {args.learn_n} images, size {args.learn_size}, fracture rate "
            f"{args.fracture_rate}; knees (all views) by Schatzker type {counts}; "
            f"generated and read in {prep:.0f} s\n"
        )
        print("| model | metric | held-out value | note |")
        print("| --- | --- | ---: | --- |")
        for model, metric, value, note in rows:
            print(f"| {model} | {metric} | {value:.3f} | {note} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
