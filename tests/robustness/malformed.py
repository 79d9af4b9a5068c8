"""A corpus of malformed DICOM files, each with the outcome the reader must give.

Every variant starts from a tiny valid radiograph (:func:`base_dataset`, 16 x 12 pixels,
12 bits stored) or from pydicom's shipped test files, and breaks one thing: a
truncation, an inconsistent Image Pixel module, a broken grey-level transform, a
wrong or missing transfer syntax, a broken encapsulation, a claimed size far beyond
the bytes present, something that is not a file or not DICOM at all.

``expected`` is the :class:`pipeline.dicom.DicomError` subclass
:func:`pipeline.dicom.read_radiograph` must raise, or ``None`` when the file must read
as a 2-D image. The corpus is used by the robustness tests, the atheris fuzz (as its
seed corpus) and ``benchmarks/robustness.py``.

    from tests.robustness.malformed import write_corpus
    for variant, path in write_corpus(folder):
        ...
"""

from __future__ import annotations

import io
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pipeline.dicom import (
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

__all__ = [
    "COLUMNS",
    "ROWS",
    "Variant",
    "base_dataset",
    "encode",
    "good_files",
    "variants",
    "write_corpus",
]

ROWS, COLUMNS = 16, 12
TEST_FILES = Path(get_testdata_file("CT_small.dcm", download=False)).parent
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"  # a video syntax: pydicom has no decoder for it
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


@dataclass(frozen=True)
class Variant:
    """One malformed (or tricky but valid) file: how to write it and what reading it gives."""

    name: str
    expected: type[DicomError] | None  # None: reads as a 2-D float32 image
    write: Callable[[Path], None]
    note: str = ""
    isolate: bool = False  # read it in a subprocess: a regression would kill the process

    @property
    def outcome(self) -> str:
        return "reads fine" if self.expected is None else self.expected.__name__


# ---------------------------------------------------------------------------------------
# The valid starting point
# ---------------------------------------------------------------------------------------


def _pixels(rows: int = ROWS, columns: int = COLUMNS, frames: int = 1) -> np.ndarray:
    """A 12-bit ramp: (frames, rows, columns) or (rows, columns) uint16."""
    n = rows * columns * frames
    values = (np.arange(n, dtype=np.uint32) * 37 % 4096).astype(np.uint16)
    return values.reshape((frames, rows, columns) if frames > 1 else (rows, columns))


def base_dataset(**fields: object) -> Dataset:
    """A valid 16 x 12 DX radiograph (12 of 16 bits), with fake identifying header values.

    Keyword arguments set (or, with value ``None``, delete) top-level attributes;
    ``TransferSyntaxUID`` goes to the file meta.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = fields.pop("TransferSyntaxUID", ExplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1234567890"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = "2.25.1234567890"
    ds.StudyInstanceUID = "2.25.99887766"
    ds.SeriesInstanceUID = "2.25.99887767"
    ds.StudyDate = "20240105"
    ds.Modality = "DX"
    ds.InstitutionName = "HOSPITAL OF NOWHERE"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "MRN0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "KNEE"
    ds.ViewPosition = "AP"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = _pixels().tobytes()
    for keyword, value in fields.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, *, implicit: bool = False, file_format: bool = True) -> bytes:
    """The bytes of ``ds`` as a file: with preamble and file meta unless ``file_format`` is False."""
    buffer = io.BytesIO()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    if file_format:
        ts = ds.file_meta.TransferSyntaxUID
        known = ts.is_transfer_syntax
        pydicom.dcmwrite(
            buffer,
            ds,
            enforce_file_format=True,
            implicit_vr=None if known else False,
            little_endian=None if known else True,
        )
    else:
        del ds.file_meta
        pydicom.dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def _bytes(**fields: object) -> bytes:
    return encode(base_dataset(**fields))


def _pixel_data_offset(data: bytes) -> int:
    """Offset of the (7FE0,0010) element's tag in explicit VR little endian bytes."""
    at = data.rfind(PIXEL_DATA_TAG)
    if at < 0:
        raise ValueError("no Pixel Data element")
    return at


def _value_offset(data: bytes, at: int) -> int:
    """Offset of the value of the explicit VR element whose tag starts at ``at`` (OB/OW/UN)."""
    return at + 12


def _with_element(tag: int, vr: str, value: object, **fields: object) -> bytes:
    """``ds[tag]`` with an explicit VR and value; text for a numeric VR is written as LO first,
    then its VR bytes are patched (pydicom refuses to build such an element)."""
    ds = base_dataset(**fields)
    text = isinstance(value, str) and vr in ("DS", "IS", "US", "SS", "UL")
    ds.add(DataElement(tag, "LO" if text else vr, value))
    data = encode(ds)
    if text:
        needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"LO"
        at = data.find(needle)
        data = data[: at + 4] + vr.encode() + data[at + 6 :]
    return data


def _rle_bytes(**fields: object) -> bytes:
    ds = base_dataset()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    return encode(ds)


def _encapsulated(ts: str, fragments: list[bytes], **fields: object) -> bytes:
    ds = base_dataset(TransferSyntaxUID=ts, **fields)
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    return encode(ds)


def _nested(depth: int) -> bytes:
    """Content Sequences nested ``depth`` deep (undefined lengths), written byte by byte."""
    seq = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"  # (0040,A730) SQ, undefined length
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    leaf = b"\x08\x00\x00\x01SH\x02\x000 "  # (0008,0100) Code Value
    body = (seq + item) * depth + leaf + (item_end + seq_end) * depth
    data = _bytes()
    at = _pixel_data_offset(data)
    return data[:at] + body + data[at:]


def _lut_item(descriptor: list[int] | None, data: list[int] | None) -> Dataset:
    item = Dataset()
    if descriptor is not None:
        item.add(DataElement(0x00283002, "US", descriptor))
    if data is not None:
        item.add(DataElement(0x00283006, "US", data))
    item.LUTExplanation = "broken"
    return item


# ---------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------


def _file(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data() if callable(data) else data)

    return write


def _truncated(
    fraction_or_offset: float | int, *, from_pixels: bool = False
) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        data = _bytes()
        if from_pixels:
            start = _value_offset(data, _pixel_data_offset(data))
            cut = start + int((len(data) - start) * float(fraction_or_offset))
        elif isinstance(fraction_or_offset, int):
            cut = fraction_or_offset
        else:
            cut = int(len(data) * fraction_or_offset)
        path.write_bytes(data[:cut])

    return write


def _truncated_in(value: bytes, keep: int) -> Callable[[Path], None]:
    """Cut the file ``keep`` bytes into the first occurrence of ``value``."""

    def write(path: Path) -> None:
        data = _bytes()
        path.write_bytes(data[: data.index(value) + keep])

    return write


def _patched_length(length: int) -> Callable[[Path], None]:
    """Pixel Data whose 4-byte length field claims ``length`` bytes."""

    def write(path: Path) -> None:
        data = bytearray(_bytes())
        at = _pixel_data_offset(bytes(data))
        data[at + 8 : at + 12] = struct.pack("<I", length)
        path.write_bytes(bytes(data))

    return write


def _patched_us(keyword_tag: bytes, raw_value: bytes) -> Callable[[Path], None]:
    """Replace the value field of a US element (explicit VR LE) with ``raw_value`` (same length)."""

    def write(path: Path) -> None:
        data = bytearray(_bytes())
        at = data.find(keyword_tag + b"US")
        data[at + 8 : at + 10] = raw_value
        path.write_bytes(bytes(data))

    return write


def _rle_broken(kind: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        data = bytearray(_rle_bytes())
        at = _pixel_data_offset(bytes(data))
        value = at + 12  # the Basic Offset Table item starts here
        bot_len = struct.unpack("<I", data[value + 4 : value + 8])[0]
        frag = value + 8 + bot_len  # the first fragment's item tag
        if kind == "item_tag":
            data[frag : frag + 4] = b"\x00\x00\x00\x00"
        elif kind == "fragment_length":
            data[frag + 4 : frag + 8] = struct.pack("<I", 0x7FFFFFF0)
        elif kind == "segments":
            # the RLE header: number of segments, then 15 offsets
            data[frag + 8 : frag + 12] = struct.pack("<I", 15)
            data[frag + 12 : frag + 16] = struct.pack("<I", 0xFFFFFF00)
        elif kind == "no_delimiter":
            data = data[: len(data) - 8]
        elif kind == "garbage":
            n = struct.unpack("<I", data[frag + 4 : frag + 8])[0]
            rng = np.random.default_rng(3)
            data[frag + 8 + 64 : frag + 8 + n] = rng.integers(
                0, 256, n - 64, dtype=np.uint8
            ).tobytes()
        path.write_bytes(bytes(data))

    return write


def _copy(name: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        shutil.copyfile(TEST_FILES / name, path)

    return write


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("a folder named like a DICOM file\n")


def _symlink_loop(path: Path) -> None:
    other = path.with_name(path.name + ".loop")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def _dangling(path: Path) -> None:
    os.symlink(path.name + ".missing", path)


def _random_with_preamble(path: Path) -> None:
    rng = np.random.default_rng(11)
    body = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(b"\0" * 128 + b"DICM" + body)


def _random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(12).integers(0, 256, 2048, dtype=np.uint8).tobytes())


def _deflated_garbage(path: Path) -> None:
    data = bytearray(encode(base_dataset(TransferSyntaxUID=DeflatedExplicitVRLittleEndian)))
    # the deflated body starts after the file meta group: overwrite its tail with noise
    rng = np.random.default_rng(5)
    tail = len(data) // 2
    data[tail:] = rng.integers(0, 256, len(data) - tail, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _bad_charset_name() -> bytes:
    ds = base_dataset(SpecificCharacterSet="ISO_IR 192")
    ds.add(DataElement(0x00100010, "PN", b"\xff\xfe\xc3(DOE^J\xe9R\xd4ME"))
    return encode(ds)


def _unknown_charset() -> bytes:
    ds = base_dataset()
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds.PatientName = "MÜLLER^JÖRG"
    return encode(ds)


def _modality_lut(descriptor: list[int] | None, data: list[int] | None) -> Callable[[], bytes]:
    def build() -> bytes:
        return encode(base_dataset(ModalityLUTSequence=Sequence([_lut_item(descriptor, data)])))

    return build


def _voi_lut(descriptor: list[int] | None, data: list[int] | None) -> Callable[[], bytes]:
    def build() -> bytes:
        return encode(base_dataset(VOILUTSequence=Sequence([_lut_item(descriptor, data)])))

    return build


def _rgb() -> bytes:
    rgb = np.zeros((ROWS, COLUMNS, 3), np.uint8)
    rgb[..., 0] = 200
    return _bytes(
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=rgb.tobytes(),
    )


def _frames(n: int) -> bytes:
    return _bytes(NumberOfFrames=n, PixelData=_pixels(frames=n).tobytes())


def _no_transfer_syntax() -> bytes:
    ds = base_dataset()
    data = encode(ds)
    # rename (0002,0010) to an unknown file meta element of the same length
    at = data.find(b"\x02\x00\x10\x00UI")
    return data[:at] + b"\x02\x00\x99\x00" + data[at + 4 :]


# ---------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------


def variants() -> list[Variant]:
    """Every variant, in a fixed order (at least 40 malformed ones)."""
    v = Variant
    big = 0xFFFF
    return [
        # --- valid references (tricky but legal) --------------------------------------
        v("valid_explicit_le", None, _file(_bytes)),
        v("valid_implicit_le", None, _file(lambda: encode(base_dataset(), implicit=True))),
        v("valid_no_file_meta", None, _file(lambda: encode(base_dataset(), file_format=False))),
        v("valid_rle", None, _file(_rle_bytes)),
        v(
            "valid_monochrome1",
            None,
            _file(lambda: _bytes(PhotometricInterpretation="MONOCHROME1")),
        ),
        v(
            "valid_high_bit_inconsistent",
            None,
            _file(lambda: _bytes(HighBit=15)),
            "High Bit is not used",
        ),
        v(
            "pixel_data_longer",
            None,
            _file(lambda: _bytes(PixelData=_pixels().tobytes() + b"\0" * 64)),
        ),
        v(
            "window_width_zero",
            None,
            _file(lambda: _bytes(WindowWidth=0)),
            "falls back to the full range",
        ),
        v("window_width_negative", None, _file(lambda: _bytes(WindowWidth=-100))),
        v("window_center_nan", None, _file(lambda: _bytes(WindowCenter="NaN"))),
        v("window_text", None, _file(lambda: _with_element(0x00281051, "DS", "wide"))),
        v("modality_lut_item_without_data", None, _file(_modality_lut([4096, 0, 16], None))),
        v(
            "long_strings",
            None,
            _file(lambda: _bytes(SeriesDescription="X" * 60000, PatientComments="Y" * 500000)),
        ),
        v("bad_utf8_patient_name", None, _file(_bad_charset_name)),
        v("unknown_charset", None, _file(_unknown_charset)),
        v("nested_sequences_50", None, _file(lambda: _nested(50))),
        v("number_of_frames_one", None, _file(lambda: _bytes(NumberOfFrames=1))),
        # --- not a file / not DICOM ----------------------------------------------------
        v("empty_file", NotDicomError, _file(b"")),
        v("text_with_dcm_suffix", NotDicomError, _file(b"file,schatzker\n000001.dcm,2\n")),
        v("random_bytes", NotDicomError, _random),
        v("png_renamed", NotDicomError, _file(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)),
        v("random_bytes_with_dicm_preamble", CorruptDicomError, _random_with_preamble),
        v("only_preamble_and_marker", CorruptDicomError, _file(b"\0" * 128 + b"DICM")),
        v("directory_named_dcm", UnreadableFileError, _folder),
        v("symlink_loop", UnreadableFileError, _symlink_loop),
        v("dangling_symlink", UnreadableFileError, _dangling),
        # --- truncated ----------------------------------------------------------------
        v("truncated_in_preamble", NotDicomError, _truncated(64)),
        v("truncated_after_marker", CorruptDicomError, _truncated(140)),
        v("truncated_in_file_meta", CorruptDicomError, _truncated(180)),
        v("truncated_in_header", CorruptDicomError, _truncated_in(b"DOE^JANE", 3)),
        v(
            "truncated_before_pixel_data",
            CorruptDicomError,
            _truncated(-len(_pixels().tobytes()) - 6),
        ),
        v("truncated_pixel_data_start", CorruptDicomError, _truncated(0.02, from_pixels=True)),
        v("truncated_pixel_data_middle", CorruptDicomError, _truncated(0.5, from_pixels=True)),
        v("truncated_pixel_data_last_byte", CorruptDicomError, _truncated(0.999, from_pixels=True)),
        # --- Image Pixel module -------------------------------------------------------
        v("zero_rows", CorruptDicomError, _file(lambda: _bytes(Rows=0))),
        v("zero_columns", CorruptDicomError, _file(lambda: _bytes(Columns=0))),
        v("missing_rows", CorruptDicomError, _file(lambda: _bytes(Rows=None))),
        v(
            "missing_photometric",
            CorruptDicomError,
            _file(lambda: _bytes(PhotometricInterpretation=None)),
        ),
        v("bits_stored_above_allocated", CorruptDicomError, _file(lambda: _bytes(BitsStored=20))),
        v("bits_stored_zero", CorruptDicomError, _file(lambda: _bytes(BitsStored=0))),
        v("bits_allocated_12", CorruptDicomError, _file(lambda: _bytes(BitsAllocated=12))),
        v("bits_allocated_zero", CorruptDicomError, _file(lambda: _bytes(BitsAllocated=0))),
        v(
            "pixel_representation_2",
            CorruptDicomError,
            _file(lambda: _bytes(PixelRepresentation=2)),
        ),
        v(
            "pixel_representation_ffff",
            CorruptDicomError,
            _patched_us(b"\x28\x00\x03\x01", b"\xff\xff"),
        ),
        v("samples_per_pixel_zero", CorruptDicomError, _file(lambda: _bytes(SamplesPerPixel=0))),
        v(
            "pixel_data_shorter",
            CorruptDicomError,
            _file(lambda: _bytes(PixelData=_pixels().tobytes()[:100])),
        ),
        v("pixel_data_empty", CorruptDicomError, _file(lambda: _bytes(PixelData=b""))),
        v(
            "huge_dimensions_native",
            UnsupportedImageError,
            _file(lambda: _bytes(Rows=big, Columns=big)),
        ),
        v(
            "huge_dimensions_rle",
            UnsupportedImageError,
            _file(lambda: _rle_bytes(Rows=big, Columns=big)),
        ),
        v("huge_frames_native", MultiFrameError, _file(lambda: _bytes(NumberOfFrames=2**31 - 1))),
        v("huge_pixel_data_length", CorruptDicomError, _patched_length(0x7FFFFFF0)),
        v("huge_element_length", CorruptDicomError, _file(lambda: _huge_element())),
        v(
            "rows_wrong_vr_text",
            CorruptDicomError,
            _file(lambda: _with_element(0x00280010, "LO", "abc")),
        ),
        v(
            "rows_wrong_vr_signed",
            CorruptDicomError,
            _file(lambda: _with_element(0x00280010, "SS", -16)),
        ),
        v(
            "number_of_frames_text",
            CorruptDicomError,
            _file(lambda: _with_element(0x00280008, "IS", "many")),
        ),
        v(
            "number_of_frames_zero",
            None,
            _file(lambda: _bytes(NumberOfFrames=0)),
            "read as one frame",
        ),
        v("rescale_slope_nan", CorruptDicomError, _file(lambda: _bytes(RescaleSlope="NaN"))),
        v("rescale_slope_inf", CorruptDicomError, _file(lambda: _bytes(RescaleSlope="inf"))),
        v("rescale_slope_zero", CorruptDicomError, _file(lambda: _bytes(RescaleSlope=0))),
        v(
            "rescale_intercept_text",
            CorruptDicomError,
            _file(lambda: _with_element(0x00281052, "DS", "lots")),
        ),
        v(
            "voi_lut_descriptor_two_values",
            CorruptDicomError,
            _file(_voi_lut([4096, 0], list(range(4096)))),
        ),
        v("voi_lut_empty_data", CorruptDicomError, _file(_voi_lut([4096, 0, 12], []))),
        v("voi_lut_descriptor_huge_first", None, _file(_voi_lut([16, 65535, 12], list(range(16))))),
        v(
            "modality_lut_descriptor_one_value",
            CorruptDicomError,
            _file(_modality_lut([16], list(range(16)))),
        ),
        v("modality_lut_empty_data", CorruptDicomError, _file(_modality_lut([16, 0, 16], []))),
        # --- colour, frames, volumes --------------------------------------------------
        v("rgb", NotGreyscaleError, _file(_rgb)),
        v("samples_3_monochrome2", NotGreyscaleError, _file(lambda: _bytes(SamplesPerPixel=3))),
        v(
            "photometric_garbage",
            NotGreyscaleError,
            _file(lambda: _bytes(PhotometricInterpretation="BANANA")),
        ),
        v(
            "palette_color",
            NotGreyscaleError,
            _file(lambda: _bytes(PhotometricInterpretation="PALETTE COLOR")),
        ),
        v("multiframe_3", MultiFrameError, _file(lambda: _frames(3))),
        v("volume_rtdose", MultiFrameError, _copy("rtdose.dcm")),
        v("float_pixel_data", UnsupportedImageError, _file(lambda: _float_pixels())),
        # --- transfer syntax and encapsulation ----------------------------------------
        v("missing_transfer_syntax", CorruptDicomError, _file(_no_transfer_syntax)),
        v(
            "unknown_transfer_syntax",
            UnsupportedTransferSyntaxError,
            _file(lambda: _bytes(TransferSyntaxUID="1.2.3.4.5.6")),
        ),
        v(
            "no_decoder_mpeg2",
            UnsupportedTransferSyntaxError,
            _file(lambda: _encapsulated(MPEG2_MPML, [b"\x00\x00\x01\xb3" + b"\0" * 30])),
        ),
        v(
            "jpeg2000_garbage_codestream",
            DecodeError,
            _file(lambda: _encapsulated(JPEG2000Lossless, [b"garbage!" * 16])),
        ),
        v(
            "encapsulated_no_fragments",
            DecodeError,
            _file(lambda: _encapsulated(RLELossless, [])),
        ),
        v(
            "native_syntax_encapsulated_data",
            CorruptDicomError,
            _file(lambda: _native_with_encapsulated()),
        ),
        v(
            "implicit_syntax_claimed_explicit_data",
            None,
            _file(lambda: _mislabelled_syntax()),
        ),
        v("rle_broken_item_tag", CorruptDicomError, _rle_broken("item_tag")),
        v("rle_fragment_length_huge", CorruptDicomError, _rle_broken("fragment_length")),
        v("rle_segment_header_garbage", DecodeError, _rle_broken("segments")),
        v("rle_no_sequence_delimiter", CorruptDicomError, _rle_broken("no_delimiter")),
        v(
            "rle_garbage_segments",
            None,
            _rle_broken("garbage"),
            "pylibjpeg-rle panics; pydicom decodes",
        ),
        v("deflated_garbage", CorruptDicomError, _deflated_garbage),
        # --- no image -----------------------------------------------------------------
        v("dicomdir", NoPixelDataError, _copy("dicomdirtests/DICOMDIR")),
        v("structured_report", NoPixelDataError, _copy("test-SR.dcm")),
        v("header_without_pixel_data", NoPixelDataError, _file(lambda: _bytes(PixelData=None))),
        v("nested_sequences_2000", CorruptDicomError, _file(lambda: _nested(2000))),
        # --- found by the atheris fuzz (benchmarks/fuzz_dicom.py) -----------------------
        v(
            "fuzz_unknown_vr_pixel_representation",
            CorruptDicomError,
            _file(_unknown_vr),
            "pydicom raised NotImplementedError converting the value",
        ),
        v(
            "fuzz_jpeg_ls_frame_header_contradicts",
            DecodeError,
            _file(_jpeg_ls_contradiction),
            "GDCM read past its buffer and killed the process (SIGSEGV)",
            isolate=True,
        ),
    ]


def _unknown_vr() -> bytes:
    """Pixel Representation with the VR bytes 'U*', which no VR has."""
    data = _bytes()
    at = data.find(b"\x28\x00\x03\x01US")
    return data[: at + 4] + b"U*" + data[at + 6 :]


# The frame of the fuzz finding: a JPEG-LS SOF55 claiming 1325 x 10 pixels of 248 bits.
_JPEG_LS_FRAME = bytes.fromhex(
    "ffd8fff700f5f8052d000a01011100ffda000801010002000057fdff7f00000071ff7fe0b7ff7c1c"
    "ff7f052ffbe097ff7fc117fdff40ffd9"
)


def _jpeg_ls_contradiction() -> bytes:
    return _encapsulated(
        JPEGLSNearLossless,
        [_JPEG_LS_FRAME],
        Rows=45,
        Columns=10,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        WindowCenter=None,
        WindowWidth=None,
    )


def _huge_element() -> bytes:
    """A private OB element before the pixels whose length claims 2 GiB."""
    ds = base_dataset()
    ds.add(DataElement(0x00091010, "OB", b"\0" * 16))
    ds.add(DataElement(0x00090010, "LO", "RADSYNTH"))
    data = bytearray(encode(ds))
    at = data.find(b"\x09\x00\x10\x10OB")
    data[at + 8 : at + 12] = struct.pack("<I", 0x7FFFFFF0)
    return bytes(data)


def _float_pixels() -> bytes:
    ds = base_dataset(PixelData=None, BitsAllocated=32, BitsStored=None, HighBit=None)
    ds.add(DataElement(0x7FE00008, "OF", np.zeros(ROWS * COLUMNS, np.float32).tobytes()))
    return encode(ds)


def _native_with_encapsulated() -> bytes:
    """Explicit VR LE claimed, but the pixels are an encapsulated RLE sequence."""
    data = bytearray(_rle_bytes())
    at = data.find(b"\x02\x00\x10\x00UI")
    length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    uid = ExplicitVRLittleEndian.encode().ljust(length, b"\0")
    if len(uid) != length:
        raise ValueError("UID does not fit")
    data[at + 8 : at + 8 + length] = uid
    return bytes(data)


def _mislabelled_syntax() -> bytes:
    """The file meta says Implicit VR, the data set is Explicit VR."""
    data = bytearray(_bytes())
    at = data.find(b"\x02\x00\x10\x00UI")
    length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    uid = ImplicitVRLittleEndian.encode().ljust(length, b"\0")
    if len(uid) != length:
        raise ValueError("UID does not fit")
    data[at + 8 : at + 8 + length] = uid
    return bytes(data)


def write_corpus(folder: str | os.PathLike[str]) -> list[tuple[Variant, Path]]:
    """Write every variant into ``folder`` as ``NNN_<name>.dcm``; return (variant, path) pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, variant in enumerate(variants()):
        path = folder / f"{i:03d}_{variant.name}.dcm"
        variant.write(path)
        out.append((variant, path))
    return out


def good_files(folder: str | os.PathLike[str], n: int = 3) -> list[Path]:
    """``n`` valid radiographs with different pixels (the good files a scan mixes in)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pixels = (_pixels().astype(np.uint32) * (i + 1) % 4096).astype(np.uint16)
        path = folder / f"good_{i}.dcm"
        path.write_bytes(
            encode(base_dataset(PixelData=pixels.tobytes(), SOPInstanceUID=f"2.25.{i + 7}"))
        )
        out.append(path)
    return out
