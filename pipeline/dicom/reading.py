"""``read_radiograph(path) -> Radiograph`` (see :mod:`pipeline.dicom`), and :func:`read_raw`,
which stops before the grey-level chain so a caller can run it on the pixels it keeps only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from pipeline.deid import resolve_salt
from pipeline.dicom.decoders import MAPPABLE_SYNTAXES, decode_described, leaves_stray_bits
from pipeline.dicom.errors import CorruptDicomError, DicomError, UnsupportedImageError, short_reason
from pipeline.dicom.greylevels import GreyLevelChain
from pipeline.dicom.image_header import check_codestream, check_greyscale_image, transfer_syntax
from pipeline.dicom.metadata import meta_of
from pipeline.dicom.parse import header_values, read_dataset


@dataclass(frozen=True, eq=False)
class Radiograph:
    """One radiograph: ``image`` float32 (H, W) in [0, 1], bone bright; de-identified ``meta``."""

    image: np.ndarray
    meta: dict[str, Any]
    path: Path


@dataclass(frozen=True, eq=False)
class RawRadiograph:
    """A decoded radiograph before its grey-level chain: what :func:`read_raw` returns.

    ``grey(x)`` runs the chain on any array of stored values (the whole ``raw``, a
    region of it, or a downsampled copy), so a caller can run it on the pixels it
    keeps only. ``read_radiograph(path).image == raw.grey(raw.raw)``.
    """

    raw: np.ndarray  # (H, W) stored values as decoded (may be a read-only view)
    chain: GreyLevelChain
    mask_unused_bits: bool  # whether the decoder may leave bits above Bits Stored
    meta: dict[str, Any]
    path: Path

    def grey(self, x: np.ndarray) -> np.ndarray:
        """The grey-level chain on stored values ``x``: float32 in [0, 1], bone bright."""
        return self.chain.apply(x, mask_unused_bits=self.mask_unused_bits)


#: Values longer than this stay in the file while an uncompressed radiograph's header
#: is parsed (pydicom's ``defer_size``); only pixel data and rare large blobs are that long.
_DEFER_BYTES = 1 << 20


def _read_for_pixels(path: Path) -> Dataset:
    """The data set to decode: an uncompressed file's pixel data stays in the file, to be
    mapped (see :mod:`pipeline.dicom.decoders`); anything else is read whole (an
    encapsulated value would be read to find its end, then read again)."""
    defer = None
    with contextlib.suppress(Exception):  # no or broken file meta: read_dataset says why
        if read_file_meta_info(path).TransferSyntaxUID in MAPPABLE_SYNTAXES:
            defer = _DEFER_BYTES
    return read_dataset(path, defer_size=defer)


def read_radiograph(path: str | os.PathLike[str], *, salt: str | bytes | None = None) -> Radiograph:
    """Decode one radiograph and run the grey-level chain; a :class:`DicomError` subclass for
    every file that is not a readable 2-D greyscale image. ``salt`` keys the pseudonyms in
    ``meta`` (default: :func:`pipeline.deid.resolve_salt`)."""
    path = Path(path)
    ds = _read_for_pixels(path)  # parsed here, not deeper: a deep file fails as it always did
    r = _raw_of(ds, path, salt)
    return Radiograph(image=r.grey(r.raw), meta=r.meta, path=path)  # (H, W) float32


def read_raw(path: str | os.PathLike[str], *, salt: str | bytes | None = None) -> RawRadiograph:
    """Decode one radiograph's stored values; every check of :func:`read_radiograph` applies
    (it is this plus the grey-level chain)."""
    path = Path(path)
    return _raw_of(_read_for_pixels(path), path, salt)


def _raw_of(ds: Dataset, path: Path, salt: str | bytes | None) -> RawRadiograph:
    """:func:`read_raw` on a parsed data set: the checks, grey-level chain and decoding."""
    with header_values(path):
        check_greyscale_image(ds, path)
    try:
        chain = GreyLevelChain.from_dataset(ds)
    except (DicomError, RecursionError):
        raise
    except Exception as e:  # ValueError, TypeError, ... and pydicom's own conversions
        raise CorruptDicomError(path, f"invalid grey-level attributes: {short_reason(e)}") from e
    with header_values(path):
        check_codestream(ds, path)
    raw, _plugin = decode_described(ds, path)  # (check_greyscale_image described the pixels)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if raw.shape != (rows, cols):
        raise UnsupportedImageError(
            path, f"decoded pixel array has shape {raw.shape}, not ({rows}, {cols})"
        )
    return RawRadiograph(
        raw=raw,
        chain=chain,
        mask_unused_bits=leaves_stray_bits(transfer_syntax(ds, path)),
        meta=meta_of(ds, path, resolve_salt(salt)),
        path=path,
    )
