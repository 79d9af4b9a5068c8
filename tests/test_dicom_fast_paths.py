"""The blocked array passes of the grey-level chain give the chain's values on images of many blocks."""

from __future__ import annotations

import mmap
import multiprocessing

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pipeline.dicom import (
    CorruptDicomError,
    DicomError,
    GreyLevelChain,
    Window,
    decoders,
    read_radiograph,
    read_raw,
    reading,
)

# 700 x 800 pixels: more than two blocks of rows of the blocked passes
SHAPE = (700, 800)


def test_table_lookup_over_many_blocks_masks_stray_bits():
    rng = np.random.default_rng(3)
    chain = GreyLevelChain(
        bits_stored=12, signed=False, window=Window(center=2000.0, width=900.0, function="SIGMOID")
    )
    raw = rng.integers(0, 1 << 16, size=SHAPE, dtype=np.uint16)  # stray bits above bit 11
    out = chain.apply(raw)
    assert out.dtype == np.float32 and out.shape == SHAPE
    expected = chain.values(raw.astype(np.int64) & 0xFFF)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    # a 1-D input takes the unblocked gather, with the same values
    np.testing.assert_allclose(chain.apply(raw[3]), expected[3], rtol=0, atol=1e-6)


def test_signed_table_lookup_over_many_blocks():
    rng = np.random.default_rng(4)
    chain = GreyLevelChain(
        bits_stored=16, signed=True, window=Window(center=-100.0, width=3000.0, function="SIGMOID")
    )
    raw = rng.integers(-(1 << 15), 1 << 15, size=SHAPE, dtype=np.int16)
    np.testing.assert_allclose(chain.apply(raw), chain.values(raw), rtol=0, atol=1e-6)


def test_numpy_affine_path_over_many_blocks():
    # a narrow window on 16-bit signed pixels: terms too large for OpenCV's float32 pass
    chain = GreyLevelChain(bits_stored=16, signed=True, window=Window(center=40.0, width=400.0))
    assert chain.affine() is not None
    rng = np.random.default_rng(5)
    raw = rng.integers(-600, 700, size=SHAPE, dtype=np.int16)
    out = chain.apply(raw, use_lut=False)
    np.testing.assert_allclose(out, chain.values(raw), rtol=0, atol=1e-6)
    assert 0.0 < out.mean() < 1.0 and out.min() == 0.0 and out.max() == 1.0


def test_threaded_table_lookup_matches_one_thread():

    rng = np.random.default_rng(6)
    chain = GreyLevelChain(
        bits_stored=12, signed=False, window=Window(center=1800.0, width=1200.0, function="SIGMOID")
    )
    raw = rng.integers(0, 1 << 12, size=(1100, 1000), dtype=np.uint16)  # over 1 Mpx: threaded
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        one = chain.apply(raw)
        cv2.setNumThreads(3)
        three = chain.apply(raw)
    finally:
        cv2.setNumThreads(before)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_allclose(three, chain.values(raw), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ mapped native pixel data


def _native_file(path, pixels: np.ndarray, *, implicit: bool = False, big_endian: bool = False):

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian
        if implicit
        else ExplicitVRBigEndian
        if big_endian
        else ExplicitVRLittleEndian
    )
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = 12 if pixels.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    order = ">" if big_endian else "<"
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(order)).tobytes()
    ds.save_as(path, enforce_file_format=True, little_endian=not big_endian, implicit_vr=implicit)
    return path


def _mapping_of(array: np.ndarray):

    base = array
    while base is not None and not isinstance(base, memoryview):
        base = base.base
    return base.obj if isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap) else None


@pytest.mark.parametrize(
    ("dtype", "implicit"),
    [("<u2", False), ("<i2", False), ("u1", False), ("<u2", True)],
    ids=["u16", "i16", "u8", "implicit-u16"],
)
def test_native_pixels_are_mapped_from_the_file(tmp_path, monkeypatch, dtype, implicit):

    monkeypatch.setattr(reading, "_DEFER_BYTES", 1024)  # tiny images: defer their pixels too

    rng = np.random.default_rng(7)
    info = np.iinfo(np.dtype(dtype))
    lo, hi = (-2048, 2048) if info.min < 0 else (0, min(info.max + 1, 4096))
    pixels = rng.integers(lo, hi, size=(40, 30)).astype(dtype)
    path = _native_file(tmp_path / "a.dcm", pixels, implicit=implicit)
    raw = read_raw(path)
    assert _mapping_of(raw.raw) is not None  # no copy: a view of the file
    assert not raw.raw.flags.writeable
    np.testing.assert_array_equal(raw.raw, pixels)
    reference = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(raw.raw, reference)
    image = read_radiograph(path).image
    np.testing.assert_array_equal(image, raw.grey(np.asarray(reference)))


def test_big_endian_pixels_are_read_not_mapped(tmp_path, monkeypatch):

    monkeypatch.setattr(reading, "_DEFER_BYTES", 1024)

    pixels = np.arange(40 * 30, dtype="<u2").reshape(40, 30) % 4096
    path = _native_file(tmp_path / "be.dcm", pixels, big_endian=True)
    raw = read_raw(path)
    assert _mapping_of(raw.raw) is None
    np.testing.assert_array_equal(raw.raw, pixels)


def test_truncated_native_pixels_are_refused_before_mapping(tmp_path, monkeypatch):

    monkeypatch.setattr(reading, "_DEFER_BYTES", 1024)

    pixels = np.zeros((40, 30), dtype="<u2")
    path = _native_file(tmp_path / "cut.dcm", pixels)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CorruptDicomError, match="truncated"):
        read_radiograph(path)


def test_threaded_table_lookup_works_after_fork():

    chain = GreyLevelChain(
        bits_stored=12, signed=False, window=Window(center=1800.0, width=1200.0, function="SIGMOID")
    )
    raw = np.random.default_rng(8).integers(0, 1 << 12, size=(1100, 1000), dtype=np.uint16)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        expected = chain.apply(raw)  # the parent's pool now exists
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(chain.apply, (raw,)).get(timeout=60)
    finally:
        cv2.setNumThreads(before)
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------ OpenCV affine pass


@pytest.mark.parametrize(
    ("window", "invert"),
    [
        (None, False),  # the full stored range: no block reaches past [0, 1]
        (Window(center=2000.0, width=1500.0), False),  # clips at both ends
        (Window(center=2000.0, width=1500.0, function="LINEAR_EXACT"), True),  # inverted
        (Window(center=3900.0, width=600.0), False),  # clips at the top only
    ],
    ids=["full-range", "window", "inverted-exact", "top-clip"],
)
def test_opencv_affine_pass_matches_the_chain(window, invert):
    chain = GreyLevelChain(bits_stored=12, signed=False, window=window, invert=invert)
    assert chain.affine() is not None
    rng = np.random.default_rng(8)
    raw = rng.integers(0, 1 << 12, size=SHAPE, dtype=np.uint16)
    raw[:200] = rng.integers(1500, 2500, size=(200, SHAPE[1]))  # blocks inside the window
    raw[650:] = 777  # a flat block: one stored value
    out = chain.apply(raw, use_lut=False)
    expected = chain.values(raw)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0
    if window is not None and not invert and window.center < 3000:  # clipped at both ends
        assert out.min() == 0.0 and out.max() == 1.0


def test_opencv_affine_pass_refuses_stray_bits_for_the_table():
    chain = GreyLevelChain(bits_stored=12, signed=False, window=Window(center=2000.0, width=900.0))
    raw = np.full(SHAPE, 1000, dtype=np.uint16)
    raw[690, 5] = 0x9000 | 1000  # bits above Bits Stored in the last block only
    out = chain.apply(raw)  # the affine pass gives up, the masking table takes over
    np.testing.assert_allclose(out, chain.values(raw.astype(np.int64) & 0xFFF), atol=1e-6)
    with pytest.raises(ValueError, match="needs the table"):
        chain.apply(raw, use_lut=False)


# ------------------------------------------------------------------ RLE decoded directly


def _rle_file(path, pixels: np.ndarray):

    _native_file(path, pixels)

    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("dtype", ["<u2", "<i2", "u1"])
def test_rle_is_decoded_directly_as_pydicom_decodes_it(tmp_path, dtype):
    pytest.importorskip("rle")

    rng = np.random.default_rng(10)
    lo, hi = {"<u2": (0, 4096), "<i2": (-2048, 2048), "u1": (0, 256)}[dtype]
    pixels = rng.integers(lo, hi, size=(40, 30)).astype(dtype)
    path = _rle_file(tmp_path / "rle.dcm", pixels)
    ds = reading._read_for_pixels(path)
    direct = decoders._rle_direct(ds, path)
    assert direct is not None and direct.dtype == np.dtype(dtype)
    reference = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(direct, reference)
    np.testing.assert_array_equal(read_raw(path).raw, pixels)


def test_corrupt_rle_leaves_the_direct_path_and_fails_clearly(tmp_path):
    pytest.importorskip("rle")

    pixels = np.arange(40 * 30, dtype="<u2").reshape(40, 30) % 4096
    path = _rle_file(tmp_path / "bad.dcm", pixels)
    ds = pydicom.dcmread(path)
    frame = decoders._single_frame(ds.PixelData)
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 2]])  # segments cut short
    ds.save_as(path, enforce_file_format=True)
    assert decoders._rle_direct(reading._read_for_pixels(path), path) is None
    with pytest.raises(DicomError, match=r"bad\.dcm.*could decode the RLE"):
        read_radiograph(path)
    with pytest.raises(Exception, match="end of the data"):  # as pydicom itself says
        pydicom.dcmread(path).pixel_array  # noqa: B018


def test_single_frame_refuses_malformed_item_sequences():

    item = b"\xfe\xff\x00\xe0"
    good = item + (0).to_bytes(4, "little") + item + (4).to_bytes(4, "little") + b"abcd"
    assert decoders._single_frame(good) == b"abcd"
    two = good + item + (2).to_bytes(4, "little") + b"ef"
    assert decoders._single_frame(two) == b"abcdef"
    assert decoders._single_frame(item + (0).to_bytes(4, "little")) is None  # no fragment
    assert decoders._single_frame(good[:-1]) is None  # a fragment running past the end
    assert decoders._single_frame(b"\x00\x00\x00\x00" + good[4:]) is None  # not an item
    assert decoders._single_frame(b"") is None
