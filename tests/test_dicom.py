"""pipeline.dicom: grey levels against pydicom's own LUT functions, decoders, meta."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    RLELossless,
    generate_uid,
)

from pipeline import dicom
from pipeline.dicom import (
    META_KEYS,
    GreyLevelChain,
    Window,
    decode_pixels,
    decoder_order,
    read_meta,
    read_radiograph,
)

# Only the files installed with pydicom (no download): the folder of a shipped file.
TEST_FILES = Path(get_testdata_file("CT_small.dcm", download=False)).parent


def _shipped_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


def _greyscale_single_frame(path: Path) -> bool:
    """Decided from the header and pydicom's own decoding, independently of the reader."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            ok = (
                "PixelData" in ds
                and int(ds.get("SamplesPerPixel", 1)) == 1
                and ds.get("PhotometricInterpretation") in ("MONOCHROME1", "MONOCHROME2")
                and int(ds.get("NumberOfFrames", 1) or 1) == 1
            )
            return bool(ok and ds.pixel_array.ndim == 2)
    except Exception:
        return False


SHIPPED = _shipped_files()
GREYSCALE = [p for p in SHIPPED if _greyscale_single_frame(p)]


def _rel(p: Path) -> str:
    return p.relative_to(TEST_FILES).as_posix()


def reference_image(ds: Dataset) -> np.ndarray:
    """pydicom's apply_modality_lut + apply_voi_lut, normalised to [0, 1] like the reader.

    The range of the VOI output is the VOI LUT's 2^n - 1, else the one pydicom's
    windowing maps to (the modality range of Bits Stored), else the modality range.
    MONOCHROME1 (or Presentation LUT Shape INVERSE) is inverted against that range.
    """
    arr = ds.pixel_array
    modality = apply_modality_lut(arr, ds)
    voi = apply_voi_lut(modality, ds)
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if ds.get("VOILUTSequence"):
        lo, hi = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    elif ds.get("ModalityLUTSequence"):
        lo, hi = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    out = np.clip((np.asarray(voi, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" or inverse else out


# ---------------------------------------------------------------------------------------
# The shipped pydicom files
# ---------------------------------------------------------------------------------------


def test_the_shipped_greyscale_set_is_varied():
    """Guards the parametrized comparison below against silently shrinking."""
    assert len(GREYSCALE) >= 50
    syntaxes = {
        str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for p in GREYSCALE
    }
    assert {
        RLELossless,
        JPEG2000Lossless,
        JPEGExtended12Bit,
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2",
    } <= syntaxes
    photometric = {
        pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation for p in GREYSCALE
    }
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


@pytest.mark.filterwarnings("ignore:The pixel data is .* bytes long")
@pytest.mark.parametrize("path", GREYSCALE, ids=_rel)
def test_shipped_greyscale_matches_pydicom_reference(path):
    radiograph = read_radiograph(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference_image(pydicom.dcmread(path))
    image = radiograph.image
    assert image.dtype == np.float32 and image.ndim == 2
    assert image.shape == expected.shape
    assert image.min() >= 0.0 and image.max() <= 1.0
    # float32 output of a float64 computation: agreement to float32 precision
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)
    assert radiograph.path == Path(path)


@pytest.mark.filterwarnings("ignore:The pixel data is .* bytes long")
def test_all_encodings_of_one_image_read_the_same():
    """MR_small in eight encodings: native LE/BE, implicit, padded, RLE, J2K, JPEG-LS."""
    names = [
        "MR_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_padded.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ]
    images = [read_radiograph(TEST_FILES / n).image for n in names]
    for name, image in zip(names[1:], images[1:]):
        np.testing.assert_array_equal(image, images[0], err_msg=name)


# ---------------------------------------------------------------------------------------
# Generated files for every branch of the grey-level chain
# ---------------------------------------------------------------------------------------


def write_image(path: Path, pixels: np.ndarray, *, bits_stored: int = 12, **fields) -> Path:
    """A minimal DX file holding ``pixels`` (uint16 or int16) uncompressed, plus ``fields``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    for keyword, value in fields.items():
        if isinstance(value, DataElement):
            ds.add(value)
        else:
            setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def lut_item(first: int, data: np.ndarray, bits: int) -> Dataset:
    item = Dataset()
    item.add(DataElement(0x00283002, "US", [len(data), first, bits]))
    item.add(DataElement(0x00283006, "OW", data.astype("<u2").tobytes()))
    return item


def ramp(lo: int, hi: int, shape=(24, 32), dtype=np.uint16) -> np.ndarray:
    return np.linspace(lo, hi, shape[0] * shape[1]).round().astype(dtype).reshape(shape)


S_CURVE = (np.tanh(np.linspace(-2, 2, 1500)) / np.tanh(2) * 0.5 + 0.5) * 65535

VARIANTS = {
    "window_linear": dict(pixels=ramp(0, 4095), WindowCenter=1800, WindowWidth=900),
    "window_wide": dict(pixels=ramp(0, 4095), WindowCenter=2048, WindowWidth=4000),
    "window_linear_rescaled": dict(
        pixels=ramp(0, 4095),
        RescaleSlope=0.5,
        RescaleIntercept=-100,
        WindowCenter=700,
        WindowWidth=400,
    ),
    "window_linear_exact": dict(
        pixels=ramp(0, 4095), WindowCenter=2000, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT"
    ),
    "window_sigmoid": dict(
        pixels=ramp(0, 4095), WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID"
    ),
    "window_multi_value_uses_first": dict(
        pixels=ramp(0, 4095), WindowCenter=[1500, 3000], WindowWidth=[600, 100]
    ),
    "voi_lut_sequence_preferred": dict(
        pixels=ramp(0, 4095),
        WindowCenter=100,
        WindowWidth=10,
        VOILUTSequence=[lut_item(1200, S_CURVE.round(), 16)],
    ),
    "voi_lut_12_bit_output": dict(
        pixels=ramp(0, 4095),
        VOILUTSequence=[lut_item(1000, np.linspace(0, 4095, 2000).round(), 12)],
    ),
    "modality_lut_sequence": dict(
        pixels=ramp(0, 1023),
        bits_stored=10,
        ModalityLUTSequence=[lut_item(0, (np.sqrt(np.arange(1024) / 1023) * 65535).round(), 16)],
    ),
    "monochrome1_full_range": dict(pixels=ramp(100, 200), PhotometricInterpretation="MONOCHROME1"),
    "monochrome1_windowed": dict(
        pixels=ramp(0, 4095),
        PhotometricInterpretation="MONOCHROME1",
        WindowCenter=2000,
        WindowWidth=2000,
    ),
    "monochrome1_with_inverse_shape": dict(
        pixels=ramp(0, 4095),
        PhotometricInterpretation="MONOCHROME1",
        PresentationLUTShape="INVERSE",
    ),
    "monochrome2_inverse_shape": dict(pixels=ramp(0, 4095), PresentationLUTShape="INVERSE"),
    "signed_with_rescale": dict(
        pixels=ramp(-2048, 2047, dtype=np.int16),
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=-900,
        WindowWidth=1500,
    ),
    "signed_full_range": dict(pixels=ramp(-300, 900, dtype=np.int16)),
    "sixteen_bit_narrow_window_far_from_zero": dict(
        pixels=ramp(29000, 31000), bits_stored=16, WindowCenter=30000, WindowWidth=50
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_generated_variants_match_pydicom_reference(tmp_path, name):
    spec = dict(VARIANTS[name])
    pixels = spec.pop("pixels")
    bits = spec.pop("bits_stored", 12)
    path = write_image(tmp_path / f"{name}.dcm", pixels, bits_stored=bits, **spec)
    image = read_radiograph(path).image
    expected = reference_image(pydicom.dcmread(path))
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)
    assert image.max() - image.min() > 0.02  # not a blank image


def test_modality_lut_with_12_bit_entries(tmp_path):
    """PS3.3 C.11.1.1.1 allows 8-16 bits per entry; pydicom 3.0 fails on 12 ('uint12'),
    so this one is checked against the definition instead of pydicom."""
    data = (np.sqrt(np.arange(1024) / 1023) * 4095).round()
    pixels = ramp(0, 1023)
    path = write_image(
        tmp_path / "m12.dcm", pixels, bits_stored=10, ModalityLUTSequence=[lut_item(0, data, 12)]
    )
    np.testing.assert_allclose(
        read_radiograph(path).image, data[pixels] / 4095.0, rtol=0, atol=1e-6
    )


def test_monochrome1_is_inverted_against_the_range_not_the_image_maximum(tmp_path):
    pixels = ramp(100, 200)
    path = write_image(tmp_path / "m1.dcm", pixels, PhotometricInterpretation="MONOCHROME1")
    image = read_radiograph(path).image
    np.testing.assert_allclose(image, 1.0 - pixels / 4095.0, atol=1e-6)
    # not 1.0, which inverting against the image's own maximum would give
    assert image.max() == pytest.approx(1 - 100 / 4095, abs=1e-6)


def test_polarity_bone_bright_for_every_combination(tmp_path):
    """High stored value = bone in MONOCHROME2; low = bone when MONOCHROME1 or INVERSE."""
    pixels = ramp(0, 4095)
    cases = [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),
    ]
    for i, (photometric, shape, inverted) in enumerate(cases):
        fields = {"PhotometricInterpretation": photometric}
        if shape:
            fields["PresentationLUTShape"] = shape
        image = read_radiograph(write_image(tmp_path / f"{i}.dcm", pixels, **fields)).image
        first, last = image.flat[0], image.flat[-1]  # lowest and highest stored value
        assert (first > last) == inverted, (photometric, shape)


def test_invalid_window_falls_back_to_the_full_range(tmp_path):
    pixels = ramp(0, 4095)
    path = write_image(tmp_path / "w0.dcm", pixels, WindowCenter=2000, WindowWidth=0)
    np.testing.assert_allclose(read_radiograph(path).image, pixels / 4095.0, atol=1e-6)


def test_unused_high_bits_are_ignored(tmp_path):
    """Stray bits above Bits Stored (PS3.5 8.1.1) change nothing, as in pydicom."""
    clean = ramp(0, 4095)
    dirty = clean | np.uint16(0xA000)
    a = read_radiograph(
        write_image(tmp_path / "a.dcm", clean, WindowCenter=2000, WindowWidth=1000)
    ).image
    b = read_radiograph(
        write_image(tmp_path / "b.dcm", dirty, WindowCenter=2000, WindowWidth=1000)
    ).image
    # (the clean file takes the affine shortcut, the dirty one the table: float32 rounding apart)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    signed = ramp(-2048, 2047, dtype=np.int16)
    # garbage above bit 11 of a signed 12-bit value
    dirty_signed = (signed.view(np.uint16) ^ np.uint16(0x5000)).view(np.int16)
    c = read_radiograph(write_image(tmp_path / "c.dcm", signed)).image
    d = read_radiograph(write_image(tmp_path / "d.dcm", dirty_signed)).image
    np.testing.assert_allclose(c, d, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in VARIANTS if "lut" not in n and "sigmoid" not in n])
def test_affine_shortcut_equals_the_table(tmp_path, name):
    spec = dict(VARIANTS[name])
    pixels = spec.pop("pixels")
    bits = spec.pop("bits_stored", 12)
    ds = pydicom.dcmread(write_image(tmp_path / "x.dcm", pixels, bits_stored=bits, **spec))
    chain = GreyLevelChain.from_dataset(ds)
    assert chain.affine() is not None
    fast = chain.apply(pixels, use_lut=False)
    table = chain.apply(pixels, use_lut=True)
    np.testing.assert_allclose(fast, table, rtol=0, atol=1e-6)
    np.testing.assert_allclose(table, chain.values(pixels), rtol=0, atol=1e-6)


def test_nonlinear_chains_use_the_table():
    chain = GreyLevelChain(
        bits_stored=12, signed=False, window=Window(center=2000.0, width=500.0, function="SIGMOID")
    )
    assert chain.affine() is None
    with pytest.raises(ValueError):
        chain.apply(ramp(0, 4095), use_lut=False)


def test_lut_covers_every_bit_pattern():
    chain = GreyLevelChain(bits_stored=12, signed=True, rescale_intercept=-1024.0)
    table = chain.lut(np.int16)
    assert table.shape == (65536,) and table.dtype == np.float32
    # pattern 0x0FFF is -1 in 12-bit two's complement; 0x07FF is the largest value
    assert table[0x0FFF] == pytest.approx(chain.values(np.array([-1]))[0])
    assert table[0x07FF] == pytest.approx(1.0)
    assert table[0x0800] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------


def test_a_bare_data_set_without_file_meta_reads(tmp_path):
    """Old files: no preamble, no file meta; the encoding gives the transfer syntax."""
    pixels = ramp(0, 4095)
    ds = pydicom.dcmread(write_image(tmp_path / "with_meta.dcm", pixels))
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    radiograph = read_radiograph(bare)
    np.testing.assert_allclose(radiograph.image, pixels / 4095.0, atol=1e-6)
    assert radiograph.meta["transfer_syntax"] == "Implicit VR Little Endian"


def test_decoder_order_prefers_the_measured_fastest():
    assert decoder_order(ExplicitVRLittleEndian) == ("",)
    assert decoder_order(RLELossless)[0] == "pylibjpeg"
    j2k = decoder_order(JPEG2000Lossless)
    if "gdcm" in j2k:
        assert j2k[0] == "gdcm"


def test_native_pixels_are_a_view_not_a_copy():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    raw, plugin = decode_pixels(ds, TEST_FILES / "CT_small.dcm")
    assert plugin == "" and not raw.flags.owndata


def test_a_failing_decoder_falls_back_to_the_next(monkeypatch):
    """gdcm cannot read this 12-bit JPEG; with gdcm tried first the read still succeeds."""
    path = TEST_FILES / "JPGExtended.dcm"
    if "gdcm" not in decoder_order(JPEGExtended12Bit):
        pytest.skip("python-gdcm is not installed")
    monkeypatch.setitem(dicom.DECODER_PREFERENCE, JPEGExtended12Bit, ("gdcm", "pylibjpeg"))
    assert decoder_order(JPEGExtended12Bit)[0] == "gdcm"
    raw, plugin = decode_pixels(pydicom.dcmread(path), path)
    assert plugin == "pylibjpeg" and raw.shape == (1024, 256)


def test_compressed_round_trip(tmp_path):
    pixels = ramp(0, 4095, shape=(64, 48))
    native = write_image(tmp_path / "native.dcm", pixels, WindowCenter=2000, WindowWidth=3000)
    expected = read_radiograph(native).image
    for syntax in (RLELossless, JPEG2000Lossless):
        ds = pydicom.dcmread(native)
        ds.compress(syntax, encoding_plugin="pylibjpeg")
        ds.save_as(tmp_path / "c.dcm")
        np.testing.assert_array_equal(
            read_radiograph(tmp_path / "c.dcm").image, expected, err_msg=syntax.name
        )


# ---------------------------------------------------------------------------------------
# Meta
# ---------------------------------------------------------------------------------------

PHI = dict(
    PatientName="GARCIA^MARIA",
    PatientID="HOSP-0042",
    PatientBirthDate="19610315",
    StudyDate="20210401",
    StudyInstanceUID="1.2.826.0.1.3680043.8.498.111",
    InstitutionName="HOSPITAL SAN JUAN",
    StationName="RX-SALA-2",
)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower case, as real files have
def test_meta_has_exactly_the_documented_typed_keys(tmp_path):
    path = write_image(
        tmp_path / "m.dcm",
        ramp(0, 4095),
        ImagerPixelSpacing=[0.139, 0.14],
        PixelSpacing=[0.2, 0.2],
        ViewPosition="ap",
        ImageLaterality="L",
        BodyPartExamined="knee",
        SeriesDescription="RODILLA AP",
        Manufacturer="FUJIFILM Corporation",
        PatientSex="F",
        PatientAge="059Y",
        **PHI,
    )
    meta = read_radiograph(path, salt="s1").meta
    assert tuple(meta) == META_KEYS
    assert meta["pixel_spacing_mm"] == (0.139, 0.14)  # ImagerPixelSpacing wins for DX
    assert (meta["modality"], meta["view"], meta["laterality"], meta["body_part"]) == (
        "DX",
        "AP",
        "L",
        "KNEE",
    )
    assert meta["series_description"] == "RODILLA AP"
    assert meta["manufacturer"] == "FUJIFILM Corporation"
    assert (meta["bits_stored"], meta["rows"], meta["columns"]) == (12, 24, 32)
    assert meta["photometric"] == "MONOCHROME2"
    assert meta["patient_sex"] == 0.0 and meta["patient_age"] == 59.0
    assert re.fullmatch(r"P-[0-9a-f]{12}", meta["patient_key"])
    assert re.fullmatch(r"S-[0-9a-f]{12}", meta["study_key"])
    assert re.fullmatch(r"I-[0-9a-f]{12}", meta["site_key"])
    assert meta["transfer_syntax"] == "Explicit VR Little Endian"
    text = repr(meta).upper()
    for value in (*PHI.values(), "GARCIA", "MARIA", "1961", "2021"):
        assert value.upper() not in text, value


def test_meta_fallbacks(tmp_path):
    ct = write_image(
        tmp_path / "ct.dcm",
        ramp(0, 4095),
        Modality="CT",
        PixelSpacing=[0.5, 0.6],
        ImagerPixelSpacing=[1, 1],
    )
    meta = read_meta(ct)
    assert meta["pixel_spacing_mm"] == (0.5, 0.6)  # not DX/CR: PixelSpacing only
    path = write_image(
        tmp_path / "b.dcm",
        ramp(0, 4095),
        Laterality="R",
        PatientSex="M",
        PatientBirthDate="19700101",
        StudyDate="20200101",
        SeriesDescription="Rx rodilla GARCIA",
        PatientName="GARCIA^MARIA",
    )
    meta = read_meta(path)
    assert meta["laterality"] == "R" and meta["patient_sex"] == 1.0
    assert meta["patient_age"] == pytest.approx(50.0, abs=0.1)
    assert meta["series_description"] == "Rx rodilla *"  # the patient's name is masked
    assert (
        meta["pixel_spacing_mm"] is None
        and meta["patient_key"] is None
        and meta["site_key"] is None
    )
    old = write_image(tmp_path / "o.dcm", ramp(0, 4095), PatientAge="097Y", ImageLaterality="U")
    meta = read_meta(old)
    assert meta["patient_age"] == 90.0 and meta["laterality"] is None  # ages pooled at 90


def test_pseudonyms_depend_on_the_salt_only(tmp_path):
    path = write_image(tmp_path / "k.dcm", ramp(0, 4095), **PHI)
    a, b = read_meta(path, salt="one"), read_meta(path, salt="one")
    c = read_meta(path, salt="two")
    keys = ("patient_key", "study_key", "site_key")
    assert all(a[k] == b[k] for k in keys)
    assert all(a[k] != c[k] for k in keys)


def test_read_meta_does_not_decode_pixels(tmp_path):
    path = write_image(tmp_path / "t.dcm", ramp(0, 4095), **PHI)
    data = path.read_bytes()
    path.write_bytes(data[:-200])  # truncated pixel data
    meta = read_meta(path)
    assert meta["rows"] == 24
    with pytest.raises(dicom.CorruptDicomError):
        read_radiograph(path)
