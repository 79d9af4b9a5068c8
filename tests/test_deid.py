"""pipeline.deid: the PS3.15 basic profile, pseudonyms, salts and the deid command."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from pipeline.__main__ import main as pipeline_main
from pipeline.deid import (
    BASIC_PROFILE,
    clean_text,
    deidentify,
    pseudonym,
    replacement_uid,
    resolve_salt,
)
from pipeline.dicom import read_meta, read_radiograph
from pipeline.registry import UnknownNameError

DICOMDIR = get_testdata_file("DICOMDIR", download=False)
STUDY_UID = "1.2.826.0.1.3680043.8.498.7001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.7002"
FRAME_UID = "1.2.826.0.1.3680043.8.498.7003"

# Identifying strings planted in the headers below: none may survive de-identification.
PHI_STRINGS = [
    "GARCIA",
    "MARIA",
    "HOSP-0042",
    "OTHER-77",
    "19610315",
    "20210401",
    "0815",
    "ACC123456",
    "HOSPITAL SAN JUAN",
    "CALLE MAYOR",
    "RX-SALA-2",
    "DR^HOUSE",
    "DR^WHO",
    "TECH^ANA",
    "SN-998877",
    "COMMENT ABOUT MARIA",
    "PRIVATE SECRET",
    "OVERLAY NOTE",
    STUDY_UID,
    SERIES_UID,
    FRAME_UID,
]


def phi_dataset(instance: int = 1, *, referenced: str | None = None) -> Dataset:
    """A radiograph header with identifying data in plain, nested, private and repeating-group tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.80{instance}"
    ds.file_meta.SourceApplicationEntityTitle = "RX-SALA-2"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FRAME_UID
    ds.PatientName = "GARCIA^MARIA"
    ds.PatientID = "HOSP-0042"
    ds.IssuerOfPatientID = "HOSPITAL SAN JUAN"
    ds.OtherPatientIDs = "OTHER-77"
    ds.PatientBirthDate = "19610315"
    ds.PatientSex = "F"
    ds.PatientAge = "095Y"
    ds.PatientWeight = 70
    ds.PatientAddress = "CALLE MAYOR 1"
    ds.StudyDate = "20210401"
    ds.SeriesDate = "20210401"
    ds.AcquisitionDate = "20210401"
    ds.ContentDate = "20210401"
    ds.InstanceCreationDate = "20210401"
    ds.StudyTime = "0815"
    ds.AccessionNumber = "ACC123456"
    ds.StudyID = "0815"
    ds.InstitutionName = "HOSPITAL SAN JUAN"
    ds.InstitutionAddress = "CALLE MAYOR 2"
    ds.StationName = "RX-SALA-2"
    ds.ReferringPhysicianName = "DR^HOUSE"
    ds.PerformingPhysicianName = "DR^WHO"
    ds.OperatorsName = "TECH^ANA"
    ds.DeviceSerialNumber = "SN-998877"
    ds.ImageComments = "COMMENT ABOUT MARIA"
    ds.Modality = "DX"
    ds.Manufacturer = "FUJIFILM Corporation"
    ds.BodyPartExamined = "KNEE"
    ds.ViewPosition = "AP"
    ds.BurnedInAnnotation = "YES"
    request = Dataset()
    request.RequestedProcedureID = "ACC123456"
    request.ScheduledProcedureStepID = "HOSP-0042"
    ds.RequestAttributesSequence = Sequence([request])
    code = Dataset()
    code.CodeValue = "KNEE"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "RX RODILLA"
    code.PatientID = "HOSP-0042"
    code.add_new(Tag(0x0008, 0x1070), "PN", "TECH^ANA")  # Operators' Name
    ds.ProcedureCodeSequence = Sequence([code])
    if referenced:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = referenced
        ds.ReferencedImageSequence = Sequence([ref])
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "PRIVATE SECRET")
    ds.add_new(Tag(0x6000, 0x0010), "US", 4)
    ds.add_new(Tag(0x6000, 0x3000), "OW", b"\x00\x01" * 8)
    ds.add_new(Tag(0x6000, 0x4000), "LT", "OVERLAY NOTE")
    ds.add_new(Tag(0x5000, 0x0005), "US", 1)  # a retired curve element
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 8, 6
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(48, dtype=np.uint16) * 80).tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_no_phi_of_the_profile_survives():
    original = phi_dataset()
    report = deidentify(original, "salt-a")
    out = report.dataset
    for elem in out.iterall():
        action = BASIC_PROFILE.get(int(elem.tag))
        assert not elem.tag.is_private, elem
        assert (elem.tag.group & 0xFF00) not in (0x5000, 0x6000), elem
        if action is None:
            continue
        value = "" if elem.VR == "SQ" or elem.value is None else str(elem.value)
        if action == "U":
            assert value.startswith("2.25."), elem
        elif elem.keyword in ("PatientName", "PatientID"):
            assert value == "" or re.fullmatch(r"P-[0-9a-f]{12}", value), (
                elem
            )  # emptied when nested
        elif elem.keyword == "InstitutionName":
            assert re.fullmatch(r"I-[0-9a-f]{12}", value), elem
        elif elem.keyword == "StudyID":
            assert re.fullmatch(r"S-[0-9a-f]{12}", value), elem
        else:
            assert value in ("", "ANONYMOUS", "19000101", "000000", "0"), elem
    data = to_bytes(out)
    for phi in PHI_STRINGS:
        assert phi.encode() not in data, phi
    # the tags the profile removes are gone, the ones it empties are empty
    for keyword in (
        "PatientAddress",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "StationName",
        "ImageComments",
        "PerformingPhysicianName",
        "OperatorsName",
        "DeviceSerialNumber",
        "PatientAge",
        "SeriesDate",
    ):
        assert keyword not in out, keyword
    for keyword in (
        "PatientBirthDate",
        "StudyDate",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientSex",
        "InstanceCreationDate",
    ):
        assert out[keyword].value in ("", None), keyword
    assert "RequestAttributesSequence" not in out
    nested = out.ProcedureCodeSequence[0]  # not in the table: walked, its PHI handled
    assert nested.CodeMeaning == "RX RODILLA" and nested.PatientID in ("", None)
    assert "OperatorsName" not in nested
    parts = (report.removed, report.emptied, report.replaced, report.uids)
    assert report.n_changed == sum(len(p) for p in parts)
    assert "(0009,1001)" in report.removed and "PatientAddress" in report.removed


def test_what_is_kept_and_added():
    out = deidentify(phi_dataset(), "salt-a").dataset
    for keyword in (
        "Modality",
        "Manufacturer",
        "BodyPartExamined",
        "ViewPosition",
        "SOPClassUID",
        "BitsStored",
    ):
        assert out[keyword].value == phi_dataset()[keyword].value, keyword
    assert out.PixelData == phi_dataset().PixelData
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.BurnedInAnnotation == "YES"  # the basic profile does not clean pixels: left as found


def test_original_dataset_is_not_modified():
    original = phi_dataset()
    before = copy.deepcopy(original)
    report = deidentify(original, "salt-a")
    assert original == before and report.dataset is not original
    assert report.burned_in_annotation == "YES"


def test_uids_are_replaced_consistently_across_files():
    a = phi_dataset(1)
    b = phi_dataset(2, referenced=a.SOPInstanceUID)
    da = deidentify(a, "salt-a").dataset
    db = deidentify(b, "salt-a").dataset
    assert da.StudyInstanceUID == db.StudyInstanceUID != STUDY_UID
    assert da.SeriesInstanceUID == db.SeriesInstanceUID
    assert da.SOPInstanceUID != db.SOPInstanceUID
    assert da.file_meta.MediaStorageSOPInstanceUID == da.SOPInstanceUID
    # a reference to another instance follows that instance's new UID
    assert db.ReferencedImageSequence[0].ReferencedSOPInstanceUID == da.SOPInstanceUID
    assert all(len(u) <= 64 for u in (da.StudyInstanceUID, da.SOPInstanceUID))


def test_same_salt_same_pseudonyms_other_salt_other_ones():
    one = deidentify(phi_dataset(), "salt-a").dataset
    again = deidentify(phi_dataset(), "salt-a").dataset
    other = deidentify(phi_dataset(), "salt-b").dataset
    for keyword in (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "SOPInstanceUID",
        "InstitutionName",
        "StudyID",
    ):
        assert one[keyword].value == again[keyword].value, keyword
        assert one[keyword].value != other[keyword].value, keyword
    assert to_bytes(one) == to_bytes(again)


def test_retain_patient_characteristics_option():
    out = deidentify(phi_dataset(), "salt-a", retain_patient_characteristics=True).dataset
    assert out.PatientSex == "F" and out.PatientWeight == 70
    assert out.PatientAge == "090Y"  # 90 and over pooled
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113108"}


def test_pseudonym():
    key = pseudonym("patient", "HOSP-0042", "salt-a")
    assert re.fullmatch(r"P-[0-9a-f]{12}", key)
    assert key == pseudonym("patient", "HOSP-0042", b"salt-a")
    assert key != pseudonym("patient", "HOSP-0042", "salt-b")
    assert key != pseudonym("patient", "HOSP-0043", "salt-a")
    assert pseudonym("study", "1.2.3", "s").startswith("S-")
    assert pseudonym("site", "X", "s").startswith("I-")
    assert pseudonym("patient", key, "another salt") == key  # an existing key passes through
    with pytest.raises(UnknownNameError, match="did you mean 'patient'"):
        pseudonym("patients", "x", "s")
    assert (
        replacement_uid("1.2.3", "s")
        == replacement_uid("1.2.3", "s")
        != replacement_uid("1.2.3", "t")
    )


def test_resolve_salt_precedence_and_the_per_user_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("RADSEARCH_SALT", "from-env")
    assert resolve_salt("given") == b"given"
    assert resolve_salt() == b"from-env"
    with pytest.raises(ValueError):
        resolve_salt("")
    monkeypatch.delenv("RADSEARCH_SALT")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "one"))
    first = resolve_salt()
    secret = tmp_path / "one" / "radsearch" / "salt"
    assert secret.is_file() and len(first) == 64
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert resolve_salt() == first  # created once, then reused
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "two"))
    assert resolve_salt() != first


def test_keys_of_a_deidentified_copy_match_the_original(tmp_path):
    original = tmp_path / "orig.dcm"
    original.write_bytes(to_bytes(phi_dataset()))
    copy_path = tmp_path / "deid.dcm"
    copy_path.write_bytes(to_bytes(deidentify(pydicom.dcmread(original), "salt-a").dataset))
    before, after = read_meta(original, salt="salt-a"), read_meta(copy_path, salt="salt-a")
    for key in ("patient_key", "study_key", "site_key"):
        assert before[key] is not None and before[key] == after[key], key
    np.testing.assert_array_equal(read_radiograph(original).image, read_radiograph(copy_path).image)


@pytest.mark.parametrize(
    "change",
    [
        {"PatientID": "AB  12 345 "},  # padding and a doubled space
        {"PatientID": None},  # an issuer alone names no patient
        {"StudyID": None, "InstitutionName": None},  # keys from the study UID and station
    ],
)
def test_keys_of_a_copy_match_the_original_at_the_edges(tmp_path, change):
    ds = phi_dataset()
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    assert ds.IssuerOfPatientID
    original = tmp_path / "orig.dcm"
    original.write_bytes(to_bytes(ds))
    copy_path = tmp_path / "deid.dcm"
    copy_path.write_bytes(to_bytes(deidentify(pydicom.dcmread(original), "salt-a").dataset))
    before, after = read_meta(original, salt="salt-a"), read_meta(copy_path, salt="salt-a")
    for key in ("patient_key", "study_key", "site_key"):
        assert before[key] == after[key], key
    assert (before["patient_key"] is None) == ("PatientID" not in ds)


def _sha(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_deid_command_writes_copies_and_never_touches_originals(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    first = phi_dataset(1)
    (src / "a.dcm").write_bytes(to_bytes(first))
    (src / "sub" / "b.dcm").write_bytes(to_bytes(phi_dataset(2, referenced=first.SOPInstanceUID)))
    (src / "labels.csv").write_text("file,schatzker\na.dcm,2\n")
    shutil.copy(DICOMDIR, src / "DICOMDIR")
    before = _sha(src)
    out = tmp_path / "out"
    assert pipeline_main(["deid", str(src), str(out)]) == 0
    assert _sha(src) == before
    assert sorted(_sha(out)) == ["a.dcm", "sub/b.dcm"]
    printed = capsys.readouterr().out
    expected = sum(
        deidentify(pydicom.dcmread(src / f), resolve_salt()).n_changed
        for f in ("a.dcm", "sub/b.dcm")
    )
    assert "de-identified 2 files" in printed and f"{expected} tags changed" in printed
    assert (
        "2 files skipped" in printed and "DICOMDIR" in printed and "Burned In Annotation" in printed
    )
    for name in ("a.dcm", "sub/b.dcm"):
        data = (out / name).read_bytes()
        assert not any(phi.encode() in data for phi in PHI_STRINGS), name
    # an output folder inside the input (or the input itself) is refused: nothing written
    assert pipeline_main(["deid", str(src), str(src / "nested")]) == 2
    assert pipeline_main(["deid", str(src), str(src)]) == 2
    assert _sha(src) == before


def test_clean_text_masks_name_parts_and_identifiers_in_one_pass():
    ds = Dataset()
    ds.PatientName = "Garcia^Maria Jose"
    ds.PatientID = "PX-12345"
    ds.AccessionNumber = "ACC77"
    text = "Rodilla maria GARCIA px-12345 (ACC77) AP"
    assert clean_text(text, ds) == "Rodilla * * * (*) AP"
    assert clean_text("KNEE AP", ds) == "KNEE AP"  # nothing to mask: unchanged
    assert clean_text("Jose", Dataset()) == "Jose"  # no identity in the header
    # a longer identifier wins over a name part it contains
    ds.PatientID = "MARIA2"
    assert clean_text("maria2 maria", ds) == "* *"
