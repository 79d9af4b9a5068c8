"""pipeline.dicom errors: one class per cause, messages that name the file, scans that go on."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.__main__ import main as pipeline_main
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
    decode_pixels,
    decoders,
    read_radiograph,
    scan_folder,
)

TEST_FILES = Path(get_testdata_file("CT_small.dcm", download=False)).parent

# The shipped files with pixel data that no decoder reads: four broken on purpose, two
# that every installed decoder rejects.
BROKEN = {
    "MR_truncated.dcm": CorruptDicomError,  # pixel data shorter than Rows x Columns needs
    "badVR.dcm": CorruptDicomError,  # '1A' where a number belongs
    "meta_missing_tsyntax.dcm": CorruptDicomError,  # file meta without a Transfer Syntax UID
    "nested_priv_SQ.dcm": CorruptDicomError,  # pixel data without Rows, Columns, ...
    "JPEG-lossy.dcm": DecodeError,  # a misplaced JPEG marker segment
    "JPEG2000-embedded-sequence-delimiter.dcm": DecodeError,  # codestream bytes overwritten
}


def _header(path: Path) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=True)
    except Exception:
        return None


# Shipped files without pixel data that end inside a value: the truncation is reported.
TRUNCATED = {"rtplan_truncated.dcm": CorruptDicomError}


def _expected_error(path: Path) -> type[DicomError] | None:
    """The class the reader must raise, decided from the header (None: it must read)."""
    if path.name in BROKEN:
        return BROKEN[path.name]
    if path.name in TRUNCATED:
        return TRUNCATED[path.name]
    ds = _header(path)
    has_marker = path.read_bytes()[128:132] == b"DICM"
    if ds is None or not (
        has_marker or any(k in ds for k in ("SOPClassUID", "Modality", "PixelData", "Rows"))
    ):
        return NotDicomError
    if "PixelData" not in ds:
        return NoPixelDataError
    greyscale = ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or not greyscale:
        return NotGreyscaleError
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return MultiFrameError
    return None


SHIPPED = sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


def _rel(p: Path) -> str:
    return p.relative_to(TEST_FILES).as_posix()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", SHIPPED, ids=_rel)
def test_every_shipped_file_reads_or_raises_its_class(path):
    expected = _expected_error(path)
    if expected is None:
        assert read_radiograph(path).image.ndim == 2
        return
    with pytest.raises(DicomError) as info:
        read_radiograph(path)
    assert type(info.value) is expected, str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_decoders_read_all_shipped_pixel_data_but_six():
    """Colour and multi-frame included: only the six known-bad files fail to decode."""
    failed, total = {}, 0
    for path in SHIPPED:
        ds = _header(path)
        if ds is None or "PixelData" not in ds:
            continue
        total += 1
        try:
            decode_pixels(ds, path)
        except DicomError as e:
            failed[path.name] = type(e)
    assert total >= 60
    assert failed == BROKEN


def test_error_family():
    for cls in (
        UnreadableFileError,
        NotDicomError,
        CorruptDicomError,
        NoPixelDataError,
        UnsupportedTransferSyntaxError,
        DecodeError,
        UnsupportedImageError,
        NotGreyscaleError,
        MultiFrameError,
    ):
        assert issubclass(cls, DicomError)
    assert issubclass(NotGreyscaleError, UnsupportedImageError) and issubclass(
        MultiFrameError, UnsupportedImageError
    )
    err = CorruptDicomError("/data/x.dcm", "two\nlines")
    assert (
        str(err) == "/data/x.dcm: two lines"
        and err.path == Path("/data/x.dcm")
        and err.reason == "two lines"
    )


def _image_dataset(pixels: np.ndarray, rows: int = 12, columns: int = 10, **fields) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = fields.pop("TransferSyntaxUID", ExplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path


def test_generated_error_cases(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    good = _save(_image_dataset(grey), tmp_path / "good.dcm")
    assert read_radiograph(good).image.shape == (12, 10)

    rgb = _save(
        _image_dataset(
            np.zeros((12, 10, 3), np.uint8),
            SamplesPerPixel=3,
            PhotometricInterpretation="RGB",
            PlanarConfiguration=0,
        ),
        tmp_path / "rgb.dcm",
    )
    frames = _save(
        _image_dataset(np.zeros((3, 12, 10), np.uint16), NumberOfFrames=3), tmp_path / "frames.dcm"
    )
    no_pixels = _image_dataset(grey)
    del no_pixels.PixelData
    no_pixels = _save(no_pixels, tmp_path / "nopix.dcm")
    truncated = tmp_path / "trunc.dcm"
    truncated.write_bytes(good.read_bytes()[:-40])
    private_syntax = _save(
        _image_dataset(grey, TransferSyntaxUID="1.2.3.4.5.6"), tmp_path / "private.dcm"
    )
    text = tmp_path / "notes.txt"
    text.write_text("file,schatzker\n000001.dcm,2\n")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")

    cases = {
        rgb: NotGreyscaleError,
        frames: MultiFrameError,
        no_pixels: NoPixelDataError,
        truncated: CorruptDicomError,
        private_syntax: UnsupportedTransferSyntaxError,
        text: NotDicomError,
        noise: NotDicomError,
        empty: NotDicomError,
        tmp_path / "missing.dcm": UnreadableFileError,
        tmp_path: UnreadableFileError,
    }
    for path, cls in cases.items():
        with pytest.raises(cls) as info:
            read_radiograph(path)
        assert str(path) in str(info.value), info.value
        assert type(info.value) is cls


def test_missing_decoder_names_the_package_to_install(monkeypatch):
    monkeypatch.setattr(decoders, "_available_plugins", lambda ts: ())
    with pytest.raises(UnsupportedTransferSyntaxError) as info:
        read_radiograph(TEST_FILES / "JPEG2000.dcm")
    message = str(info.value)
    assert "JPEG2000.dcm" in message and "pip install" in message and "python-gdcm" in message
    with pytest.raises(UnsupportedTransferSyntaxError, match="pylibjpeg-rle"):
        read_radiograph(TEST_FILES / "MR_small_RLE.dcm")
    # uncompressed data needs no plugin
    assert read_radiograph(TEST_FILES / "MR_small.dcm").image.shape == (64, 64)


# ---------------------------------------------------------------------------------------
# Folder scans
# ---------------------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "data"
    (folder / "a" / "b").mkdir(parents=True)
    good = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"]
    for name in good:
        shutil.copy(TEST_FILES / name, folder / "a" / name)
    shutil.copy(TEST_FILES / "dicomdirtests/77654033/CR1/6154", folder / "a" / "b" / "6154")
    bad = {
        "a/b/truncated.dcm": ("MR_truncated.dcm", "CorruptDicomError"),
        "a/colour.dcm": ("SC_rgb_rle.dcm", "NotGreyscaleError"),
        "frames.dcm": ("rtdose.dcm", "MultiFrameError"),
        "report.dcm": ("reportsi.dcm", "NoPixelDataError"),
        "a/b/lossy.dcm": ("JPEG-lossy.dcm", "DecodeError"),
    }
    for target, (source, _) in bad.items():
        shutil.copy(TEST_FILES / source, folder / target)
    (folder / "labels.csv").write_text("file,schatzker\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored
    expected = {target: error for target, (_, error) in bad.items()}
    expected["labels.csv"] = "NotDicomError"
    return folder, expected


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scan_goes_on_past_bad_files_and_reports_them(mixed_folder, tmp_path):
    folder, expected = mixed_folder
    report = tmp_path / "out" / "skipped.csv"
    result = scan_folder(folder, report_csv=report)
    assert len(result.files) == 4
    assert set(result.meta) == set(result.files)
    assert {s.path.relative_to(folder).as_posix(): s.error for s in result.skipped} == expected
    with report.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["file"]: r["error"] for r in rows} == expected
    assert all(r["reason"] for r in rows)
    assert result.error_counts()["NotDicomError"] == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_header_only_scan_does_not_decode(mixed_folder):
    folder, expected = mixed_folder
    result = scan_folder(folder, decode=False)
    skipped = {s.path.relative_to(folder).as_posix() for s in result.skipped}
    # undecodable pixels pass a header check; everything else (truncated pixel data
    # included: its declared length runs past the end of the file) is still caught
    assert skipped == set(expected) - {"a/b/lossy.dcm"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scan_command(mixed_folder, tmp_path, capsys):
    folder, expected = mixed_folder
    report = tmp_path / "skipped.csv"
    assert pipeline_main(["scan", str(folder), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert (
        "4 readable radiographs" in out and f"{len(expected)} skipped" in out and str(report) in out
    )
    assert len(report.read_text().splitlines()) == len(expected) + 1
    assert pipeline_main(["scan", str(tmp_path / "nowhere")]) == 2
