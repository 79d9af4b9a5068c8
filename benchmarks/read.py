"""Reading speed: ``read_radiograph`` next to pydicom, per transfer syntax, in one run.

    python benchmarks/read.py [--n 3] [--repeats 3] [--rows 2500] [--cols 2000] [--synth-n 0]
    python benchmarks/read.py --in-process      # only the interleaved, one-process timing

For each transfer syntax the synthetic set writes (uncompressed, RLE, JPEG 2000,
JPEG-lossless) it writes ``--n`` 12-bit radiographs of about 2500x2000 with
``pipeline.synth.generate`` (same seed, so the same images and headers in every
syntax), then times, interleaved over ``--repeats`` rounds:

- ``bare``: ``pydicom.dcmread(f).pixel_array`` with pydicom's default decoder;
- ``pydicom+LUT``: the same plus pydicom's ``apply_modality_lut`` and ``apply_voi_lut``;
- ``read_radiograph``: decode with the preferred plugin plus the whole grey-level
  chain to float32 [0, 1] plus the de-identified meta;
- each installed decoding plugin alone (``Decoder.as_array``), to check the preference
  order of ``pipeline.dicom.DECODER_PREFERENCE`` on this machine.

Each reader is timed in a process of its own (``--isolated``, the default): a
pipeline reads every file through one reader, and how fast a reader is depends on the
state its own allocations leave the heap in (bare pydicom allocates 20 MB per 10 MB
file, whose pages the allocator may hand back to the system and fault in again). The
same readers interleaved in one process, as earlier versions of this script timed
them, are printed as a second table: there each reader reuses the others' freed
memory, which moves the bare decode by up to 3x from run to run.

Then the grey-level chain alone on one decoded 12-bit image (affine shortcut, table
lookup, pydicom's LUT functions), and optionally the time to synthesize
``--synth-n`` 512-pixel images. Targets: ``read_radiograph`` within 1.3x of the bare
decode for every syntax and faster than pydicom's decode+LUT path; the chain alone at
100 images/s or more. Timings are medians over rounds (the machine may be shared:
the load average is printed with the results).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from pipeline.dicom import GreyLevelChain, decode_pixels, decoder_order, read_radiograph
from pipeline.synth import generate

SYNTAXES = ("uncompressed", "rle", "jpeg2000", "jpeg_lossless")


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def write_files(
    root: Path, n: int, rows: int, cols: int, seed: int
) -> tuple[dict[str, list[Path]], str]:
    """``n`` files per syntax; returns them and a note on how they were written."""
    files: dict[str, list[Path]] = {}
    for name in SYNTAXES:
        out = root / name
        generate(out, n, seed, size=(rows, cols), transfer_syntaxes=(name,), bits_stored=(12,))
        files[name] = sorted((out / "dicom").glob("*.dcm"))
    return files, "pipeline.synth.generate (same seed for every syntax: same images and headers)"


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def bare(path: Path) -> None:
    pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point


def pydicom_lut(path: Path) -> None:
    ds = pydicom.dcmread(path)
    apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)


def ours(path: Path) -> None:
    read_radiograph(path)


def plugin_reader(plugin: str) -> Callable[[Path], None]:
    def read(path: Path) -> None:
        ds = pydicom.dcmread(path)
        get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, decoding_plugin=plugin)

    return read


def time_rounds(
    methods: dict[str, Callable[[Path], None]], files: list[Path], repeats: int
) -> dict[str, float]:
    """Median seconds per image of each method; methods interleaved within each round."""
    per_image: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for name in names:  # warm-up: imports, LUT caches, page cache
        methods[name](files[0])
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            for path in files:
                methods[name](path)
            per_image[name].append((time.perf_counter() - start) / len(files))
    return {name: statistics.median(times) for name, times in per_image.items()}


READERS: dict[str, Callable[[Path], None]] = {
    "bare": bare,
    "pydicom+LUT": pydicom_lut,
    "read_radiograph": ours,
}


def time_isolated(names: list[str], files: list[Path], repeats: int) -> dict[str, float]:
    """Median seconds per image of each reader, each in a fresh process of its own.

    Rounds alternate the readers' processes; within its process a reader reads the
    files once to warm up (imports, tables, page cache), then ``PASSES`` times.
    """
    per_image: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", name, *map(str, files)],
                check=True,
                capture_output=True,
                text=True,
                env=dict(os.environ, PYTHONWARNINGS="ignore"),
            ).stdout
            per_image[name].append(float(out.strip().splitlines()[-1]))
    return {name: statistics.median(times) for name, times in per_image.items()}


#: Passes over the files in a worker process (median reported).
PASSES = 5


def worker(name: str, files: list[Path]) -> None:
    """Print the median seconds per image of reader ``name`` over :data:`PASSES` passes."""
    warnings.simplefilter("ignore")
    fn = READERS[name]
    for path in files:
        fn(path)
    times = []
    for _ in range(PASSES):
        start = time.perf_counter()
        for path in files:
            fn(path)
        times.append((time.perf_counter() - start) / len(files))
    print(statistics.median(times))


def time_call(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="files per transfer syntax")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (median reported)")
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--cols", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--synth-n", type=int, default=0, help="also time synthesizing N 512-px images"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="skip the one-process-per-reader timing (faster; the interleaved table only)",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], [Path(p) for p in args.worker[1:]])
        return 0
    warnings.simplefilter("ignore")
    os.environ.setdefault("RADSEARCH_SALT", "benchmark")

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="radsearch-read-") as tmp:
        start = time.perf_counter()
        files, source = write_files(Path(tmp), args.n, args.rows, args.cols, args.seed)
        print(
            f"files: {args.n} per syntax, {args.rows}x{args.cols}, 12 bits, written in "
            f"{time.perf_counter() - start:.1f} s by {source}"
        )
        print(f"machine: {os.cpu_count()} CPUs; load average at start {load_before[0]:.2f}\n")

        tables: dict[str, list[tuple]] = {"isolated": [], "interleaved": []}
        plugin_rows = []
        for name in SYNTAXES:
            ds = pydicom.dcmread(files[name][0], stop_before_pixels=True)
            ts = ds.file_meta.TransferSyntaxUID
            timings = {"interleaved": time_rounds(READERS, files[name], args.repeats)}
            if not args.in_process:
                timings["isolated"] = time_isolated(list(READERS), files[name], args.repeats)
            for kind, results in timings.items():
                ratio = results["read_radiograph"] / results["bare"]
                ok = ratio <= 1.3 and results["read_radiograph"] < results["pydicom+LUT"]
                tables[kind].append(
                    (
                        name,
                        ts.name,
                        results["bare"],
                        results["pydicom+LUT"],
                        results["read_radiograph"],
                        ratio,
                        ok,
                        decoder_order(ts)[0] or "numpy",
                    )
                )
            plugins = decoder_order(ts)
            if plugins != ("",):
                timed = time_rounds(
                    {p: plugin_reader(p) for p in plugins}, files[name], args.repeats
                )
                plugin_rows.append(
                    (name, ", ".join(f"{p} {1 / s:.1f}" for p, s in timed.items()), plugins[0])
                )

        titles = {
            "isolated": "Each reader in a process of its own (what a pipeline sees)",
            "interleaved": "The readers interleaved in one process (they reuse each other's memory)",
        }
        for kind, rows in tables.items():
            if not rows:
                continue
            print(f"{titles[kind]}, median of {args.repeats} rounds:\n")
            print(
                "| syntax | bare pixel_array img/s | pydicom decode+LUT img/s | read_radiograph img/s "
                "| read / bare time | target met | decoder used |"
            )
            print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
            for name, ts_name, b, p, o, ratio, ok, used in rows:
                print(
                    f"| {name} ({ts_name}) | {1 / b:.1f} | {1 / p:.1f} | {1 / o:.1f} | {ratio:.2f}x "
                    f"| {'yes' if ok else 'NO'} | {used} |"
                )
            print()
        print(
            "\nDecoding plugins alone (dcmread + Decoder.as_array), img/s, in preference order:\n"
        )
        print("| syntax | plugins | first choice |")
        print("| --- | --- | --- |")
        for name, text, first in plugin_rows:
            print(f"| {name} | {text} | {first} |")

        # the grey-level chain alone, on the decoded pixels of the first uncompressed file
        print("\nGrey-level chain alone (decoded pixels in memory -> float32 [0, 1]), img/s:\n")
        print(
            "| image | chain | affine shortcut | table lookup | pydicom apply_modality_lut + apply_voi_lut |"
        )
        print("| --- | --- | ---: | ---: | ---: |")
        reps = max(5, 3 * args.repeats)
        rng = np.random.default_rng(args.seed)
        raw = rng.integers(0, 4096, size=(args.rows, 2048), dtype=np.uint16)
        ds = pydicom.Dataset()
        ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 12, 16, 0
        ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME2", 1, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4000
        _chain_row(f"{args.rows}x2048 12-bit, window", ds, raw, reps)
        for path in files["uncompressed"]:
            ds = pydicom.dcmread(path)
            raw, _ = decode_pixels(ds, path)
            label = f"synthetic {path.name} ({ds.PhotometricInterpretation}"
            label += f", {GreyLevelChain.from_dataset(ds).voi})"
            _chain_row(label, ds, np.asarray(raw), reps)

        if args.synth_n:
            start = time.perf_counter()
            generate(Path(tmp) / "synth", args.synth_n, args.seed, size=512)
            seconds = time.perf_counter() - start
            print(
                f"\nsynthesizing {args.synth_n} images at 512 px: {seconds:.1f} s "
                f"({args.synth_n / seconds:.1f} img/s)"
            )
    load_after = os.getloadavg()
    print(
        f"\nload average at end {load_after[0]:.2f} (2 CPUs shared with other work make timings noisy)"
    )
    return 0


def _chain_row(label: str, ds, raw: np.ndarray, reps: int) -> None:
    chain = GreyLevelChain.from_dataset(ds)
    affine = chain.affine() is not None
    t_table = time_call(lambda: chain.apply(raw, use_lut=True), reps)
    t_affine = time_call(lambda: chain.apply(raw, use_lut=False), reps) if affine else None

    def reference() -> None:
        apply_voi_lut(apply_modality_lut(raw, ds), ds)

    t_pydicom = time_call(reference, max(3, reps // 3))
    affine_text = f"{1 / t_affine:.0f}" if t_affine else "n/a"
    print(f"| {label} | {chain.voi} | {affine_text} | {1 / t_table:.0f} | {1 / t_pydicom:.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
