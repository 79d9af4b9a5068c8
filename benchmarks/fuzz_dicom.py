"""Coverage-guided fuzz of the DICOM reader with atheris (libFuzzer).

Every input is written to a file and read with ``pipeline.dicom.read_radiograph`` and
``read_meta``. A *crash* is any exception that is not a ``DicomError`` (a panic in a
native decoder included); each distinct one (by exception type and the innermost frame)
is saved to ``--crash-dir`` and counted, and fuzzing goes on. A hang (``--timeout``
seconds on one input) or the resident size passing ``--rss-limit-mb`` ends the run and
is reported as a crash too.

The seed corpus is the malformed corpus of ``tests/robustness/malformed.py`` (small
valid and broken files) plus pydicom's small test files. Coverage comes from
instrumenting ``pipeline`` and ``pydicom``.

    python benchmarks/fuzz_dicom.py --seconds 60 [--runs N] [--crash-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_SEED_BYTES = 64 * 1024


def seed_corpus(folder: Path) -> int:
    """Write the seed inputs into ``folder``; return how many."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pydicom.data import get_testdata_file
    from robustness.malformed import write_corpus

    folder.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / (folder.name + "-staging")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeds = [p for _, p in write_corpus(staging)]
    shipped = Path(get_testdata_file("CT_small.dcm", download=False)).parent
    seeds += sorted(shipped.glob("*.dcm"))
    n = 0
    for path in seeds:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_SEED_BYTES:
            continue
        (folder / f"seed-{n:03d}").write_bytes(path.read_bytes())
        n += 1
    return n


# ---------------------------------------------------------------------------------------
# The fuzzing process
# ---------------------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> None:
    import atheris

    with atheris.instrument_imports(include=["pipeline", "pydicom"]):
        import pydicom  # noqa: F401

        from pipeline import dicom

    warnings.simplefilter("ignore")
    crash_dir = Path(args.crash_dir)
    crash_dir.mkdir(parents=True, exist_ok=True)
    stats_path = Path(args.stats)
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-dicom-")) / "input.dcm"
    stats = {"executions": 0, "crashes": 0, "signatures": [], "dicom_errors": 0, "read": 0}
    seen: set[str] = set()
    last_write = [0.0]

    def save() -> None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, stats_path)
        last_write[0] = time.monotonic()

    def one_input(data: bytes) -> None:
        stats["executions"] += 1
        scratch.write_bytes(data)
        for fn in (dicom.read_radiograph, dicom.read_meta):
            try:
                fn(scratch)
                stats["read"] += fn is dicom.read_radiograph
            except dicom.DicomError:
                stats["dicom_errors"] += fn is dicom.read_radiograph
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # the finding: anything else, panics included
                frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
                where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
                signature = f"{fn.__name__}: {type(e).__name__} at {where}"
                if signature not in seen:
                    seen.add(signature)
                    stats["crashes"] += 1
                    stats["signatures"].append(f"{signature}: {str(e)[:200]}")
                    name = re.sub(r"[^\w.-]+", "_", signature)[:120]
                    (crash_dir / f"crash-{len(seen):03d}-{name}.dcm").write_bytes(data)
                    save()
        if time.monotonic() - last_write[0] > 1.0:
            save()

    save()
    argv = [
        sys.argv[0],
        args.corpus_dir,
        f"-max_total_time={int(args.seconds)}",
        f"-timeout={int(args.timeout)}",
        f"-rss_limit_mb={int(args.rss_limit_mb)}",
        f"-seed={int(args.seed) + 1}",
        f"-artifact_prefix={crash_dir}/",
        "-print_final_stats=1",
    ]
    if args.runs:
        argv.append(f"-runs={int(args.runs)}")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def run_fuzz(
    seconds: float = 60.0,
    *,
    runs: int | None = None,
    crash_dir: Path | None = None,
    seed: int = 0,
    timeout: float = 20.0,
    rss_limit_mb: int = 3072,
) -> dict:
    """Fuzz in a subprocess; return executions, crashes, their signatures and where they are."""
    work = Path(tempfile.mkdtemp(prefix="fuzz-dicom-run-"))
    corpus = work / "corpus"
    seeds = seed_corpus(corpus)
    crash_dir = Path(crash_dir) if crash_dir is not None else work / "crashes"
    stats = work / "stats.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--seconds",
        str(seconds),
        "--corpus-dir",
        str(corpus),
        "--crash-dir",
        str(crash_dir),
        "--stats",
        str(stats),
        "--seed",
        str(seed),
        "--timeout",
        str(timeout),
        "--rss-limit-mb",
        str(rss_limit_mb),
    ]
    if runs:
        cmd += ["--runs", str(runs)]
    env = {**os.environ, "RUST_BACKTRACE": "0", "RADSEARCH_SALT": "fuzz", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 300, env=env, cwd=ROOT
    )
    wall = time.perf_counter() - t0
    result = (
        json.loads(stats.read_text())
        if stats.is_file()
        else {"executions": 0, "crashes": 0, "signatures": []}
    )
    log = done.stderr
    m = re.search(r"Done (\d+) runs", log) or re.search(
        r"stat::number_of_executed_units:\s*(\d+)", log
    )
    if m:
        result["executions"] = max(result["executions"], int(m.group(1)))
    # libFuzzer ends the run on a hang, an RSS overflow or a crash it saw itself
    fatal = re.search(r"ERROR: libFuzzer: (\w[\w -]*)", log)
    if fatal and fatal.group(1).strip() not in ("fuzz target exited",):
        result["crashes"] += 1
        result["signatures"].append(f"libFuzzer: {fatal.group(1).strip()}")
    elif done.returncode not in (0,) and not m:
        result["crashes"] += 1
        result["signatures"].append(f"fuzzer exited with {done.returncode}: {log[-300:]}")
    result.update(
        seeds=seeds,
        seconds=round(wall, 1),
        crash_dir=str(crash_dir),
        returncode=done.returncode,
        executions_per_s=round(result["executions"] / max(wall, 1e-9), 1),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="fuzzing time (60)")
    parser.add_argument("--runs", type=int, default=None, help="stop after this many executions")
    parser.add_argument("--crash-dir", type=Path, default=None, help="where crashing inputs go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds one input may take (20)"
    )
    parser.add_argument(
        "--rss-limit-mb", type=int, default=3072, help="resident size that counts as a crash"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus-dir", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    result = run_fuzz(
        args.seconds,
        runs=args.runs,
        crash_dir=args.crash_dir,
        seed=args.seed,
        timeout=args.timeout,
        rss_limit_mb=args.rss_limit_mb,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("| fuzz of pipeline.dicom | value |\n| --- | --- |")
    for key in ("seeds", "executions", "executions_per_s", "seconds", "crashes", "crash_dir"):
        print(f"| {key} | {result[key]} |")
    for s in result["signatures"]:
        print(f"- {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
