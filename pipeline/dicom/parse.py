"""Parsing a file into a pydicom data set without trusting its length fields.

:func:`read_dataset` accepts files with or without the 128-byte preamble, never
reads (or allocates) more than the file holds, and turns every failure into a
:class:`~pipeline.dicom.errors.DicomError`. Values may be left in the file
(``defer_size``) and read later by file name: :func:`deferred_element` finds them.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.dicom.errors import (
    CorruptDicomError,
    DicomError,
    NotDicomError,
    UnreadableFileError,
    short_reason,
)


class _BoundedReader(io.BufferedReader):
    """A file whose reads never ask for more bytes than are left in it.

    A corrupt or hostile length field (up to 4 GiB) would otherwise make ``read(n)``
    allocate a buffer of ``n`` bytes before finding the file is shorter: non-DICOM
    files parsed with ``force=True`` cost gigabytes that way. ``short_read`` records
    that a read asked for more than was there: the file is truncated (or a length
    field is corrupt).
    """

    def __init__(self, path: Path) -> None:
        raw = io.FileIO(path, "rb")
        super().__init__(raw)
        self.size = os.fstat(raw.fileno()).st_size
        self.short_read = 0  # bytes asked for beyond the end of the file, at the first short read

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return super().read(size)
        if size > _SMALL_READ:  # (a small read cannot cost much: no need to ask where we are)
            left = max(0, self.size - self.tell())
            if size > left:
                if left > 0 and not self.short_read:
                    self.short_read = size - left
                size = left
        data = super().read(size)
        if 0 < len(data) < size and not self.short_read:  # (a read at the very end is not short)
            self.short_read = size - len(data)
        return data


#: Reads up to this size go to the file unchecked (the parser makes ~160 per header).
_SMALL_READ = 1 << 16


def deferred_element(ds: Dataset, keyword: str) -> RawDataElement | None:
    """The element ``keyword`` when its value was left in the file (``defer_size``), else None."""
    elem = ds.get_item(keyword, keep_deferred=True)
    return elem if is_deferred(elem) else None


def is_deferred(elem: Any) -> bool:
    """Whether ``elem`` is a value of known length that pydicom left in the file."""
    return (
        isinstance(elem, RawDataElement)
        and elem.value is None
        and 0 < elem.length < 0xFFFFFFFF  # (undefined-length values are read, then dropped)
    )


def _parse(
    path: Path, *, stop_before_pixels: bool, defer_size: int | None, force: bool
) -> tuple[Dataset, int]:
    """``pydicom.dcmread`` through a :class:`_BoundedReader`; returns (data set, short_read)."""
    with _BoundedReader(path) as fp:
        ds = pydicom.dcmread(
            fp, stop_before_pixels=stop_before_pixels, defer_size=defer_size, force=force
        )
        if defer_size is None:
            return ds, fp.short_read
        # Deferred values are read again later by file name; keep the name, not this handle.
        ds.filename = str(path)
        ds.buffer = None
        ds.fileobj_type = open
        short = fp.short_read
        for tag in tuple(ds.keys()):  # (not `in ds`: that reads deferred values back)
            elem = ds.get_item(tag, keep_deferred=True)
            if is_deferred(elem) and elem.value_tell:
                beyond = elem.value_tell + elem.length - fp.size
                if beyond > 0 and not short:
                    short = beyond
        return ds, short


def read_dataset(
    path: str | os.PathLike[str], *, stop_before_pixels: bool = False, defer_size: int | None = None
) -> Dataset:
    """Parse a DICOM file (with or without the 128-byte preamble) or raise a :class:`DicomError`.

    ``stop_before_pixels`` and ``defer_size`` are passed to ``pydicom.dcmread``. A
    file that ends inside an element it declares (truncated, or a corrupt length) is a
    :class:`CorruptDicomError`; no read allocates more than the file holds.
    """
    path = Path(path)
    if not path.is_file():
        reason = "is a folder, not a file" if path.is_dir() else "no such file"
        if path.is_symlink() and not path.exists():
            reason = "a symbolic link to nothing (dangling, or a loop)"
        raise UnreadableFileError(path, reason)
    options = {"stop_before_pixels": stop_before_pixels, "defer_size": defer_size}
    try:
        ds, short = _parse(path, force=False, **options)
    except InvalidDicomError:
        pass  # no DICM preamble: maybe a bare data set, tried below
    except OSError as e:
        raise UnreadableFileError(path, f"cannot read: {e.strerror or e}") from e
    except (Exception, RecursionError) as e:
        raise CorruptDicomError(path, f"cannot parse the DICOM header: {short_reason(e)}") from e
    else:
        _check_parsed(ds, short, path)
        return ds
    try:
        ds, short = _parse(path, force=True, **options)
        found = _looks_like_dataset(ds)
    except Exception:
        found = False  # anything that fails to parse without a preamble is not DICOM
    if not found:
        raise NotDicomError(path, "not a DICOM file (no DICM marker and no recognisable data set)")
    _check_parsed(ds, short, path)
    return ds


def _check_parsed(ds: Dataset, short: int, path: Path) -> None:
    if short:
        raise CorruptDicomError(
            path,
            f"truncated: the file ends {short} bytes before the end of a value it declares "
            "(a cut-off copy or a corrupt length field); copy the file again",
        )
    meta = getattr(ds, "file_meta", None)
    if len(ds) == 0 and (meta is None or "TransferSyntaxUID" not in meta):
        raise CorruptDicomError(path, "no data elements after the DICM marker; copy the file again")


def _looks_like_dataset(ds: Dataset) -> bool:
    tags = list(ds.keys())
    if not tags or tags[0].group > 0x0008:
        return False
    return any(
        k in ds for k in ("SOPClassUID", "Modality", "Rows", "PixelData", "StudyInstanceUID")
    )


@contextlib.contextmanager
def header_values(path: Path) -> Iterator[None]:
    """Turn a failure to convert a header value into this file's :class:`CorruptDicomError`.

    pydicom converts raw values when first read: a corrupt one (an unknown VR, bytes
    that are no number) fails there, as any exception.
    """
    try:
        yield
    except DicomError:
        raise
    except Exception as e:
        raise CorruptDicomError(path, f"invalid header value: {short_reason(e)}") from e
