"""Pixel data to stored values, with the fastest installed decoder first.

Decoding uses pydicom 3's decoders with the fastest installed plugin for each
transfer syntax first (:data:`DECODER_PREFERENCE`) and falls back to the next one
when a plugin fails on a file. Uncompressed (little-endian, 8- or 16-bit) pixel data
is not decoded at all: the header is parsed with the pixel data left in the file,
which is then mapped read-only, so the grey-level chain reads the stored values
straight from the page cache (no bytes object, no copy). Single-frame RLE goes to
pylibjpeg-rle's frame decoder directly.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
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

from pipeline.dicom.errors import (
    DecodeError,
    UnreadableFileError,
    UnsupportedTransferSyntaxError,
    short_reason,
)
from pipeline.dicom.image_header import (
    check_native_length,
    describe_pixels,
    plain_frame,
    transfer_syntax,
)
from pipeline.dicom.parse import deferred_element

try:  # optional, as every decoding plugin is: without it pydicom's RLE plugins decode
    from rle.rle import decode_frame as rle_decode_frame  # pylibjpeg-rle
except ImportError:
    rle_decode_frame = None


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

#: Native syntaxes whose pixel data can be mapped from the file as it is stored.
MAPPABLE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


def leaves_stray_bits(ts: UID) -> bool:
    """Whether stored values decoded from transfer syntax ``ts`` may carry bits above
    Bits Stored, which the grey-level chain then masks (PS3.5 8.1.1)."""
    return ts not in _NO_MASK_SYNTAXES


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
    describe_pixels(ds, path)
    return decode_described(ds, path)


def decode_described(ds: Dataset, path: Path) -> tuple[np.ndarray, str]:
    """:func:`decode_pixels` once :func:`~pipeline.dicom.image_header.describe_pixels`
    has accepted ``ds``."""
    ts = transfer_syntax(ds, path)
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
    check_native_length(ds, ts, path)
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
            failures.append(f"{plugin or 'numpy'}: {short_reason(e)}")
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
    if rle_decode_frame is None:
        return None
    try:
        shape = plain_frame(ds, path)
        if shape is None:
            return None
        rows, cols, dtype = shape
        frame = _single_frame(ds.PixelData)
        if frame is None:
            return None
        decoded = rle_decode_frame(frame, rows * cols, 8 * dtype.itemsize, "<")
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:  # a refusal (or a panic) of the fast path: the plugin loop says why
        return None
    if len(decoded) != rows * cols * dtype.itemsize:
        return None
    return np.frombuffer(decoded, dtype=dtype).reshape(rows, cols)


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


def _mapped_native(ds: Dataset, path: Path, ts: UID) -> np.ndarray | None:
    """A single-frame native image's stored values, mapped read-only from the file.

    Applies where ``ds`` was parsed with its pixel data deferred (see
    :func:`~pipeline.dicom.parse.read_dataset`), the syntax is little endian and
    pixels are 8 or 16 bits, one sample: the usual uncompressed radiograph. The values
    are never read into a bytes object nor copied; the grey-level chain reads them
    straight from the page cache (bare pydicom reads the file, then copies the pixels
    into an array). The mapping lives as long as the array. Returns None where this
    does not apply.
    """
    if ts not in MAPPABLE_SYNTAXES:
        return None
    elem = deferred_element(ds, "PixelData")
    if elem is None or elem.value_tell is None:
        return None
    shape = plain_frame(ds, path)
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
        raise UnreadableFileError(path, f"cannot map the pixel data: {short_reason(e)}") from e
