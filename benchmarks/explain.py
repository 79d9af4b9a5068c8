"""Do the heat maps point at the fracture? GradCAM and LRP scored on the phantom.

    python benchmarks/explain.py                    # ~5 min on 2 CPU cores
    python benchmarks/explain.py --image-size 128 --epochs 12 --backbone resnet18

The phantom knows where every fracture is (``truth.jsonl`` polygons), so the
interpretation is measured, not only shown: one model is trained on a phantom set
(supervised, binary task), then every fractured crop of the validation and test splits
gets a GradCAM and an LRP map for the "fracture" output, taken back to source-image
coordinates through its crop box (``pipeline.explain.score``). Printed per method:

- mass inside: the share of the map's positive mass inside the true fracture region;
- pointing game: the share of maps whose maximum lies in the region (within the
  default tolerance);
- against two references that know nothing of the image: a uniform map (its mass
  inside is the region's share of the crop, chance level) and a centred Gaussian map
  (the prior "the fracture is near the middle of the knee crop").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
    os.environ.setdefault(_key, _value)
os.environ.setdefault("RADSEARCH_SALT", "benchmark")


def centred_gaussian(h: int, w: int, sigma: float = 0.2):
    """A map peaked at the crop centre; ``sigma`` as a share of the side."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w]
    d2 = ((yy - (h - 1) / 2) / (sigma * h)) ** 2 + ((xx - (w - 1) / 2) / (sigma * w)) ** 2
    return np.exp(-0.5 * d2).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1200, help="phantom images (1200)")
    p.add_argument("--fracture-rate", type=float, default=0.5)
    p.add_argument("--labeled-fraction", type=float, default=0.8)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["gradcam", "lrp"])
    p.add_argument("--cache", type=Path, default=None, help="phantom and preprocessing cache")
    p.add_argument("--out", type=Path, default=None, help="keep the galleries here")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from pipeline.data import CachedRadiographs
    from pipeline.explain import explain_dataset, score_heatmap
    from pipeline.explain.score import crop_geometry, load_regions, regions_of, summarize
    from pipeline.train import TrainData, evaluate, fit
    from pipeline.trial import TrialConfig, prepare_data

    cache = args.cache or Path(tempfile.mkdtemp(prefix="explain-bench-"))
    out = args.out or Path(tempfile.mkdtemp(prefix="explain-gallery-"))
    cfg = TrialConfig.from_dict(
        {
            "phantom_n": args.n,
            "phantom_fracture_rate": args.fracture_rate,
            "phantom_labeled_fraction": args.labeled_fraction,
            "cache_dir": str(cache),
            "image_size": args.image_size,
            "backbone": args.backbone,
            "pretrained": "none",
            "task": "binary",
            "method": "supervised",
            "sampler": "weighted",
            "epochs": args.epochs,
            "steps_per_epoch": args.steps_per_epoch,
            "batch_size": 32,
            "threads": args.threads,
            "device": "cpu",
            "preprocess_workers": args.threads,
        }
    )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    prepared = prepare_data(cfg)
    t_prep = time.perf_counter() - t0
    data = TrainData(labeled=prepared.train, val=prepared.val, unlabeled=None, identity=None)
    t0 = time.perf_counter()
    result = fit(cfg.train, data)
    t_fit = time.perf_counter() - t0
    test_auroc = evaluate(result.model, prepared.test, threshold=result.threshold).metrics["auroc"]

    fractured = [i for s in (prepared.val, prepared.test) for i in s.items if i.label > 0]
    dataset = CachedRadiographs(fractured, prepared.index)
    preprocess = prepared.index.config
    print(
        f"phantom {args.n} images (fracture rate {args.fracture_rate}), {args.image_size} px, "
        f"{args.backbone}: prepare {t_prep:.0f} s, train {t_fit:.0f} s; "
        f"test AUROC {test_auroc:.3f}; {len(fractured)} fractured crops scored "
        f"(validation + test)\n"
    )

    rows = []
    for method in args.methods:
        t0 = time.perf_counter()
        res = explain_dataset(
            result.model,
            dataset,
            out / method,
            threshold=float(result.threshold),
            method=method,
            n=4,
            data_dir=prepared.data_dir,
            preprocess=preprocess,
        )
        seconds = time.perf_counter() - t0
        s = res.summary
        rows.append(
            (
                method,
                s["scored"],
                s["mass_inside"],
                s["pointing_game"],
                1000 * seconds / max(1, len(fractured)),
            )
        )

    # model-free references, scored through the same geometry
    regions = load_regions(prepared.data_dir)
    size = args.image_size
    refs = {"uniform map (chance)": np.ones((size, size), np.float32)}
    refs["centred Gaussian (prior)"] = centred_gaussian(size, size)
    for name, heat in refs.items():
        scores = []
        for item in fractured:
            geometry = crop_geometry(
                Path(prepared.data_dir) / item.file, preprocess, int(getattr(item.entry, "crop", 0))
            )
            polygons = regions_of(regions, item.file, item.laterality)
            scores.append(score_heatmap(heat, geometry, polygons))
        s = summarize(scores)
        # a flat map has no maximum to point with: no pointing-game figure
        point = float("nan") if name.startswith("uniform") else s["pointing_game"]
        rows.append((name, s["n"], s["mass_inside"], point, float("nan")))

    print("| heat map | fractured crops | mass inside the fracture | pointing game | ms per map |")
    print("|---|---|---|---|---|")
    for name, n, mass, point, ms in rows:
        ms_txt = "-" if ms != ms else f"{ms:.0f}"
        point_txt = "-" if point != point else f"{point:.3f}"
        print(f"| {name} | {n} | {mass:.3f} | {point_txt} | {ms_txt} |")
    print(f"\ngalleries: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
