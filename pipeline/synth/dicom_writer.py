"""Write one greyscale array as a DICOM file, in one of four transfer syntaxes.

``uncompressed`` (explicit VR little endian), ``rle`` (RLE lossless) and ``jpeg2000``
(JPEG 2000 lossless) are encoded by pydicom with pylibjpeg's encoders; ``jpeg_lossless``
(JPEG lossless, process 14, first-order prediction: SV1) has no pydicom encoder, so its
codestream comes from GDCM's ``ImageChangeTransferSyntax`` and is encapsulated by
pydicom, which keeps the header exactly as given. The output bytes depend only on the
inputs (no generated UIDs, no clock), so a seeded data set is reproducible to the byte.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from ..io import atomic_write_bytes
from ..registry import check_choice

try:  # optional for reading (pydicom's decoders are plugins); only this JPEG writer needs it
    import gdcm
except ImportError:
    gdcm = None

TRANSFER_SYNTAXES: dict[str, str] = {
    "uncompressed": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg_lossless": JPEGLosslessSV1,
}

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"

PrivateTag = tuple[int, str, int, str, Any]  # (group, creator, element offset, VR, value)


def syntax_name(name_or_uid: str) -> str:
    """Resolve a transfer syntax name (or UID) to its name in ``TRANSFER_SYNTAXES``."""
    for name, uid in TRANSFER_SYNTAXES.items():
        if name_or_uid == uid:
            return name
    return check_choice("transfer syntax", name_or_uid, list(TRANSFER_SYNTAXES))


def build_dataset(
    pixels: np.ndarray,
    *,
    transfer_syntax: str = "uncompressed",
    fields: Mapping[str, Any] | None = None,
    private: Iterable[PrivateTag] = (),
    bits_stored: int | None = None,
) -> Dataset:
    """A dataset holding ``pixels`` (H, W) uint16 or int16, encoded in ``transfer_syntax``.

    ``fields`` maps DICOM keywords to values; a list of dicts becomes a sequence, a
    ``DataElement`` is inserted as it is (for an explicit VR). ``SOPClassUID`` and
    ``SOPInstanceUID`` default to DX for presentation and a fixed placeholder.
    """
    name = syntax_name(transfer_syntax)
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.int16):
        raise ValueError(f"pixels must be a 2-D uint16 or int16 array, got {arr.dtype} {arr.shape}")
    fields = dict(fields or {})
    signed = arr.dtype == np.int16
    bits = int(bits_stored or fields.get("BitsStored") or 16)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits_stored must be in 1..16, got {bits}")

    ds = Dataset()
    ds.SOPClassUID = fields.pop("SOPClassUID", DX_FOR_PRESENTATION)
    ds.SOPInstanceUID = fields.pop("SOPInstanceUID", "2.25.1")
    for keyword, value in fields.items():
        _set(ds, keyword, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = fields.get("PhotometricInterpretation", "MONOCHROME2")
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    for group, creator, offset, vr, value in private:
        ds.private_block(group, creator, create=True).add_new(offset, vr, value)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADSEARCH_SYNTH"
    ds.file_meta = meta

    arr = arr.astype("<i2" if signed else "<u2", copy=False)
    if name == "uncompressed":
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OW"
    elif name == "jpeg_lossless":
        ds.PixelData = encapsulate([_gdcm_jpeg_lossless(arr, bits, ds.PhotometricInterpretation)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    else:
        ds.compress(
            TRANSFER_SYNTAXES[name], arr, encoding_plugin="pylibjpeg", generate_instance_uid=False
        )
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    transfer_syntax: str = "uncompressed",
    fields: Mapping[str, Any] | None = None,
    private: Iterable[PrivateTag] = (),
    bits_stored: int | None = None,
) -> Path:
    """Write ``pixels`` as a DICOM file (atomically) and return its path.

    ``transfer_syntax``: ``uncompressed``, ``rle``, ``jpeg2000`` or ``jpeg_lossless``
    (or the UID). Header fields as in :func:`build_dataset`.
    """
    ds = build_dataset(
        pixels,
        transfer_syntax=transfer_syntax,
        fields=fields,
        private=private,
        bits_stored=bits_stored,
    )
    return atomic_write_bytes(path, dataset_bytes(ds))


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_secondary_capture(
    path: str | os.PathLike[str],
    picture: np.ndarray,
    *,
    fields: Mapping[str, Any] | None = None,
) -> Path:
    """Write an 8-bit picture (a JPEG or PNG export of a radiograph) as a DICOM file.

    ``picture``: uint8 (H, W) greyscale, or (H, W, 3) RGB-encoded greyscale (made grey
    with the usual luminance weights, 0.299 R + 0.587 G + 0.114 B). The file
    is a Secondary Capture, MONOCHROME2, 8 bits stored, uncompressed; ``fields`` adds
    or replaces tags (``BodyPartExamined``, ``ViewPosition``, ``PixelSpacing``, ...).
    """
    arr = np.asarray(picture)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, 3) picture, got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3:
        arr = np.round(arr[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
    tags = {
        "SOPClassUID": SECONDARY_CAPTURE,
        "Modality": "OT",
        "ConversionType": "WSD",
        "PhotometricInterpretation": "MONOCHROME2",
        "BurnedInAnnotation": "YES",
        **dict(fields or {}),
    }
    return write_dicom(path, arr.astype(np.uint16), fields=tags, bits_stored=8)


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    if isinstance(value, DataElement):
        ds.add(value)
    elif isinstance(value, list) and value and isinstance(value[0], Mapping):
        items = [Dataset() for _ in value]
        for sub, item in zip(items, value):
            for k, v in item.items():
                _set(sub, k, v)
        setattr(ds, keyword, Sequence(items))
    else:
        setattr(ds, keyword, value)


def _gdcm_jpeg_lossless(arr: np.ndarray, bits: int, photometric: str) -> bytes:
    """JPEG lossless SV1 codestream of one frame, encoded by GDCM."""
    if gdcm is None:
        raise RuntimeError("writing JPEG lossless needs python-gdcm: pip install python-gdcm")
    rows, cols = arr.shape
    writer = gdcm.ImageWriter()  # keeps the image alive while it is converted
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((cols, rows, 1))
    pi = gdcm.PhotometricInterpretation.GetPIType(photometric)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    signed = int(arr.dtype.kind == "i")
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits, bits - 1, signed))
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetByteStringValue(arr.tobytes())
    image.SetDataElement(element)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(image)
    if not change.Change():
        raise RuntimeError("GDCM could not encode the frame as JPEG lossless")
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    return b"".join(
        fragments.GetFragment(i).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
        for i in range(fragments.GetNumberOfFragments())
    )
