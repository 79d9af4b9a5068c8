"""What a header says about its image, checked before a decoder sees the pixel data.

The transfer syntax, the Image Pixel description (rows, columns, bits, samples,
frames, photometric interpretation) and, for the JPEG family, the codestream's own
frame header are read and checked against each other here: a decoder given a header
that lies can allocate gigabytes or read past its buffer (GDCM kills the process).
Every refusal is a :class:`~pipeline.dicom.errors.DicomError` subclass.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from pipeline.dicom.errors import (
    CorruptDicomError,
    DecodeError,
    MultiFrameError,
    NoPixelDataError,
    NotGreyscaleError,
    UnsupportedImageError,
    short_reason,
)
from pipeline.dicom.parse import deferred_element

_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")

#: Largest image decoded (rows x columns): 64 megapixels, twice a 43 x 43 cm detector at
#: 0.1 mm. Headers claiming more are refused before a decoder allocates the output
#: (65535 x 65535 x 2 bytes would be 8 GiB).
MAX_PIXELS = 64 * 2**20

# JPEG start-of-frame markers (ITU T.81 B.1.1.3) and JPEG-LS's SOF55 (0xF7)
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
)
# baseline, extended, lossless and lossless SV1 JPEG, and JPEG-LS (lossless, near-lossless)
_JPEG_FAMILY = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes)


def transfer_syntax(ds: Dataset, path: Path) -> UID:
    """The data set's transfer syntax: from its file meta, else from how it was encoded."""
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


def optional_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute; absent or empty means ``default`` (0 is a value, not absent)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return int(value)


def number_of_frames(ds: Dataset, path: Path) -> int:
    """Number of Frames (1 when absent or empty)."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (ValueError, TypeError) as e:
        raise CorruptDicomError(path, f"invalid Number of Frames: {short_reason(e)}") from e


def describe_pixels(ds: Dataset, path: Path) -> tuple[int, str]:
    """Check the Image Pixel module is present and parses; return (samples, photometric)."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImageError(
                path, "float pixel data (a parametric map), not a radiograph"
            )
        raise NoPixelDataError(path, f"no pixel data ({_sop_name(ds)})")
    transfer_syntax(ds, path)
    missing = [k for k in _PIXEL_KEYWORDS if k not in ds]
    if missing:
        raise CorruptDicomError(path, f"pixel data without the required {', '.join(missing)}")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits_allocated = int(ds.BitsAllocated)
        bits_stored = optional_int(ds, "BitsStored", bits_allocated)
        samples = optional_int(ds, "SamplesPerPixel", 1)
        representation = optional_int(ds, "PixelRepresentation", 0)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except (ValueError, TypeError, OverflowError) as e:
        raise CorruptDicomError(path, f"invalid Image Pixel attribute: {short_reason(e)}") from e
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
    number_of_frames(ds, path)
    if rows * cols > MAX_PIXELS:
        raise UnsupportedImageError(
            path,
            f"{rows}x{cols} pixels is more than the {MAX_PIXELS / 2**20:.0f}-megapixel limit of a "
            "radiograph (a corrupt header, or not a radiograph); not decoded",
        )
    return samples, photometric


def check_greyscale_image(ds: Dataset, path: Path) -> None:
    """Refuse anything but one frame of MONOCHROME1/2 pixels, one sample each."""
    samples, photometric = describe_pixels(ds, path)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotGreyscaleError(
            path,
            f"{photometric or 'unknown'} image with {samples} sample(s) per pixel; a radiograph is MONOCHROME1/2",
        )
    frames = number_of_frames(ds, path)
    if frames > 1:
        raise MultiFrameError(path, f"{frames} frames; a radiograph is a single frame")


def plain_frame(ds: Dataset, path: Path) -> tuple[int, int, np.dtype] | None:
    """(rows, columns, little-endian dtype) of a single-frame, one-sample 8/16-bit
    image, the kind the fast paths read; None for anything else."""
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16) or optional_int(ds, "SamplesPerPixel", 1) != 1:
        return None
    if number_of_frames(ds, path) != 1:
        return None
    kind = "i" if optional_int(ds, "PixelRepresentation", 0) == 1 else "u"
    return int(ds.Rows), int(ds.Columns), np.dtype(f"<{kind}{bits // 8}")


def check_native_length(ds: Dataset, ts: UID, path: Path) -> None:
    """Refuse uncompressed pixel data shorter than its description needs."""
    if ts.is_encapsulated or ts == DeflatedExplicitVRLittleEndian:
        return
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = number_of_frames(ds, path)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    expected = math.ceil(rows * cols * frames * samples * bits / 8)
    if ds.get("PhotometricInterpretation", "") == "YBR_FULL_422":
        expected = expected // 3 * 2
    deferred = deferred_element(ds, "PixelData")
    actual = deferred.length if deferred is not None else len(ds.PixelData or b"")
    if actual < expected:
        raise CorruptDicomError(
            path,
            f"truncated pixel data: {actual} bytes where {rows}x{cols}x{frames} pixels of {bits} bits need {expected}",
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


def check_codestream(ds: Dataset, path: Path) -> None:
    """Refuse a JPEG-family frame whose header contradicts the data set before a decoder
    sees it: GDCM reads such frames past its buffer and kills the process."""
    ts = transfer_syntax(ds, path)
    if ts not in _JPEG_FAMILY:
        return
    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    except Exception as e:
        raise DecodeError(path, f"broken encapsulated pixel data: {short_reason(e)}") from e
    header = jpeg_frame_header(bytes(first))
    if header is None:
        raise DecodeError(
            path, f"no JPEG frame header in the {ts.name} pixel data; the codestream is corrupt"
        )
    precision, rows, cols, components = header
    want = (int(ds.Rows), int(ds.Columns), optional_int(ds, "SamplesPerPixel", 1))
    if not 2 <= precision <= 16 or (rows not in (0, want[0])) or (cols, components) != want[1:]:
        raise DecodeError(
            path,
            f"the JPEG frame header ({rows}x{cols}, {components} component(s), {precision} bits) "
            f"contradicts the DICOM header ({want[0]}x{want[1]}, {want[2]} sample(s)); the codestream is corrupt",
        )


def _sop_name(ds: Dataset) -> str:
    try:
        uid = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        return UID(str(uid)).name if uid else "unknown SOP class"
    except Exception:
        return "unknown SOP class"
