"""Reading a whole folder: every file tried, a bad one listed with its reason, none fatal."""

from __future__ import annotations

import csv
import io
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.deid import resolve_salt
from pipeline.dicom.errors import DicomError, short_reason
from pipeline.dicom.image_header import check_greyscale_image
from pipeline.dicom.metadata import meta_of
from pipeline.dicom.parse import header_values, read_dataset
from pipeline.dicom.reading import read_radiograph
from pipeline.io import atomic_write_text

#: Suffixes of the files in a data folder that are never DICOM (labels, sidecars, notes,
#: pictures, arrays); DICOM files themselves often have no suffix at all.
NOT_DICOM_SUFFIXES = frozenset(
    {".csv", ".tsv", ".json", ".jsonl", ".txt", ".md", ".yaml", ".yml", ".xlsx", ".xls"}
    | {".png", ".jpg", ".jpeg", ".pdf", ".html", ".lock", ".log", ".npy", ".npz"}
)


@dataclass(frozen=True, kw_only=True)
class SkippedFile:
    """A file a scan could not read: its path, the error class name and the reason."""

    path: Path
    error: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ScanResult:
    """Readable radiographs (sorted) with their meta, and every skipped file with why."""

    folder: Path
    files: tuple[Path, ...]
    meta: Mapping[Path, dict[str, Any]] = field(repr=False)
    skipped: tuple[SkippedFile, ...]
    seconds: float = 0.0

    def error_counts(self) -> dict[str, int]:
        """Number of skipped files per error class, most frequent first."""
        counts = Counter(s.error for s in self.skipped)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def iter_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Every regular file under ``folder``, sorted, skipping hidden files and folders."""
    folder = Path(folder)
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def candidate_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files under ``folder`` that may be DICOM: :func:`iter_files` without the
    suffixes of :data:`NOT_DICOM_SUFFIXES`."""
    return [p for p in iter_files(folder) if p.suffix.lower() not in NOT_DICOM_SUFFIXES]


def scan_folder(
    folder: str | os.PathLike[str],
    *,
    report_csv: str | os.PathLike[str] | None = None,
    salt: str | bytes | None = None,
    decode: bool = True,
) -> ScanResult:
    """Read every file under ``folder``; a bad file is listed with its reason and the scan goes on.

    With ``decode`` (default) each file is fully read with :func:`read_radiograph`, so
    undecodable pixels are caught; ``decode=False`` checks headers only (no pixel decoding).
    ``report_csv`` receives one row per skipped file: ``file`` (relative to
    ``folder``), ``error`` (the :class:`DicomError` subclass) and ``reason``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    key = resolve_salt(salt)
    start = time.perf_counter()
    files: list[Path] = []
    meta: dict[Path, dict[str, Any]] = {}
    skipped: list[SkippedFile] = []
    for path in iter_files(folder):
        try:
            m = read_radiograph(path, salt=key).meta if decode else _header_only(path, key)
        except Exception as e:  # an unforeseen failure is reported too, never fatal to the scan
            reason = e.reason if isinstance(e, DicomError) else short_reason(e, 300)
            skipped.append(SkippedFile(path=path, error=type(e).__name__, reason=reason))
            continue
        files.append(path)
        meta[path] = m
    result = ScanResult(
        folder=folder,
        files=tuple(files),
        meta=meta,
        skipped=tuple(skipped),
        seconds=time.perf_counter() - start,
    )
    if report_csv is not None:
        write_skipped_csv(result, report_csv)
    return result


def _header_only(path: Path, salt: bytes) -> dict[str, Any]:
    ds = read_dataset(path, defer_size=4096)  # large values (the pixels) stay on disk
    with header_values(path):
        check_greyscale_image(ds, path)
        return meta_of(ds, path, salt)


def write_skipped_csv(result: ScanResult, path: str | os.PathLike[str]) -> Path:
    """Write the skipped files of a scan as CSV (``file,error,reason``), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "error", "reason"])
    for s in result.skipped:
        try:
            name = s.path.relative_to(result.folder).as_posix()
        except ValueError:
            name = str(s.path)
        writer.writerow([name, s.error, s.reason])
    return atomic_write_text(path, buffer.getvalue())
