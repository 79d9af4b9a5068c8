"""Preprocessing speed and knee-localisation quality, side by side in one run.

    python benchmarks/preprocess.py                  # 300-image phantom, 512 px, + 40 at 2500 px
    python benchmarks/preprocess.py --data DIR --workers 2 --repeats 3

Prints markdown tables:

1. images per second for bare decoding (``read_radiograph``), for each step of the
   default trial chain, for the whole chain in memory, and for building the cache
   cold with 1 and N processes and warm (every file unchanged);
2. per transfer syntax: bare decode time against a cold cache build (decode,
   every step, 16-bit store) of the same files, first on a second phantom at
   radiograph size (``--realistic-size``, 2500 px: what decoding costs on real
   files), then on the main phantom (at 512 px a decode takes about a millisecond
   and the steps' fixed per-image costs, ~5 ms, dominate); target: at most 2x;
3. knee localisation on the knee images (``--only localization``: this table alone) (frontal, lateral, all): mean IoU against
   the phantom's boxes, failure rate (IoU < 0.5 or a missed knee), bilateral
   images split into the right knees, laterality right, centre-crop fallbacks; and
   the boxes of the crop-first path the cache build uses, over every knee image.

Targets (issue 3): warm cache >= 100x faster than cold; cold chain within 2x of
bare decode for every transfer syntax; mean IoU >= 0.85 with < 2% failures.
Timings take the best of ``--repeats`` runs (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def generate_phantom(out: Path, n: int, seed: int, size: int, workers: int) -> None:
    from pipeline.synth import generate

    generate(out, n=n, seed=seed, size=size, workers=workers)


def best_of(repeats: int, fn) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn()`` (seconds)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def decode_all(files: list[Path]) -> None:
    """``read_radiograph`` on every file, one image alive at a time, as a cache build
    holds them (a list keeping every 20 MB image alive would time the heap's growth)."""
    from pipeline.dicom import read_radiograph

    for f in files:
        read_radiograph(f)


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def localization_quality(data: Path, config, n: int) -> tuple[str, dict]:
    """Section 3 of the tables: knee localisation against the phantom's boxes (markdown,
    figures), for every knee image of ``data`` with the chain ``config``."""
    # imported here as main() imports: after the thread limits are set
    from pipeline.preprocess.cropfirst import preprocess_file
    from pipeline.preprocess.localizer_train import evaluate_localizer, load_truth, match_knees

    t = time.perf_counter()
    by_view = {v: evaluate_localizer(data, view=v) for v in ("ap", "lat")}
    t_loc = time.perf_counter() - t
    knees = sum(r["knees"] for r in by_view.values())
    combined = {
        "images": sum(r["images"] for r in by_view.values()),
        "knees": knees,
        "mean_iou": sum(r["mean_iou"] * r["knees"] for r in by_view.values()) / knees,
        "median_iou": float("nan"),
        "failure_rate": sum(r["failure_rate"] * r["knees"] for r in by_view.values()) / knees,
        "bilateral_images": sum(r["bilateral_images"] for r in by_view.values()),
        "bilateral_correct": sum(r["bilateral_correct"] for r in by_view.values()),
        "laterality_accuracy": sum(r["laterality_accuracy"] * r["knees"] for r in by_view.values())
        / knees,
        "fallbacks": sum(r["fallbacks"] for r in by_view.values()),
    }
    # the boxes the cache stores (crop-first), against the same truth
    cf_ious: list[float] = []
    for v in ("ap", "lat"):
        for t in load_truth(data, view=v):
            crops, _ = preprocess_file(data / t.file, config)
            cf_ious += match_knees(t.knees, [(c.laterality, c.box) for c in crops])
    crop_first = {
        "images": combined["images"],
        "knees": len(cf_ious),
        "mean_iou": sum(cf_ious) / len(cf_ious),
        "median_iou": sorted(cf_ious)[len(cf_ious) // 2],
        "failure_rate": sum(i < 0.5 for i in cf_ious) / len(cf_ious),
    }
    figures = {**by_view, "all": combined, "crop_first": crop_first}
    rows = []
    for name, r in (
        ("frontal (AP)", by_view["ap"]),
        ("lateral", by_view["lat"]),
        ("all knee images", combined),
    ):
        rows.append(
            [
                name,
                str(r["images"]),
                str(r["knees"]),
                f"{r['mean_iou']:.3f}",
                "-" if r["median_iou"] != r["median_iou"] else f"{r['median_iou']:.3f}",
                f"{100 * r['failure_rate']:.1f}%",
                f"{r['bilateral_correct']}/{r['bilateral_images']}",
                f"{100 * r['laterality_accuracy']:.1f}%",
                str(r["fallbacks"]),
            ]
        )
    r = crop_first
    rows.append(
        [
            "all, crop-first (cache build)",
            str(r["images"]),
            str(r["knees"]),
            f"{r['mean_iou']:.3f}",
            f"{r['median_iou']:.3f}",
            f"{100 * r['failure_rate']:.1f}%",
            "-",
            "-",
            "-",
        ]
    )
    quality = table(
        f"Knee localisation against the phantom's boxes ({n} images)",
        [
            "view",
            "images",
            "knees",
            "mean IoU",
            "median IoU",
            "failures (IoU < 0.5)",
            "bilateral split right",
            "laterality right",
            "centre-crop fallbacks",
        ],
        rows,
    )
    quality += f"\n(target: mean IoU >= 0.85, failures < 2%; evaluated in {t_loc:.1f} s)\n"
    return quality, figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a phantom folder (default: generate one)")
    ap.add_argument("--n", type=int, default=300, help="images to generate (default 300)")
    ap.add_argument("--size", type=int, default=512, help="phantom long side (default 512)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workers", type=int, default=2, help="processes for the parallel build")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64, help="the trial's image_size")
    ap.add_argument(
        "--realistic-n",
        type=int,
        default=40,
        help="images of a second phantom at radiograph size for the per-syntax table (default 40; 0: none)",
    )
    ap.add_argument("--realistic-size", type=int, default=2500, help="its long side (default 2500)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument(
        "--only",
        choices=("all", "localization"),
        default="all",
        help="'localization': only the localisation table (no timings)",
    )
    args = ap.parse_args(argv)

    os.environ.setdefault("RADSEARCH_SALT", "benchmark-salt")
    import cv2
    from threadpoolctl import threadpool_limits

    # One process = one thread, as in a cache build (parallel over processes).
    cv2.setNumThreads(1)
    threadpool_limits(limits=1)
    from pipeline.dicom import read_radiograph
    from pipeline.preprocess import PreprocessConfig, build_cache
    from pipeline.preprocess.chain import start_work
    from pipeline.preprocess.steps import STEPS

    tmp = Path(tempfile.mkdtemp(prefix="radsearch-bench-preprocess-"))
    try:
        data = args.data
        if data is None:
            data = tmp / "phantom"
            t = time.perf_counter()
            generate_phantom(data, args.n, args.seed, args.size, args.workers)
            print(
                f"generated {args.n} images ({args.size} px) in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
        files = sorted((data / "dicom").glob("*.dcm"))
        n = len(files)
        config = PreprocessConfig.from_trial({"image_size": args.image_size})
        if args.only == "localization":
            print(localization_quality(data, config, n)[0])
            return 0
        figures: dict = {
            "images": n,
            "config": config.to_dict(),
            "machine": platform.processor() or platform.machine(),
        }

        # 1. bare decode, once to warm the page cache and group by transfer syntax
        radiographs = [read_radiograph(f) for f in files]
        syntax = collections.defaultdict(list)
        for f, r in zip(files, radiographs, strict=True):
            syntax[r.meta.get("transfer_syntax") or "?"].append(f)
        t_decode = best_of(args.repeats, lambda: decode_all(files))

        # 2. each step of the chain, on the decoded images
        step_time = collections.Counter()

        def run_steps_timed() -> None:
            for r in radiographs:
                items = [start_work(r)]
                for step in config.steps:
                    spec = STEPS.get(step.name)
                    t = time.perf_counter()
                    items = [o for it in items for o in spec.apply(it, step.params)]
                    step_time[step.name] += time.perf_counter() - t

        per_step = {}
        for _ in range(args.repeats):
            step_time.clear()
            run_steps_timed()
            for k, v in step_time.items():
                per_step[k] = min(per_step.get(k, float("inf")), v)
        t_steps = sum(per_step.values())

        from pipeline.preprocess import preprocess

        t_chain_mem = best_of(
            args.repeats, lambda: [preprocess(read_radiograph(f), config) for f in files]
        )
        from pipeline.preprocess.cropfirst import preprocess_file

        t_crop_first = best_of(args.repeats, lambda: [preprocess_file(f, config) for f in files])

        # 3. the cache: cold with 1 and N processes, then warm
        def cold(workers: int, subset: list[Path]) -> float:
            best = float("inf")
            for i in range(args.repeats):
                root = tmp / f"cache-{workers}-{i}-{len(subset)}-{time.perf_counter_ns()}"
                t = time.perf_counter()
                index = build_cache(subset, config, root, workers=workers, progress=False)
                best = min(best, time.perf_counter() - t)
                if index.errors:
                    raise RuntimeError(f"cache build failed on {index.errors[0]}")
                shutil.rmtree(root)
            return best

        t_cold1 = cold(1, files)
        t_coldn = cold(args.workers, files)
        warm_root = tmp / "cache-warm"
        build_cache(files, config, warm_root, progress=False)
        t_warm = best_of(
            args.repeats, lambda: build_cache(files, config, warm_root, progress=False)
        )

        def ips(seconds: float) -> str:
            return f"{n / seconds:,.1f}" if seconds > 0 else "inf"

        rows = [
            ["decode (`read_radiograph`)", ips(t_decode), f"{1000 * t_decode / n:.2f}"],
        ]
        for name in config.step_names():
            rows.append([f"step `{name}`", ips(per_step[name]), f"{1000 * per_step[name] / n:.2f}"])
        rows += [
            ["all steps (decoded input)", ips(t_steps), f"{1000 * t_steps / n:.2f}"],
            ["decode + chain, in memory", ips(t_chain_mem), f"{1000 * t_chain_mem / n:.2f}"],
            [
                "decode + chain crop-first, in memory",
                ips(t_crop_first),
                f"{1000 * t_crop_first / n:.2f}",
            ],
            ["cold cache build, 1 process", ips(t_cold1), f"{1000 * t_cold1 / n:.2f}"],
            [
                f"cold cache build, {args.workers} processes",
                ips(t_coldn),
                f"{1000 * t_coldn / n:.2f}",
            ],
            ["warm cache (no decode, no hash)", ips(t_warm), f"{1000 * t_warm / n:.3f}"],
        ]
        speed = table(
            f"Throughput ({n} images, {args.size} px phantom, image_size {args.image_size}, best of {args.repeats})",
            ["stage", "images/s", "ms/image"],
            rows,
        )
        speed += (
            f"\nwarm vs cold (1 process): **{t_cold1 / t_warm:,.0f}x** faster (target >= 100x)\n"
        )
        figures.update(
            decode_s=t_decode,
            steps_s=per_step,
            chain_mem_s=t_chain_mem,
            crop_first_mem_s=t_crop_first,
            cold_1_s=t_cold1,
            cold_n_s=t_coldn,
            warm_s=t_warm,
        )

        # 4. per transfer syntax: bare decode vs cold chain of the same files, on this
        # phantom and on one at radiograph size (the decode then costs what it does on
        # real files; at 512 px the steps' fixed per-image costs dominate a ~1 ms decode)
        def per_syntax_table(groups: dict[str, list[Path]], size: int) -> tuple[str, dict]:
            rows, found = [], {}
            for name, subset in sorted(groups.items()):
                decode_all(subset)  # warm-up: grey-level tables, page cache, heap
                td = best_of(args.repeats, lambda s=subset: decode_all(s))
                tc = cold(1, subset)
                ratio = tc / td
                rows.append(
                    [
                        name,
                        str(len(subset)),
                        f"{1000 * td / len(subset):.2f}",
                        f"{1000 * tc / len(subset):.2f}",
                        f"{ratio:.2f}x",
                        "yes" if ratio <= 2.0 else "no",
                    ]
                )
                found[name] = {"files": len(subset), "decode_s": td, "cold_s": tc}
            text = table(
                f"Cold chain vs bare decode, per transfer syntax ({size} px phantom, 1 process)",
                [
                    "transfer syntax",
                    "files",
                    "decode ms/image",
                    "cold chain ms/image",
                    "ratio",
                    "<= 2x",
                ],
                rows,
            )
            return text, found

        per_syntax, figures["syntax"] = per_syntax_table(syntax, args.size)
        if args.realistic_n > 0:
            big = tmp / "phantom-realistic"
            t = time.perf_counter()
            generate_phantom(
                big, args.realistic_n, args.seed + 1, args.realistic_size, args.workers
            )
            print(
                f"generated {args.realistic_n} images ({args.realistic_size} px) in "
                f"{time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            big_files = sorted((big / "dicom").glob("*.dcm"))
            groups = collections.defaultdict(list)
            for f in big_files:
                groups[read_radiograph(f).meta.get("transfer_syntax") or "?"].append(f)
            text, figures["syntax_realistic"] = per_syntax_table(groups, args.realistic_size)
            per_syntax = text + "\n" + per_syntax

        quality, figures["localization"] = localization_quality(data, config, n)
        cpus = os.cpu_count()
        print(f"machine: {platform.platform()}, {cpus} CPUs, python {platform.python_version()}\n")
        print(speed)
        print(per_syntax)
        print(quality)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
