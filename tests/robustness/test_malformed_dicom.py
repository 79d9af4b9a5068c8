"""Malformed DICOM: each file reads or raises its DicomError subclass, quickly and cheaply.

The corpus (``malformed.py``) breaks one thing per file. For each, ``read_radiograph``
must give the expected outcome within a deadline, without another exception type and
without allocating much more than the file holds; a folder scan over all of them mixed
with good files must finish, report every bad file with its reason, and change nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import pytest

from pipeline import dicom
from pipeline.__main__ import main as pipeline_main
from pipeline.dicom import DicomError, iter_files, read_meta, read_radiograph, scan_folder
from robustness.malformed import COLUMNS, ROWS, Variant, good_files, variants, write_corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DEADLINE_S = 30.0  # per file; every variant takes well under a second
PEAK_BYTES = 64 * 2**20  # Python and numpy allocations while reading one tiny file
VARIANTS = variants()
DICOM_ERRORS = {
    cls.__name__
    for cls in vars(dicom).values()
    if isinstance(cls, type) and issubclass(cls, DicomError)
}


def _with_deadline(fn, *args):
    """``fn(*args)`` in a worker thread: (result, exception); fails the test past the deadline."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_capture, fn, *args)
        try:
            return future.result(timeout=DEADLINE_S)
        except FutureTimeout:
            pytest.fail(f"{fn.__name__}{args} did not finish within {DEADLINE_S} s")


def _capture(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args), None
        except BaseException as e:  # a panic in a native decoder is a BaseException
            return None, e


def test_the_corpus_has_forty_malformed_files_with_distinct_names():
    names = [v.name for v in VARIANTS]
    assert len(names) == len(set(names))
    malformed = [v for v in VARIANTS if v.expected is not None]
    assert len(malformed) >= 40
    assert len({v.expected for v in malformed}) >= 8, "every DicomError subclass is exercised"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_variant_reads_or_raises_its_error(variant: Variant, tmp_path):
    path = tmp_path / f"{variant.name}.dcm"
    variant.write(path)
    if variant.isolate:  # a regression here kills the process: read it in another one
        done = subprocess.run(
            [sys.executable, "-c", _READ_ONE, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RUST_BACKTRACE": "0"},
        )
        assert done.returncode == 0, f"{variant.name} killed the reader: {done.stderr[-1000:]}"
        assert done.stdout.strip().splitlines()[-1] == variant.outcome, done.stdout
        return
    tracemalloc.start()
    try:
        result, error = _with_deadline(read_radiograph, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"reading {variant.name} allocated {peak / 2**20:.0f} MiB"
    if variant.expected is None:
        assert error is None, f"{variant.name} must read: {type(error).__name__}: {error}"
        image = result.image
        assert image.shape == (ROWS, COLUMNS) and image.dtype == np.float32
        assert np.isfinite(image).all() and 0.0 <= image.min() <= image.max() <= 1.0
        return
    assert error is not None, f"{variant.name} read as an image; expected {variant.outcome}"
    assert type(error) is variant.expected, f"{variant.name}: {type(error).__name__}: {error}"
    message = str(error)
    assert message.startswith(f"{path}: ") and "\n" not in message and error.reason


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_header_only_read_raises_nothing_but_dicom_errors(variant: Variant, tmp_path):
    path = tmp_path / f"{variant.name}.dcm"
    variant.write(path)
    meta, error = _with_deadline(read_meta, path)
    assert error is None or isinstance(error, DicomError), f"{type(error).__name__}: {error}"
    if error is None:
        assert set(meta) == set(dicom.META_KEYS)


def _state(folder: Path) -> dict[str, tuple]:
    """(kind, size, mtime_ns, sha256) of every entry under ``folder``, symlinks not followed."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            p = Path(root) / name
            st = p.lstat()
            digest = (
                hashlib.sha256(p.read_bytes()).hexdigest()
                if p.is_file() and not p.is_symlink()
                else ""
            )
            out[p.relative_to(folder).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    pairs = write_corpus(folder / "bad")
    good = good_files(folder / "good", n=3)
    return folder, pairs, good


def test_scan_finishes_reports_every_bad_file_and_modifies_nothing(corpus, tmp_path):
    folder, pairs, good = corpus
    before = _state(folder)
    report = tmp_path / "skipped.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scan_folder(folder, report_csv=report)
    assert _state(folder) == before, "the scan changed a file"
    listed = {s.path: s for s in result.skipped}
    readable = set(result.files)
    assert len(readable) + len(listed) == len(list(iter_files(folder)))
    assert set(good) <= readable
    for variant, path in pairs:
        if path.is_dir() and not path.is_symlink():
            inner = listed[path / "inside.txt"]  # a folder is walked into, its contents read
            assert inner.error == "NotDicomError"
        elif variant.expected is None:
            assert path in readable, f"{variant.name} must be readable"
        else:
            assert path in listed, f"{variant.name} is not reported"
            assert listed[path].error == variant.expected.__name__, (variant.name, listed[path])
    assert {s.error for s in result.skipped} <= DICOM_ERRORS
    with open(report, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.skipped)
    by_file = {r["file"]: r for r in rows}
    for s in result.skipped:
        row = by_file[s.path.relative_to(folder).as_posix()]
        assert row["error"] == s.error and row["reason"] == s.reason and row["reason"].strip()


def test_cli_scan_with_header_only_also_finishes(corpus, tmp_path, capsys):
    folder, pairs, _ = corpus
    before = _state(folder)
    report = tmp_path / "skipped.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = pipeline_main(["scan", str(folder), "--report", str(report), "--header-only"])
    assert code == 0
    assert _state(folder) == before
    with open(report, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["error"] for r in rows} <= DICOM_ERRORS
    files = {r["file"] for r in rows}
    for variant, path in pairs:
        header_errors = (dicom.NotDicomError, dicom.UnreadableFileError)
        if variant.expected in header_errors and not path.is_dir():
            assert path.relative_to(folder).as_posix() in files, variant.name
    out = capsys.readouterr().out
    assert f"{len(rows)} skipped" in out


_READ_ONE = """
import sys, warnings
warnings.simplefilter("ignore")
from pipeline.dicom import DicomError, read_radiograph
try:
    read_radiograph(sys.argv[1])
    print("reads fine")
except DicomError as e:
    print(type(e).__name__)
"""

_MEMORY_PROBE = """
import json, resource, sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from pipeline.dicom import DicomError, read_radiograph, iter_files
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
other = []
for path in iter_files(Path(sys.argv[1])):
    try:
        read_radiograph(path)
    except DicomError:
        pass
    except BaseException as e:
        other.append(f"{path.name}: {type(e).__name__}")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": peak - start, "other": other}))
"""


def test_reading_the_whole_corpus_keeps_the_process_small(corpus):
    """Resident memory, native decoders included (tracemalloc sees only Python and numpy)."""
    folder, _, _ = corpus
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["other"] == []
    assert report["grew_kib"] < 512 * 1024, (
        f"peak memory grew by {report['grew_kib'] / 1024:.0f} MiB"
    )
