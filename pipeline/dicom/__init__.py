"""Reading radiographs: ``read_radiograph(path) -> Radiograph``, right on real-world files.

One function turns a DICOM file into a float32 image in [0, 1] with bone bright,
whatever the file's encoding, bit depth, grey-level transforms or photometric
interpretation, plus a dict of typed, de-identified header values. Everything that
can go wrong raises one error family, :class:`DicomError`, with a subclass per cause
and a one-line message that names the file and what to do.

One module per job, in the order a file goes through them:

- :mod:`~pipeline.dicom.errors`: the :class:`DicomError` family;
- :mod:`~pipeline.dicom.parse`: a file to a pydicom data set, whatever its length fields say;
- :mod:`~pipeline.dicom.image_header`: the header's image description, checked before decoding;
- :mod:`~pipeline.dicom.decoders`: pixel data to stored values, fastest installed plugin first;
- :mod:`~pipeline.dicom.greylevels`: the grey-level chain (PS3.3 C.11) and its fast paths;
- :mod:`~pipeline.dicom.metadata`: the de-identified ``meta`` dict;
- :mod:`~pipeline.dicom.reading`: :func:`read_radiograph` and :func:`read_raw`;
- :mod:`~pipeline.dicom.scan`: a whole folder, with a report of the skipped files.
"""

from pipeline.dicom.decoders import DECODER_PREFERENCE, decode_pixels, decoder_order
from pipeline.dicom.errors import (
    CorruptDicomError,
    DecodeError,
    DicomError,
    MultiFrameError,
    NoPixelDataError,
    NotDicomError,
    NotGreyscaleError,
    UnreadableFileError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from pipeline.dicom.greylevels import GreyLevelChain, LookupTable, Window
from pipeline.dicom.image_header import MAX_PIXELS
from pipeline.dicom.metadata import META_KEYS, parse_spacing, read_meta
from pipeline.dicom.parse import read_dataset
from pipeline.dicom.reading import Radiograph, RawRadiograph, read_radiograph, read_raw
from pipeline.dicom.scan import (
    NOT_DICOM_SUFFIXES,
    ScanResult,
    SkippedFile,
    candidate_files,
    iter_files,
    scan_folder,
    write_skipped_csv,
)

__all__ = [
    "DECODER_PREFERENCE",
    "MAX_PIXELS",
    "META_KEYS",
    "NOT_DICOM_SUFFIXES",
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
    "candidate_files",
    "decode_pixels",
    "decoder_order",
    "iter_files",
    "parse_spacing",
    "read_dataset",
    "read_meta",
    "read_radiograph",
    "read_raw",
    "scan_folder",
    "write_skipped_csv",
]
