"""Reading radiographs: ``read_radiograph(path) -> Radiograph``, right on real-world files.

One function turns a DICOM file into a float32 image in [0, 1] with bone bright,
whatever the file's encoding, bit depth, grey-level transforms or photometric
interpretation, plus a dict of typed, de-identified header values. Everything that
can go wrong raises one error family, :class:`DicomError`, with a subclass per cause
and a one-line message that names the file and what to do.

Decoding uses pydicom 3's decoders with the fastest installed plugin for each
transfer syntax first (:data:`DECODER_PREFERENCE`) and falls back to the next one
when a plugin fails on a file. Uncompressed (little-endian, 8- or 16-bit) pixel data
is not decoded at all: the header is parsed with the pixel data left in the file,
which is then mapped read-only, so the grey-level chain reads the stored values
straight from the page cache (no bytes object, no copy).

The grey-level chain follows PS3.3 C.11 in the standard order:

1. Modality LUT: the Modality LUT Sequence, else Rescale Slope/Intercept.
2. VOI LUT: the VOI LUT Sequence (preferred), else Window Center/Width with the VOI
   LUT Function (LINEAR, LINEAR_EXACT, SIGMOID), else the full output range of step 1.
3. Normalisation to [0, 1] against the range of step 2 (never the image's own
   minimum or maximum), then inversion when the Photometric Interpretation is
   MONOCHROME1 or the Presentation LUT Shape is INVERSE (the two say the same thing
   in the DX IOD; either alone also inverts).

For integer pixels the chain is evaluated once per possible stored value, in
float64, and the image is a single float32 table lookup (``GreyLevelChain.apply``);
stored bits above Bits Stored are ignored through the same table. The common case,
a chain that is one affine map then a clip (rescale with a linear window, or the
full range) on pixels without stray high bits, skips the table: the same numbers
(to 1e-6) come from one or four float32 array passes, 2-3x faster than the lookup.

The meta dict holds no names, IDs, UIDs or dates: patient, study and site are salted
pseudonyms from :mod:`pipeline.deid`, the age is a number (90 and over pooled) and the
series description has the patient's name and ID masked.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import math
import mmap
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pipeline.deid import clean_text, pseudonym, resolve_salt
from pipeline.io import atomic_write_text

__all__ = [
    "DECODER_PREFERENCE",
    "MAX_PIXELS",
    "META_KEYS",
    "CorruptDicomError",
    "DecodeError",
    "DicomError",
    "GreyLevelChain",
    "LookupTable",
    "MultiFrameError",
    "NoPixelDataError",
    "NotDicomError",
    "NotGreyscaleError",
    "Radiograph",
    "RawRadiograph",
    "ScanResult",
    "SkippedFile",
    "UnreadableFileError",
    "UnsupportedImageError",
    "UnsupportedTransferSyntaxError",
    "Window",
    "decode_pixels",
    "decoder_order",
    "iter_files",
    "read_dataset",
    "read_meta",
    "read_radiograph",
    "read_raw",
    "scan_folder",
    "write_skipped_csv",
]


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class DicomError(Exception):
    """A DICOM file that cannot be read as a radiograph; ``str(err)`` is one line naming the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # one line
        super().__init__(f"{self.path}: {self.reason}")


class UnreadableFileError(DicomError):
    """The file cannot be opened (missing, a folder, no permission)."""


class NotDicomError(DicomError):
    """The file is not DICOM (no DICM preamble and no recognisable data set)."""


class CorruptDicomError(DicomError):
    """The file is DICOM but broken: truncated, invalid values, missing required attributes."""


class NoPixelDataError(DicomError):
    """The file holds no image (a report, structured report, RT plan, DICOMDIR, ...)."""


class UnsupportedTransferSyntaxError(DicomError):
    """No installed decoder handles the file's transfer syntax; the message names what to install."""


class DecodeError(DicomError):
    """Every installed decoder failed on the pixel data (corrupt codestream or an unsupported variant)."""


class UnsupportedImageError(DicomError):
    """The pixel data is not a single 2-D greyscale image."""


class NotGreyscaleError(UnsupportedImageError):
    """Colour or palette image (Samples per Pixel > 1, RGB, YBR, PALETTE COLOR)."""


class MultiFrameError(UnsupportedImageError):
    """More than one frame (a cine, a volume, a dose grid)."""


# ---------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------

# Fastest first, measured on a 2500x2048 12-bit radiograph (images/s): RLE pylibjpeg 60
# vs pydicom's numpy decoder 6.3; JPEG 2000 gdcm 2.3 vs pylibjpeg 1.8; JPEG lossless
# gdcm 6.7 vs pylibjpeg 5.5; JPEG-LS gdcm about 2x pylibjpeg; 8-bit JPEG baseline pillow
# about 2x gdcm, 3x pylibjpeg. 12-bit JPEG extended: only pylibjpeg reads the shipped
# samples. benchmarks/read.py re-measures them. Installed plugins not listed are
# tried last.
DECODER_PREFERENCE: dict[str, tuple[str, ...]] = {
    RLELossless: ("pylibjpeg", "pydicom"),
    JPEG2000Lossless: ("gdcm", "pylibjpeg", "pillow"),
    JPEG2000: ("gdcm", "pylibjpeg", "pillow"),
    JPEGLossless: ("gdcm", "pylibjpeg"),
    JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    JPEGLSLossless: ("gdcm", "pylibjpeg", "pyjpegls"),
    JPEGLSNearLossless: ("gdcm", "pylibjpeg", "pyjpegls"),
    JPEGBaseline8Bit: ("pillow", "gdcm", "pylibjpeg"),
    JPEGExtended12Bit: ("pylibjpeg", "gdcm", "pillow"),
    HTJ2KLossless: ("pylibjpeg",),
    HTJ2KLosslessRPCL: ("pylibjpeg",),
    HTJ2K: ("pylibjpeg",),
}

# What to install when no plugin for a transfer syntax is available.
_INSTALL_HINT: dict[str, str] = {
    RLELossless: "pip install pylibjpeg pylibjpeg-rle",
    JPEG2000Lossless: "pip install python-gdcm (or pylibjpeg pylibjpeg-openjpeg)",
    JPEG2000: "pip install python-gdcm (or pylibjpeg pylibjpeg-openjpeg)",
    JPEGLossless: "pip install python-gdcm (or pylibjpeg pylibjpeg-libjpeg)",
    JPEGLosslessSV1: "pip install python-gdcm (or pylibjpeg pylibjpeg-libjpeg)",
    JPEGLSLossless: "pip install python-gdcm (or pylibjpeg pylibjpeg-libjpeg)",
    JPEGLSNearLossless: "pip install python-gdcm (or pylibjpeg pylibjpeg-libjpeg)",
    JPEGBaseline8Bit: "pip install pillow (or python-gdcm, or pylibjpeg pylibjpeg-libjpeg)",
    JPEGExtended12Bit: "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    HTJ2KLossless: "pip install pylibjpeg pylibjpeg-openjpeg",
    HTJ2KLosslessRPCL: "pip install pylibjpeg pylibjpeg-openjpeg",
    HTJ2K: "pip install pylibjpeg pylibjpeg-openjpeg",
}

# Syntaxes whose decoders do not leave stray bits above Bits Stored (pydicom corrects
# their signedness from the codestream instead); everything else is masked.
_NO_MASK_SYNTAXES = {
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    JPEGLSLossless,
    JPEGLSNearLossless,
}


def _available_plugins(ts: UID) -> tuple[str, ...]:
    return get_decoder(ts).available_plugins


def decoder_order(ts: str) -> tuple[str, ...]:
    """Installed decoding plugins for transfer syntax ``ts``, in the order they are tried.

    Native (uncompressed) syntaxes need no plugin and return ``("",)``.
    """
    uid = UID(ts)
    decoder = get_decoder(uid)  # NotImplementedError for unknown syntaxes
    if decoder.is_native:
        return ("",)
    available = _available_plugins(uid)
    preferred = [p for p in DECODER_PREFERENCE.get(uid, ()) if p in available]
    return tuple(preferred + [p for p in available if p not in preferred])


def decode_pixels(ds: Dataset, path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Decode the pixel data of ``ds`` with the first installed plugin that succeeds.

    Returns the raw stored values (any shape pydicom gives: 2-D, colour, multi-frame)
    and the name of the plugin that decoded them ("" for uncompressed data). Bits
    above Bits Stored are left as found for the grey-level table to mask, and native
    data is a read-only view, never a copy: on the file itself when ``ds`` was parsed
    with its pixel data deferred (:func:`_mapped_native`), else on the parsed bytes.
    """
    path = Path(path)
    _pixel_description(ds, path)
    return _decode_described(ds, path)


def _decode_described(ds: Dataset, path: Path) -> tuple[np.ndarray, str]:
    """:func:`decode_pixels` once :func:`_pixel_description` has accepted ``ds``."""
    ts = _transfer_syntax(ds, path)
    try:
        plugins = decoder_order(ts)
    except NotImplementedError:
        raise UnsupportedTransferSyntaxError(
            path,
            f"no decoder exists for transfer syntax {ts.name} ({ts}); convert the file (e.g. dcmtk's dcmconv) or skip it",
        ) from None
    if not plugins:
        hint = _INSTALL_HINT.get(ts, "install python-gdcm and pylibjpeg with its plugins")
        raise UnsupportedTransferSyntaxError(
            path, f"no installed decoder for {ts.name} ({ts}): {hint}"
        )
    _check_native_length(ds, ts, path)
    mapped = _mapped_native(ds, path, ts)
    if mapped is not None:
        return mapped, ""
    if ts == RLELossless and plugins[0] == "pylibjpeg":
        direct = _rle_direct(ds, path)
        if direct is not None:
            return direct, "pylibjpeg"
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:  # a bare data set: pydicom needs it
        ds.file_meta = meta = meta if meta is not None else FileMetaDataset()
        meta.TransferSyntaxUID = ts
    decoder = get_decoder(ts)
    options: dict[str, Any] = {"as_rgb": False}
    if decoder.is_native:
        options["view_only"] = True
    if ts not in _NO_MASK_SYNTAXES:
        options["correct_unused_bits"] = False
    failures = []
    for plugin in plugins:
        try:
            arr, _ = decoder.as_array(ds, decoding_plugin=plugin, **options)
            return arr, plugin
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # a plugin's failure: try the next one
            # BaseException: a panic in a Rust decoder (pyo3's PanicException) is not an
            # Exception, and must not escape as anything but this file's DecodeError.
            failures.append(f"{plugin or 'numpy'}: {_short(e)}")
    raise DecodeError(
        path,
        f"no installed decoder could decode the {ts.name} pixel data ({'; '.join(failures)}); "
        "the codestream is corrupt or uses a variant these decoders lack: skip the file or re-export it",
    )


def _rle_direct(ds: Dataset, path: Path) -> np.ndarray | None:
    """A single-frame greyscale RLE image decoded by pylibjpeg-rle's frame decoder itself.

    What pydicom's pylibjpeg plugin returns for it (stored values as encoded, no
    masking), without pydicom's generic frame machinery (fragment copies through a
    file-like object, buffer checks and reshapes: 1-2 ms of a 12 ms 5-megapixel
    decode). None where this does not apply or the decoder refuses: the plugin loop
    then decodes, or says why it cannot.
    """
    try:
        from rle.rle import decode_frame  # pylibjpeg-rle's decoder
    except ImportError:
        return None
    try:
        shape = _plain_frame(ds, path)
        if shape is None:
            return None
        rows, cols, dtype = shape
        frame = _single_frame(ds.PixelData)
        if frame is None:
            return None
        decoded = decode_frame(frame, rows * cols, 8 * dtype.itemsize, "<")
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:  # a refusal (or a panic) of the fast path: the plugin loop says why
        return None
    if len(decoded) != rows * cols * dtype.itemsize:
        return None
    return np.frombuffer(decoded, dtype=dtype).reshape(rows, cols)


def _plain_frame(ds: Dataset, path: Path) -> tuple[int, int, np.dtype] | None:
    """(rows, columns, little-endian dtype) of a single-frame, one-sample 8/16-bit
    image, the kind the fast paths read; None for anything else."""
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16) or _optional_int(ds, "SamplesPerPixel", 1) != 1:
        return None
    if _number_of_frames(ds, path) != 1:
        return None
    kind = "i" if _optional_int(ds, "PixelRepresentation", 0) == 1 else "u"
    return int(ds.Rows), int(ds.Columns), np.dtype(f"<{kind}{bits // 8}")


_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD) Sequence Delimitation Item


def _single_frame(data: bytes | None) -> bytes | None:
    """The one frame of encapsulated pixel data: its fragments after the offset table.

    None for anything but a well-formed item sequence (PS3.5 A.4) with at least one
    fragment.
    """
    if not data:
        return None
    view, pos, items = memoryview(data), 0, []
    while pos + 8 <= len(view):
        tag = bytes(view[pos : pos + 4])
        length = int.from_bytes(view[pos + 4 : pos + 8], "little")
        pos += 8
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM or length == 0xFFFFFFFF or pos + length > len(view):
            return None
        items.append(view[pos : pos + length])
        pos += length
    fragments = items[1:]  # the first item is the Basic Offset Table
    if not fragments:
        return None
    return bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(
        r"^Unable to decode as exceptions were raised by all available plugins:\s*\w+:\s*", "", text
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _transfer_syntax(ds: Dataset, path: Path) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    if meta is not None and len(meta) > 0:
        raise CorruptDicomError(
            path,
            "the file meta information has no Transfer Syntax UID (0002,0010); re-export the file",
        )
    # A bare data set without file meta (old files): its encoding is the syntax.
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        raise CorruptDicomError(
            path, "no file meta information and an unknown encoding; re-export the file"
        )
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_native_length(ds: Dataset, ts: UID, path: Path) -> None:
    if ts.is_encapsulated or ts == DeflatedExplicitVRLittleEndian:
        return
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = _number_of_frames(ds, path)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    expected = math.ceil(rows * cols * frames * samples * bits / 8)
    if ds.get("PhotometricInterpretation", "") == "YBR_FULL_422":
        expected = expected // 3 * 2
    deferred = _deferred(ds, "PixelData")
    actual = deferred.length if deferred is not None else len(ds.PixelData or b"")
    if actual < expected:
        raise CorruptDicomError(
            path,
            f"truncated pixel data: {actual} bytes where {rows}x{cols}x{frames} pixels of {bits} bits need {expected}",
        )


def _deferred(ds: Dataset, keyword: str) -> RawDataElement | None:
    """The element ``keyword`` when its value was left in the file (``defer_size``), else None."""
    elem = ds.get_item(keyword, keep_deferred=True)
    return elem if _is_deferred(elem) else None


def _is_deferred(elem: Any) -> bool:
    """Whether ``elem`` is a value of known length that pydicom left in the file."""
    return (
        isinstance(elem, RawDataElement)
        and elem.value is None
        and 0 < elem.length < 0xFFFFFFFF  # (undefined-length values are read, then dropped)
    )


#: Native syntaxes whose pixel data can be mapped from the file as it is stored.
_MAPPABLE_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def _mapped_native(ds: Dataset, path: Path, ts: UID) -> np.ndarray | None:
    """A single-frame native image's stored values, mapped read-only from the file.

    Applies where ``ds`` was parsed with its pixel data deferred (see
    :func:`read_dataset`), the syntax is little endian and pixels are 8 or 16 bits,
    one sample: the usual uncompressed radiograph. The values are never read into a
    bytes object nor copied; the grey-level chain reads them straight from the page
    cache (bare pydicom reads the file, then copies the pixels into an array). The
    mapping lives as long as the array. Returns None where this does not apply.
    """
    if ts not in _MAPPABLE_SYNTAXES:
        return None
    elem = _deferred(ds, "PixelData")
    if elem is None or elem.value_tell is None:
        return None
    shape = _plain_frame(ds, path)
    if shape is None:
        return None
    rows, cols, dtype = shape
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(
            mapped, dtype=dtype, count=rows * cols, offset=elem.value_tell
        ).reshape(rows, cols)
    except (OSError, ValueError) as e:  # the file changed since it was parsed
        raise UnreadableFileError(path, f"cannot map the pixel data: {_short(e)}") from e


# ---------------------------------------------------------------------------------------
# The grey-level chain
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LookupTable:
    """A LUT of PS3.3 C.11: inputs from ``first`` on map to the entries; output range 0..2^bits-1.

    ``data`` holds the entries as little-endian int32 bytes (hashable, and its hash is
    cached, so a chain holding a 64k-entry LUT stays a cheap cache key).
    """

    first: int
    bits: int
    data: bytes

    @classmethod
    def from_values(cls, first: int, bits: int, values: Any) -> LookupTable:
        return cls(first=int(first), bits=int(bits), data=np.asarray(values, dtype="<i4").tobytes())

    @property
    def entries(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<i4")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Look up ``x`` (float64): values below ``first`` take the first entry, above the last."""
        table = self.entries.astype(np.float64)
        index = np.clip(np.floor(x - self.first), 0, len(table) - 1).astype(np.intp)
        return table[index]

    @property
    def out_range(self) -> tuple[float, float]:
        return 0.0, float(2**self.bits - 1)


@dataclass(frozen=True, kw_only=True)
class Window:
    """Window Center/Width with its VOI LUT Function (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""

    center: float
    width: float
    function: str = "LINEAR"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Map ``x`` to [0, 1]."""
        c, w = self.center, self.width
        if self.function == "LINEAR_EXACT":
            return np.clip((x - c) / w + 0.5, 0.0, 1.0)
        if self.function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700.0, 700.0)))
        if w <= 1.0:  # LINEAR with width 1: a threshold at center - 0.5
            return (x > c - 0.5).astype(np.float64)
        return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)

    @property
    def is_valid(self) -> bool:
        finite = math.isfinite(self.center) and math.isfinite(self.width)
        return finite and (self.width >= 1.0 if self.function == "LINEAR" else self.width > 0.0)


@dataclass(frozen=True, kw_only=True)
class GreyLevelChain:
    """Stored pixel values -> display values in [0, 1], bone bright (PS3.3 C.11).

    Build one from a data set with :meth:`from_dataset`; :meth:`values` is the math on
    any array of stored values, :meth:`apply` runs it on a decoded image through a
    cached float32 table.
    """

    bits_stored: int
    signed: bool
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: LookupTable | None = None
    voi_lut: LookupTable | None = None
    window: Window | None = None
    invert: bool = False

    @classmethod
    def from_dataset(cls, ds: Dataset) -> GreyLevelChain:
        """Read the chain's attributes; raises ``ValueError`` naming a malformed attribute."""
        bits_stored = _int_attr(ds, "BitsStored", default=_int_attr(ds, "BitsAllocated"))
        signed = _int_attr(ds, "PixelRepresentation", default=0) == 1
        slope, intercept = 1.0, 0.0
        modality_lut = _lut_from_sequence(ds, "ModalityLUTSequence", signed_first=signed)
        if modality_lut is None and "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope = _float_attr(ds, "RescaleSlope", default=1.0)
            intercept = _float_attr(ds, "RescaleIntercept", default=0.0)
            if slope == 0.0 or not (math.isfinite(slope) and math.isfinite(intercept)):
                raise ValueError(
                    f"Rescale Slope {slope} / Intercept {intercept} is not a usable transform"
                )
        voi_lut = _lut_from_sequence(ds, "VOILUTSequence", signed_first=signed or intercept < 0)
        window = None
        if voi_lut is None:
            window = _window(ds)
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
        return cls(
            bits_stored=bits_stored,
            signed=signed,
            rescale_slope=slope,
            rescale_intercept=intercept,
            modality_lut=modality_lut,
            voi_lut=voi_lut,
            window=window,
            invert=photometric == "MONOCHROME1" or shape == "INVERSE",
        )

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest value Bits Stored and Pixel Representation allow."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def modality_range(self) -> tuple[float, float]:
        """Output range of the Modality LUT step, the reference of the full-range VOI."""
        if self.modality_lut is not None:
            return self.modality_lut.out_range
        lo, hi = self.stored_range
        return (
            lo * self.rescale_slope + self.rescale_intercept,
            hi * self.rescale_slope + self.rescale_intercept,
        )

    @property
    def voi(self) -> str:
        """Which VOI step applies: ``"voi_lut"``, ``"window"`` or ``"full_range"``."""
        if self.voi_lut is not None:
            return "voi_lut"
        return "window" if self.window is not None else "full_range"

    def values(self, x: np.ndarray) -> np.ndarray:
        """The chain on stored values ``x`` (any shape): float64 in [0, 1], bone bright."""
        x = np.asarray(x, dtype=np.float64)
        if self.modality_lut is not None:
            y = self.modality_lut(x)
        else:
            y = x * self.rescale_slope + self.rescale_intercept
        if self.voi_lut is not None:
            lo, hi = self.voi_lut.out_range
            v = (self.voi_lut(y) - lo) / (hi - lo)
        elif self.window is not None:
            v = self.window(y)
        else:
            lo, hi = self.modality_range
            v = (y - lo) / (hi - lo) if hi != lo else np.zeros_like(y)
        v = np.clip(v, 0.0, 1.0)
        return 1.0 - v if self.invert else v

    def lut(self, dtype: np.dtype | str, *, mask_unused_bits: bool = True) -> np.ndarray:
        """float32 table indexed by the unsigned bit pattern of a ``dtype`` pixel (<= 16 bits).

        With ``mask_unused_bits`` only the low Bits Stored bits count (sign-extended for
        signed pixels), as PS3.5 8.1.1 says; otherwise a pattern means its ``dtype`` value.
        """
        return _lut(self, np.dtype(dtype).str.lstrip("<>=|"), mask_unused_bits)

    def apply(
        self, raw: np.ndarray, *, mask_unused_bits: bool = True, use_lut: bool | None = None
    ) -> np.ndarray:
        """The chain on a decoded image: float32 in [0, 1], same shape as ``raw``.

        Integer pixels of up to 16 bits go through the cached table of :meth:`lut`.
        When the whole chain is one affine map then a clip (rescale with a LINEAR or
        LINEAR_EXACT window, or the full range) and no stored value has stray bits
        above Bits Stored, the same numbers come 2-3x faster from four float32 array
        passes (:meth:`affine`); ``use_lut=True`` forces the table, ``False`` refuses it.
        """
        if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2:
            if not raw.dtype.isnative:
                raw = raw.astype(raw.dtype.newbyteorder("="))
            affine = self.affine() if use_lut is not True else None
            if affine is not None:
                lo, hi = self.stored_range
                check = mask_unused_bits and self.bits_stored < 8 * raw.dtype.itemsize
                out = _apply_affine(
                    raw,
                    *affine,
                    x_max=float(max(abs(lo), abs(hi))),
                    stored=(lo, hi) if check else None,
                )
                if out is not None:
                    return out
            if use_lut is False:
                raise ValueError(
                    "this chain is not affine (or the pixels have stray bits): it needs the table"
                )
            table = self.lut(raw.dtype, mask_unused_bits=mask_unused_bits)
            index = raw.view(f"u{raw.dtype.itemsize}")
            return _take_rows(table, index)
        if raw.dtype.kind in "ui" and mask_unused_bits:
            raw = self._masked(raw.astype(np.int64))
        return self.values(raw).astype(np.float32)

    def affine(self) -> tuple[int, float, float] | None:
        """``(x0, a, b)`` with ``values(x) == clip((x - x0) * a + b, 0, 1)``, or None if no such map.

        ``x0`` is a stored value near the window centre, so ``x - x0`` is exact in
        float32 and the products stay small where the result is inside (0, 1).
        """
        if self.modality_lut is not None or self.voi_lut is not None:
            return None
        s, i = self.rescale_slope, self.rescale_intercept
        lo_x, hi_x = self.stored_range
        w = self.window
        if w is None:
            lo, hi = self.modality_range
            if hi == lo:
                return None
            x0 = lo_x
            a, b = s / (hi - lo), (x0 * s + i - lo) / (hi - lo)
        elif w.function == "LINEAR" and w.width > 1.0:
            x0 = int(min(max(round((w.center - 0.5 - i) / s), lo_x), hi_x))
            a, b = s / (w.width - 1.0), (x0 * s + i - w.center + 0.5) / (w.width - 1.0) + 0.5
        elif w.function == "LINEAR_EXACT":
            x0 = int(min(max(round((w.center - i) / s), lo_x), hi_x))
            a, b = s / w.width, (x0 * s + i - w.center) / w.width + 0.5
        else:
            return None
        if self.invert:
            a, b = -a, 1.0 - b
        return x0, a, b

    def _no_stray_bits(self, raw: np.ndarray) -> bool:
        """Whether no stored value of integer ``raw`` has bits set above Bits Stored."""
        if self.bits_stored >= 8 * raw.dtype.itemsize:
            return True
        return _within(raw, *self.stored_range)

    def _masked(self, x: np.ndarray) -> np.ndarray:
        x = x & ((1 << self.bits_stored) - 1)
        if self.signed:
            sign = 1 << (self.bits_stored - 1)
            x = (x ^ sign) - sign
        return x


@functools.lru_cache(maxsize=32)
def _lut(chain: GreyLevelChain, dtype: str, mask_unused_bits: bool) -> np.ndarray:
    dt = np.dtype(dtype)
    patterns = np.arange(2 ** (8 * dt.itemsize), dtype=np.int64)  # every bit pattern
    if mask_unused_bits and chain.bits_stored < 8 * dt.itemsize:
        values = chain._masked(patterns)
    else:
        values = patterns.astype(f"u{dt.itemsize}").view(dt).astype(np.int64)
    table = chain.values(values).astype(np.float32)
    table.flags.writeable = False
    return table


#: Pixels per block of the blocked array passes below: the block's float32 output
#: (1 MiB) and numpy's index buffer stay in cache between the passes over it.
_BLOCK_PIXELS = 1 << 18


def _row_blocks(shape: tuple[int, ...]) -> Iterator[slice]:
    """Slices of whole rows of about :data:`_BLOCK_PIXELS` pixels covering a 2-D ``shape``."""
    step = max(1, _BLOCK_PIXELS // max(1, shape[1]))
    for start in range(0, shape[0], step):
        yield slice(start, start + step)


def _apply_affine(
    raw: np.ndarray,
    x0: int,
    a: float,
    b: float,
    x_max: float,
    stored: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """``clip((raw - x0) * a + b, 0, 1)`` in float32, to about 1e-7 of the float64 value.

    With ``stored`` = (lo, hi), None as soon as a value lies outside it (stray bits
    above Bits Stored: the caller then needs the masking table), checked block by block
    as the blocks are mapped, not in a pass of its own. Each block of rows is mapped
    then clipped while in cache. Where every term stays below 4 (float32 rounding then
    stays below 5e-7), OpenCV maps the block in one pass: for ``a > 0`` its min-max
    normalisation, ``x * a + g`` with the scale and shift it derives from the block's
    own extremes, which we pick so that they are ``a`` and ``g`` (1.3x faster than
    ``addWeighted``, which inverted chains use); the extremes are also the stray-bit
    check, and only the ends that can leave [0, 1] are clipped. Else four numpy passes.
    """
    g = b - x0 * a
    use_cv = raw.ndim == 2 and max(abs(a) * x_max, abs(g)) <= 4.0
    lo, hi = np.float32(0.0), np.float32(1.0)
    out = np.empty(raw.shape, dtype=np.float32)
    blocks = list(_row_blocks(raw.shape)) if raw.ndim == 2 else [slice(None)]

    def run(part: list[slice]) -> bool:
        for rows in part:
            src, dst = raw[rows], out[rows]
            if src.size == 0:
                continue
            if use_cv:
                x_min, x_max_, _, _ = cv2.minMaxLoc(src)
                if stored is not None and not stored[0] <= x_min <= x_max_ <= stored[1]:
                    return False
                y_min, y_max = a * x_min + g, a * x_max_ + g  # the block's extreme values
                if a > 0:  # (min-max normalisation only scales up: smallest to smallest)
                    cv2.normalize(src, dst, y_min, y_max, cv2.NORM_MINMAX, dtype=cv2.CV_32F)
                else:
                    cv2.addWeighted(src, a, src, 0.0, g, dst=dst, dtype=cv2.CV_32F)
                if min(y_min, y_max) < _CLIP_MARGIN:
                    cv2.threshold(dst, 0.0, 0.0, cv2.THRESH_TOZERO, dst=dst)
                if max(y_min, y_max) > 1.0 - _CLIP_MARGIN:
                    cv2.threshold(dst, 1.0, 0.0, cv2.THRESH_TRUNC, dst=dst)
                continue
            if stored is not None and not _within(src, *stored):
                return False
            np.copyto(dst, src, casting="unsafe")  # (a mixed-type subtract is 3x slower)
            dst -= np.float32(x0)  # exact: integers below 2^24
            dst *= np.float32(a)
            dst += np.float32(b)
            np.clip(dst, lo, hi, out=dst)
        return True

    return out if all(_in_threads(run, blocks, raw.size)) else None


#: A block whose values all lie this far inside [0, 1] needs no clipping: float32
#: rounding of ``x * a + g`` (terms below 4) moves a value by less than 5e-7.
_CLIP_MARGIN = 1e-6


def _within(x: np.ndarray, lo: int, hi: int) -> bool:
    """Whether every value of integer ``x`` lies in [lo, hi]."""
    if x.size == 0:
        return True
    if x.dtype.kind == "u" and lo <= 0:
        return int(x.max()) <= hi
    return lo <= int(x.min()) and int(x.max()) <= hi


def _take_rows(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for unsigned ``index`` covering every bit pattern of its dtype.

    In blocks of rows, so numpy's intp copy of the index stays in cache, and with
    ``mode="wrap"``: no index can be out of range (the table has an entry for every
    pattern), and skipping the bounds check makes the gather 1.7x faster.
    """
    out = np.empty(index.shape, dtype=np.float32)
    if index.ndim != 2:
        np.take(table, index, out=out, mode="wrap")
        return out

    def take(part: list[slice]) -> None:
        for rows in part:
            np.take(table, index[rows], out=out[rows], mode="wrap")

    _in_threads(take, list(_row_blocks(index.shape)), index.size)
    return out


#: Images at least this large are mapped by several threads...
_THREADED_PIXELS = 1 << 20
#: ... at most this many (the passes are bound by memory, not arithmetic).
_MAX_THREADS = 4


def _in_threads(fn: Callable[[list[slice]], Any], blocks: list[slice], pixels: int) -> list[Any]:
    """``fn`` over ``blocks`` split in contiguous parts, one per thread; the results.

    numpy's gathers and ufuncs and OpenCV release the GIL, so the parts run in
    parallel: on up to ``cv2.getNumThreads()`` threads (``cv2.setNumThreads(1)``
    makes the reader single-threaded, as a cache build's workers do), for images of
    :data:`_THREADED_PIXELS` or more.
    """
    threads = min(cv2.getNumThreads(), _MAX_THREADS, len(blocks))
    if pixels < _THREADED_PIXELS or threads <= 1:
        return [fn(blocks)]
    step = math.ceil(len(blocks) / threads)
    parts = [blocks[i : i + step] for i in range(0, len(blocks), step)]
    return list(_executor(threads, os.getpid()).map(fn, parts))


@functools.lru_cache(maxsize=4)
def _executor(threads: int, pid: int) -> ThreadPoolExecutor:
    # One pool per process: a pool inherited through fork has no threads behind it.
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="radsearch-grey")


def _lut_from_sequence(ds: Dataset, keyword: str, *, signed_first: bool) -> LookupTable | None:
    seq = ds.get(keyword)
    if not seq:
        return None
    item = seq[0]
    if "LUTDescriptor" not in item or "LUTData" not in item:
        return None
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise ValueError(f"{keyword} LUT Descriptor has {len(descriptor)} values, not 3")
    entries, first, bits = descriptor
    entries = entries or 65536
    if signed_first and first >= 32768:  # US-encoded negative first value
        first -= 65536
    elem = item["LUTData"]
    if elem.VR == "OW" or isinstance(elem.value, bytes):
        meta = getattr(ds, "file_meta", None)
        little = True
        if meta is not None and meta.get("TransferSyntaxUID"):
            little = UID(str(meta.TransferSyntaxUID)).is_little_endian
        values = np.frombuffer(bytes(elem.value), dtype="<u2" if little else ">u2")[:entries]
    else:
        value = elem.value
        values = np.asarray(
            list(value) if isinstance(value, list | tuple | MultiValue) else [value]
        )
    if values.size == 0:
        raise ValueError(f"{keyword} has no LUT Data")
    if not 1 <= bits <= 16:
        bits = max(1, int(values.max()).bit_length())
    return LookupTable.from_values(first, bits, values)


def _window(ds: Dataset) -> Window | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center = _first_float(ds.WindowCenter)
        width = _first_float(ds.WindowWidth)
    except (TypeError, ValueError):
        return None  # an unusable window falls back to the full range
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    window = Window(center=center, width=width, function=function)
    return window if window.is_valid else None


def _first_float(value: Any) -> float:
    if isinstance(value, list | tuple | MultiValue):
        value = value[0]
    return float(value)


def _int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"missing {keyword}")
        return default
    return int(value)


def _float_attr(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return float(_first_float(value))


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Radiograph:
    """One radiograph: ``image`` float32 (H, W) in [0, 1], bone bright; de-identified ``meta``."""

    image: np.ndarray
    meta: dict[str, Any]
    path: Path


META_KEYS: tuple[str, ...] = (
    "pixel_spacing_mm",
    "modality",
    "view",
    "laterality",
    "patient_orientation",
    "body_part",
    "series_description",
    "manufacturer",
    "bits_stored",
    "photometric",
    "rows",
    "columns",
    "patient_sex",
    "patient_age",
    "patient_key",
    "study_key",
    "site_key",
    "transfer_syntax",
)

_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")

#: Largest image decoded (rows x columns): 64 megapixels, twice a 43 x 43 cm detector at
#: 0.1 mm. Headers claiming more are refused before a decoder allocates the output
#: (65535 x 65535 x 2 bytes would be 8 GiB).
MAX_PIXELS = 64 * 2**20


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
            if _is_deferred(elem) and elem.value_tell:
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
        raise CorruptDicomError(path, f"cannot parse the DICOM header: {_short(e)}") from e
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


#: Values longer than this stay in the file while an uncompressed radiograph's header
#: is parsed (pydicom's ``defer_size``); only pixel data and rare large blobs are that long.
_DEFER_BYTES = 1 << 20


def _read_for_pixels(path: Path) -> Dataset:
    """The data set to decode: an uncompressed file's pixel data stays in the file, to be
    mapped (:func:`_mapped_native`); anything else is read whole (an encapsulated value
    would be read to find its end, then read again)."""
    defer = None
    with contextlib.suppress(Exception):  # no or broken file meta: read_dataset says why
        if pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID in _MAPPABLE_SYNTAXES:
            defer = _DEFER_BYTES
    return read_dataset(path, defer_size=defer)


def read_radiograph(path: str | os.PathLike[str], *, salt: str | bytes | None = None) -> Radiograph:
    """Decode one radiograph and run the grey-level chain; see the module docstring.

    Raises a :class:`DicomError` subclass for every file that is not a readable 2-D
    greyscale image. ``salt`` keys the pseudonyms in ``meta`` (default: :func:`pipeline.deid.resolve_salt`).
    """
    path = Path(path)
    ds = _read_for_pixels(path)  # parsed here, not deeper: a deep file fails as it always did
    r = _raw_of(ds, path, salt)
    return Radiograph(image=r.grey(r.raw), meta=r.meta, path=path)  # (H, W) float32


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


def read_raw(path: str | os.PathLike[str], *, salt: str | bytes | None = None) -> RawRadiograph:
    """Decode one radiograph's stored values without running the grey-level chain.

    Every check of :func:`read_radiograph` applies (it is this plus the chain).
    """
    path = Path(path)
    return _raw_of(_read_for_pixels(path), path, salt)


def _raw_of(ds: Dataset, path: Path, salt: str | bytes | None) -> RawRadiograph:
    """:func:`read_raw` on a parsed data set."""
    raw, chain, mask = _decoded(ds, path)
    return RawRadiograph(
        raw=raw,
        chain=chain,
        mask_unused_bits=mask,
        meta=_meta(ds, path, resolve_salt(salt)),
        path=path,
    )


def _decoded(ds: Dataset, path: Path) -> tuple[np.ndarray, GreyLevelChain, bool]:
    """The checks, grey-level chain and decoding shared by :func:`read_radiograph` and
    :func:`read_raw`: (stored values (H, W), chain, whether the chain must mask stray bits)."""
    with _header_values(path):
        _check_image(ds, path)
    try:
        chain = GreyLevelChain.from_dataset(ds)
    except (DicomError, RecursionError):
        raise
    except Exception as e:  # ValueError, TypeError, ... and pydicom's own conversions
        raise CorruptDicomError(path, f"invalid grey-level attributes: {_short(e)}") from e
    with _header_values(path):
        _check_codestream(ds, path)
    raw, _plugin = _decode_described(ds, path)  # (_check_image described the pixels)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if raw.shape != (rows, cols):
        raise UnsupportedImageError(
            path, f"decoded pixel array has shape {raw.shape}, not ({rows}, {cols})"
        )
    return raw, chain, _transfer_syntax(ds, path) not in _NO_MASK_SYNTAXES


def read_meta(path: str | os.PathLike[str], *, salt: str | bytes | None = None) -> dict[str, Any]:
    """The de-identified ``meta`` dict of a file, from its header only (no pixel decoding)."""
    path = Path(path)
    ds = read_dataset(path, stop_before_pixels=True)
    with _header_values(path):
        return _meta(ds, path, resolve_salt(salt))


@contextlib.contextmanager
def _header_values(path: Path) -> Iterator[None]:
    """pydicom converts raw values when first read: a corrupt one (an unknown VR, bytes
    that are no number) fails there, as any exception; it becomes this file's error."""
    try:
        yield
    except DicomError:
        raise
    except Exception as e:
        raise CorruptDicomError(path, f"invalid header value: {_short(e)}") from e


# JPEG start-of-frame markers (ITU T.81 B.1.1.3) and JPEG-LS's SOF55 (0xF7)
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
)
_JPEG_FAMILY = frozenset(
    {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
    }
)


def jpeg_frame_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(precision, rows, columns, components) from a JPEG/JPEG-LS start of frame, or None."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS:
            body = data[pos + 4 : pos + 2 + length]
            if len(body) < 6:
                return None
            return (
                body[0],
                int.from_bytes(body[1:3], "big"),
                int.from_bytes(body[3:5], "big"),
                body[5],
            )
        if marker == 0xDA or length < 2:  # scan data before a frame header: give up
            return None
        pos += 2 + length
    return None


def _check_codestream(ds: Dataset, path: Path) -> None:
    """Refuse a JPEG-family frame whose header contradicts the data set before a decoder
    sees it: GDCM reads such frames past its buffer and kills the process."""
    ts = _transfer_syntax(ds, path)
    if ts not in _JPEG_FAMILY:
        return
    from pydicom.encaps import generate_frames

    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    except Exception as e:
        raise DecodeError(path, f"broken encapsulated pixel data: {_short(e)}") from e
    header = jpeg_frame_header(bytes(first))
    if header is None:
        raise DecodeError(
            path, f"no JPEG frame header in the {ts.name} pixel data; the codestream is corrupt"
        )
    precision, rows, cols, components = header
    want = (int(ds.Rows), int(ds.Columns), _optional_int(ds, "SamplesPerPixel", 1))
    if not 2 <= precision <= 16 or (rows not in (0, want[0])) or (cols, components) != want[1:]:
        raise DecodeError(
            path,
            f"the JPEG frame header ({rows}x{cols}, {components} component(s), {precision} bits) "
            f"contradicts the DICOM header ({want[0]}x{want[1]}, {want[2]} sample(s)); the codestream is corrupt",
        )


def _pixel_description(ds: Dataset, path: Path) -> tuple[int, str]:
    """Check the Image Pixel module is present and parses; return (samples, photometric)."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImageError(
                path, "float pixel data (a parametric map), not a radiograph"
            )
        raise NoPixelDataError(path, f"no pixel data ({_sop_name(ds)})")
    _transfer_syntax(ds, path)
    missing = [k for k in _PIXEL_KEYWORDS if k not in ds]
    if missing:
        raise CorruptDicomError(path, f"pixel data without the required {', '.join(missing)}")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits_allocated = int(ds.BitsAllocated)
        bits_stored = _optional_int(ds, "BitsStored", bits_allocated)
        samples = _optional_int(ds, "SamplesPerPixel", 1)
        representation = _optional_int(ds, "PixelRepresentation", 0)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except (ValueError, TypeError, OverflowError) as e:
        raise CorruptDicomError(path, f"invalid Image Pixel attribute: {_short(e)}") from e
    if (
        rows <= 0
        or cols <= 0
        or bits_allocated not in (1, 8, 16, 32, 64)
        or not 1 <= bits_stored <= bits_allocated
    ):
        raise CorruptDicomError(
            path,
            f"invalid image description: {rows}x{cols}, Bits Allocated {bits_allocated}, Bits Stored {bits_stored}",
        )
    if samples not in (1, 3, 4) or representation not in (0, 1):
        raise CorruptDicomError(
            path,
            f"invalid image description: Samples per Pixel {samples}, Pixel Representation "
            f"{representation} (0 unsigned or 1 signed)",
        )
    _number_of_frames(ds, path)
    if rows * cols > MAX_PIXELS:
        raise UnsupportedImageError(
            path,
            f"{rows}x{cols} pixels is more than the {MAX_PIXELS / 2**20:.0f}-megapixel limit of a "
            "radiograph (a corrupt header, or not a radiograph); not decoded",
        )
    return samples, photometric


def _optional_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute; absent or empty means ``default`` (0 is a value, not absent)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return int(value)


def _check_image(ds: Dataset, path: Path) -> None:
    samples, photometric = _pixel_description(ds, path)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotGreyscaleError(
            path,
            f"{photometric or 'unknown'} image with {samples} sample(s) per pixel; a radiograph is MONOCHROME1/2",
        )
    frames = _number_of_frames(ds, path)
    if frames > 1:
        raise MultiFrameError(path, f"{frames} frames; a radiograph is a single frame")


def _number_of_frames(ds: Dataset, path: Path) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (ValueError, TypeError) as e:
        raise CorruptDicomError(path, f"invalid Number of Frames: {_short(e)}") from e


def _sop_name(ds: Dataset) -> str:
    try:
        uid = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        return UID(str(uid)).name if uid else "unknown SOP class"
    except Exception:
        return "unknown SOP class"


# ---------------------------------------------------------------------------------------
# Meta
# ---------------------------------------------------------------------------------------

_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_AGE_CAP = 90.0  # HIPAA Safe Harbor pools ages of 90 and over


def _get(ds: Dataset, keyword: str) -> Any:
    """A header value, or None when absent, empty or not convertible."""
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return None
    return value


def _str(ds: Dataset, keyword: str, *, upper: bool = False) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    text = " ".join(str(value).split())
    if not text:
        return None
    return text.upper() if upper else text


def _meta(ds: Dataset, path: Path, salt: bytes) -> dict[str, Any]:
    modality = _str(ds, "Modality", upper=True)
    spacing = None
    keywords = (
        ("ImagerPixelSpacing", "PixelSpacing") if modality in ("DX", "CR") else ("PixelSpacing",)
    )
    for keyword in keywords:
        spacing = _spacing(_get(ds, keyword))
        if spacing is not None:
            break
    laterality = _str(ds, "ImageLaterality", upper=True) or _str(ds, "Laterality", upper=True)
    series = _str(ds, "SeriesDescription")
    meta: dict[str, Any] = {
        "pixel_spacing_mm": spacing,
        "modality": modality,
        "view": _str(ds, "ViewPosition", upper=True),
        "laterality": laterality if laterality in ("L", "R", "B") else None,
        "patient_orientation": _orientation(_get(ds, "PatientOrientation")),
        "body_part": _str(ds, "BodyPartExamined", upper=True),
        "series_description": clean_text(series, ds) if series else None,
        "manufacturer": _str(ds, "Manufacturer"),
        "bits_stored": _int_or_none(_get(ds, "BitsStored")),
        "photometric": _str(ds, "PhotometricInterpretation", upper=True),
        "rows": _int_or_none(_get(ds, "Rows")),
        "columns": _int_or_none(_get(ds, "Columns")),
        "patient_sex": {"F": 0.0, "M": 1.0}.get(_str(ds, "PatientSex", upper=True) or ""),
        "patient_age": _age(ds),
        "patient_key": None,
        "study_key": None,
        "site_key": None,
        "transfer_syntax": None,
    }
    patient = [p for p in (_str(ds, "PatientID"), _str(ds, "IssuerOfPatientID")) if p]
    if patient:
        meta["patient_key"] = pseudonym("patient", "\x1f".join(patient), salt)
    study_id = _str(ds, "StudyID")
    study_uid = _str(ds, "StudyInstanceUID")
    if study_id and re.fullmatch(r"S-[0-9a-f]{12}", study_id):  # a de-identified copy keeps its key
        meta["study_key"] = study_id
    elif study_uid:
        meta["study_key"] = pseudonym("study", study_uid, salt)
    site = [p for p in (_str(ds, "InstitutionName"), _str(ds, "StationName")) if p]
    if site:
        meta["site_key"] = pseudonym("site", "\x1f".join(site), salt)
    try:
        meta["transfer_syntax"] = _transfer_syntax(ds, path).name
    except DicomError:
        meta["transfer_syntax"] = None
    return meta


def _orientation(value: Any) -> tuple[str, str] | None:
    """PatientOrientation (row direction, column direction), e.g. ``("L", "F")``."""
    if value is None:
        return None
    parts = [
        str(v).strip().upper()
        for v in (value if isinstance(value, list | tuple) else str(value).split("\\"))
    ]
    if len(parts) != 2 or not all(re.fullmatch(r"[LRAPHF]{1,3}", p) for p in parts):
        return None
    return (parts[0], parts[1])


def _spacing(value: Any) -> tuple[float, float] | None:
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row) and math.isfinite(col)) or row <= 0 or col <= 0:
        return None
    return row, col


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _age(ds: Dataset) -> float | None:
    years = None
    text = _str(ds, "PatientAge", upper=True)
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY]?)", text or "")
    if match:
        years = int(match.group(1)) * _AGE_UNITS[match.group(2) or "Y"]
    else:
        birth = _date(_str(ds, "PatientBirthDate"))
        study = _date(_str(ds, "StudyDate"))
        if birth and study and study >= birth:
            years = (study - birth).days / 365.25
    if years is None:
        return None
    return round(min(years, _AGE_CAP), 1)


def _date(text: str | None) -> date | None:
    if not text or not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# Folder scan
# ---------------------------------------------------------------------------------------


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
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s.error] = counts.get(s.error, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def iter_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Every regular file under ``folder``, sorted, skipping hidden files and folders."""
    folder = Path(folder)
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


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
        except DicomError as e:
            skipped.append(SkippedFile(path=path, error=type(e).__name__, reason=e.reason))
            continue
        except Exception as e:  # an unforeseen failure is reported, never fatal to the scan
            skipped.append(SkippedFile(path=path, error=type(e).__name__, reason=_short(e, 300)))
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
    with _header_values(path):
        _check_image(ds, path)
        return _meta(ds, path, salt)


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
