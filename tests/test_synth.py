"""The synthetic phantom: real DICOM files with every variant, consistent ground truth,
labels in the user schema, and the same bytes for the same seed."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from pipeline.__main__ import main
from pipeline.dicom import read_radiograph
from pipeline.registry import UnknownNameError
from pipeline.synth import (
    ALL_OTHER_PARTS,
    LABEL_COLUMNS,
    TRANSFER_SYNTAXES,
    generate,
    write_dicom,
    write_secondary_capture,
)
from pipeline.synth.dataset import render
from pipeline.synth.plan import plan_dataset

N, SEED, SIZE = 40, 5, 192


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, N, SEED, size=SIZE, fracture_rate=0.6, labeled_fraction=0.6)
    return out


@pytest.fixture(scope="module")
def truth(phantom) -> list[dict]:
    return [json.loads(line) for line in (phantom / "truth.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def headers(phantom, truth) -> dict[str, pydicom.Dataset]:
    return {r["file"]: pydicom.dcmread(phantom / r["file"]) for r in truth}


def display(ds: pydicom.Dataset) -> np.ndarray:
    """Reference grey-level chain: modality LUT, VOI LUT (or the stored range), polarity.

    Stored values hold bone dark exactly when Presentation LUT Shape is INVERSE, or
    when it is absent and the image is MONOCHROME1.
    """
    values = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds:
        out = apply_voi_lut(values.astype(np.int64), ds).astype(np.float64)
        out /= (1 << int(ds.VOILUTSequence[0].LUTDescriptor[2])) - 1
    elif "WindowCenter" in ds:
        out = apply_voi_lut(values.astype(np.float64), ds).astype(np.float64)
        out = (out - out.min()) / max(out.max() - out.min(), 1e-9)
    else:
        bits, signed = ds.BitsStored, ds.PixelRepresentation
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        out = (values - (lo * slope + intercept)) / ((hi - lo) * slope)
    shape = ds.get("PresentationLUTShape")
    inverted = shape == "INVERSE" if shape else ds.PhotometricInterpretation == "MONOCHROME1"
    return 1.0 - out if inverted else out


def bone_brighter_than_soft_tissue(image: np.ndarray, box: list[int]) -> bool:
    """The centre of a knee box (plateau and condyles) outshines its upper corners."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) // 2, y0 + int(0.45 * h)
    centre = image[cy - h // 12 : cy + h // 12, cx - w // 10 : cx + w // 10].mean()
    corners = [
        image[y0 : y0 + h // 10, x0 : x0 + w // 10].mean(),
        image[y0 : y0 + h // 10, x1 - w // 10 : x1].mean(),
    ]
    return centre > max(corners)


def test_writes_the_documented_files(phantom, truth):
    files = sorted(p.name for p in (phantom / "dicom").iterdir())
    assert files == [f"{i:06d}.dcm" for i in range(1, N + 1)]
    assert [r["file"] for r in truth] == [f"dicom/{f}" for f in files]
    summary = json.loads((phantom / "synth.json").read_text())
    assert summary["parameters"]["n"] == N and summary["parameters"]["seed"] == SEED
    assert summary["counts"]["images"] == N


def test_files_read_back_with_every_variant(headers, truth):
    seen = Counter()
    for record in truth:
        ds = headers[record["file"]]
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns)
        bits = ds.BitsStored
        lo, hi = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            if ds.PixelRepresentation
            else (0, (1 << bits) - 1)
        )
        assert lo <= arr.min() and arr.max() <= hi
        assert max(ds.Rows, ds.Columns) == SIZE
        seen.update(
            {
                ("photometric", ds.PhotometricInterpretation),
                ("syntax", ds.file_meta.TransferSyntaxUID),
                ("bits", bits),
                ("signed", ds.PixelRepresentation),
                ("modality", ds.Modality),
                ("shape", ds.get("PresentationLUTShape")),
                ("function", ds.get("VOILUTFunction")),
                ("voi_lut", "VOILUTSequence" in ds),
                ("window", "WindowCenter" in ds),
                ("rescale", "RescaleSlope" in ds),
                ("imager_spacing", "ImagerPixelSpacing" in ds),
                ("pixel_spacing", "PixelSpacing" in ds),
                ("spanish", "RODILLA" in str(ds.get("SeriesDescription", ""))),
                ("marker", ds.get("BurnedInAnnotation")),
                ("view", record["view"]),
                ("bilateral", record["bilateral"]),
            }
        )
        seen.update(("schatzker", k["schatzker"]) for k in record["knees"])
    expected = (
        [("photometric", "MONOCHROME1"), ("photometric", "MONOCHROME2")]
        + [("syntax", uid) for uid in TRANSFER_SYNTAXES.values()]
        + [("bits", b) for b in (10, 12, 14, 15, 16)]
        + [("signed", 0), ("signed", 1), ("modality", "CR"), ("modality", "DX")]
        + [("shape", "INVERSE"), ("shape", "IDENTITY"), ("shape", None)]
        + [("function", "SIGMOID"), ("function", "LINEAR_EXACT"), ("voi_lut", True)]
        + [("window", False), ("rescale", True), ("rescale", False)]
        + [("imager_spacing", True), ("pixel_spacing", True), ("spanish", True)]
        + [("marker", "YES"), ("view", "AP"), ("view", "LAT"), ("view", "OTHER")]
        + [("bilateral", True), ("bilateral", False)]
        + [("schatzker", t) for t in range(7)]
    )
    missing = [v for v in expected if not seen[v]]
    assert not missing, f"variants missing from the set: {missing}"


def test_headers_carry_identities_to_deidentify(headers):
    patients = Counter()
    for ds in headers.values():
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "InstitutionName",
            "ReferringPhysicianName",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "StudyDate",
        ):
            assert str(ds.get(keyword, "")).strip(), keyword
        assert any(elem.tag.is_private for elem in ds), "no private tag"
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        patients[ds.PatientID] += 1
    assert max(patients.values()) >= 2, "every patient has a single image"
    assert len({ds.SOPInstanceUID for ds in headers.values()}) == N
    assert len({ds.StudyInstanceUID for ds in headers.values()}) < N


def test_truth_geometry_is_inside_the_image(truth, headers):
    for record in truth:
        ds = headers[record["file"]]
        rows, cols = ds.Rows, ds.Columns
        assert record["schatzker"] == max((k["schatzker"] for k in record["knees"]), default=0)
        if record["view"] == "OTHER":
            assert record["knees"] == [] and record["body_part"] != "KNEE"
            continue
        assert len(record["knees"]) == (2 if record["bilateral"] else 1)
        if record["bilateral"]:
            right, left = record["knees"]
            assert (right["laterality"], left["laterality"]) == ("R", "L")
            assert right["box"][0] < left["box"][0]  # the right knee on the viewer's left
        for knee in record["knees"]:
            x0, y0, x1, y1 = knee["box"]
            assert 0 <= x0 < x1 <= cols - 1 and 0 <= y0 < y1 <= rows - 1
            assert (x1 - x0) * (y1 - y0) > 0.05 * rows * cols
            assert (knee["schatzker"] > 0) == bool(knee["fracture_polygons"])
            assert (knee["schatzker"] > 0) == (knee["visibility"] > 0)
            for polygon in knee["fracture_polygons"]:
                p = np.asarray(polygon)
                assert p.shape[0] >= 3 and p.shape[1] == 2
                assert (
                    (p >= 0).all() and (p[:, 0] <= cols - 1).all() and (p[:, 1] <= rows - 1).all()
                )
                # the fracture lies in the knee's box
                cx, cy = p.mean(axis=0)
                assert x0 <= cx <= x1 and y0 <= cy <= y1


def test_markers_are_burned_in_outside_the_knees(truth, headers):
    marked = 0
    for record in truth:
        ds = headers[record["file"]]
        assert (ds.BurnedInAnnotation == "YES") == bool(record["markers"])
        for marker in record["markers"]:
            marked += 1
            x0, y0, x1, y1 = marker["box"]
            assert 0 <= x0 < x1 < ds.Columns and 0 <= y0 < y1 < ds.Rows
            for knee in record["knees"]:
                kx0, ky0, kx1, ky1 = knee["box"]
                assert x1 < kx0 or kx1 < x0 or y1 < ky0 or ky1 < y0, record["file"]
            if record["knees"] and not record["bilateral"]:
                assert marker["text"] == record["knees"][0]["laterality"]
            image = display(ds)
            top = np.percentile(image, 99.5)
            patch = image[y0 : y1 + 1, x0 : x1 + 1]  # a bright letter on a darker ground
            assert patch.max() >= 0.9 * top, record["file"]
            assert patch.max() - np.median(patch) > 0.25 * top, record["file"]
    assert marked >= N // 2


def test_lateral_partners_show_the_same_knee(truth):
    by_file = {r["file"]: r for r in truth}
    pairs = [r for r in truth if r["partner"]]
    assert pairs
    for record in pairs:
        other = by_file[record["partner"]]
        assert other["partner"] == record["file"]
        assert {record["view"], other["view"]} == {"AP", "LAT"}
        assert record["study"] == other["study"] and record["patient"] == other["patient"]
        a, b = record["knees"][0], other["knees"][0]
        assert (a["laterality"], a["schatzker"]) == (b["laterality"], b["schatzker"])


def test_displayed_bone_is_bright_for_every_polarity(headers, truth):
    for record in truth:
        if record["view"] != "AP":
            continue
        image = display(headers[record["file"]])
        for knee in record["knees"]:
            assert bone_brighter_than_soft_tissue(image, knee["box"]), record["file"]


def test_labels_follow_the_user_schema(phantom, truth):
    with open(phantom / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == LABEL_COLUMNS
        rows = list(reader)
    knees = {(r["file"], k["laterality"]): k["schatzker"] for r in truth for k in r["knees"]}
    by_file = {r["file"]: r for r in truth}
    keys = Counter()
    for row in rows:
        assert row["file"] in by_file and not Path(row["file"]).is_absolute()
        keys[(row["file"], row["laterality"])] += 1
        record = by_file[row["file"]]
        readers = [row[f"schatzker_{r}"] for r in ("r1", "r2", "r3")]
        if row["schatzker"]:
            lat = row["laterality"] or record["knees"][0]["laterality"]
            assert int(row["schatzker"]) == knees[(row["file"], lat)]
        if record["bilateral"] and (row["schatzker"] or any(readers)):
            assert row["laterality"] in ("L", "R")
    assert max(keys.values()) == 1, "duplicate (file, laterality) keys"
    labeled = [r for r in rows if r["schatzker"]]
    reader_only = [r for r in rows if not r["schatzker"] and r["schatzker_r1"] + r["schatzker_r2"]]
    unlabeled = [r for r in rows if not r["schatzker"] and not r["schatzker_r1"]]
    assert labeled and reader_only and unlabeled
    listed = {r["file"] for r in rows}
    assert len(listed) < N, "some files should be left out of the CSV (unlabeled)"

    def majority(row):
        votes = Counter(row[f"schatzker_{r}"] for r in ("r1", "r2", "r3") if row[f"schatzker_{r}"])
        (top, count), *rest = votes.most_common()
        return None if rest and rest[0][1] == count else int(top)

    all_reader_rows = reader_only + [r for r in labeled if r["schatzker_r1"]]
    outcomes = [majority(r) for r in all_reader_rows]
    assert None in outcomes, "no tie for adjudication"
    assert any(o is not None for o in outcomes)


def test_same_seed_same_bytes_across_workers(tmp_path):
    def digest(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    generate(tmp_path / "a", 14, 3, size=128, workers=1)
    generate(tmp_path / "b", 14, 3, size=128, workers=2)
    generate(tmp_path / "c", 14, 4, size=128, workers=1)
    a, b, c = (digest(tmp_path / x) for x in "abc")
    assert a == b
    dicom = [k for k in a if k.startswith("dicom/")]
    assert len(dicom) == 14
    assert all(a[k] != c[k] for k in dicom)


def test_restricted_syntaxes_bits_and_shape(tmp_path):
    generate(tmp_path, 5, 1, size=(300, 240), transfer_syntaxes=("rle",), bits_stored=(12,))
    for path in sorted((tmp_path / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES["rle"]
        assert ds.BitsStored == 12 and (ds.Rows, ds.Columns) == (300, 240)
        assert ds.pixel_array.shape == (300, 240)


@pytest.mark.parametrize("syntax", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize(("dtype", "bits"), [(np.uint16, 12), (np.uint16, 16), (np.int16, 15)])
def test_write_dicom_round_trips(tmp_path, syntax, dtype, bits):
    rng = np.random.default_rng(0)
    lo, hi = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype == np.int16 else (0, (1 << bits) - 1)
    )
    pixels = rng.integers(lo, hi + 1, size=(37, 53)).astype(dtype)
    fields = {
        "PatientName": "DOE^JANE",
        "Modality": "DX",
        "SOPInstanceUID": "2.25.42",
        "WindowCenter": "100",
        "WindowWidth": "400",
        "RequestAttributesSequence": [{"RequestedProcedureID": "A1"}],
    }
    path = write_dicom(
        tmp_path / "x.dcm",
        pixels,
        transfer_syntax=syntax,
        fields=fields,
        bits_stored=bits,
        private=[(0x0019, "TEST 1.0", 0x01, "LO", "secret")],
    )
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    assert ds.BitsStored == bits and ds.PixelRepresentation == int(dtype == np.int16)
    assert ds.PatientName == "DOE^JANE" and ds.SOPInstanceUID == "2.25.42"
    assert ds.RequestAttributesSequence[0].RequestedProcedureID == "A1"
    assert ds.private_block(0x0019, "TEST 1.0")[0x01].value == "secret"
    np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_invalid_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        generate(tmp_path, 0, 1)
    with pytest.raises(ValueError, match="fracture_rate"):
        generate(tmp_path, 2, 1, fracture_rate=1.5)
    with pytest.raises(UnknownNameError, match="did you mean 'jpeg2000'"):
        generate(tmp_path, 2, 1, transfer_syntaxes=("jpeg200",))
    with pytest.raises(ValueError, match="2-D uint16"):
        write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.float32))


def test_fracture_is_drawn_inside_its_polygons():
    plan = plan_dataset(
        40, 9, size=192, fracture_rate=1.0, labeled_fraction=0.0, transfer_syntaxes=["uncompressed"]
    )
    spec = next(
        s
        for s in plan.images
        if s.view == "AP" and not s.bilateral and s.knees[0].schatzker in (1, 2, 4, 5)
    )
    knee = dataclasses.replace(spec.knees[0], visibility=0.8)
    intact = dataclasses.replace(spec, knees=(dataclasses.replace(knee, schatzker=0),))
    broken = dataclasses.replace(spec, knees=(knee,))
    px_broken, *_, rec_broken = render(broken)
    px_intact, *_, rec_intact = render(intact)
    assert rec_intact["knees"][0]["fracture_polygons"] == []
    diff = np.abs(px_broken.astype(np.float64) - px_intact.astype(np.float64))
    inside = np.zeros(diff.shape, np.uint8)
    for polygon in rec_broken["knees"][0]["fracture_polygons"]:
        cv2.fillPoly(inside, [np.round(np.asarray(polygon)).astype(np.int32)], 1)
    x0, y0, x1, y1 = rec_broken["knees"][0]["box"]
    outside_box = np.ones(diff.shape, bool)
    outside_box[y0 : y1 + 1, x0 : x1 + 1] = False
    assert diff[inside > 0].mean() > 20 * (diff[outside_box].mean() + 1e-3)
    assert diff[inside > 0].mean() > 0.01 * (px_intact.max() - px_intact.min())


def test_cli_writes_a_set(tmp_path, capsys):
    code = main(
        [
            "synth",
            "--out",
            str(tmp_path),
            "--n",
            "4",
            "--seed",
            "2",
            "--size",
            "128",
            "--transfer-syntax",
            "uncompressed",
        ]
    )
    assert code == 0
    assert len(list((tmp_path / "dicom").glob("*.dcm"))) == 4
    assert "wrote 4 DICOM files" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path), "--n", "0", "--seed", "2"]) == 2


def test_reader_reads_every_synthetic_file(phantom, truth, headers):
    for record in truth:
        ds = headers[record["file"]]
        rad = read_radiograph(phantom / record["file"])
        assert rad.image.dtype == np.float32 and rad.image.shape == (ds.Rows, ds.Columns)
        assert float(rad.image.min()) >= 0.0 and float(rad.image.max()) <= 1.0
        assert rad.meta["bits_stored"] == ds.BitsStored
        assert rad.meta["photometric"] == ds.PhotometricInterpretation
        if "ImagerPixelSpacing" in ds:
            assert rad.meta["pixel_spacing_mm"][0] == pytest.approx(
                record["pixel_spacing_mm"], rel=1e-4
            )
        if record["view"] == "AP":
            for knee in record["knees"]:
                assert bone_brighter_than_soft_tissue(rad.image, knee["box"]), record["file"]


# --------------------------------------------------------------------------- other parts, clinical


def test_default_phantom_is_the_same_whatever_the_new_options_say(tmp_path):
    """``other_parts``, ``other_share`` and ``style`` at their defaults write what the
    phantom always wrote (the demo's images do not move)."""

    def digest(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    generate(tmp_path / "a", 12, 9, size=128)
    generate(
        tmp_path / "b",
        12,
        9,
        size=128,
        other_parts=("HAND", "ANKLE"),
        other_share=0.1,
        style="phantom",
    )
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


@pytest.fixture(scope="module")
def every_part(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("synth-parts")
    generate(out, 60, 8, size=192, other_parts=ALL_OTHER_PARTS, other_share=0.6)
    return out, [json.loads(x) for x in (out / "truth.jsonl").read_text().splitlines()]


def test_other_parts_draw_every_body_part_and_the_skyline_view(every_part):
    folder, records = every_part
    kinds = Counter((r["body_part"], r["view"]) for r in records if not r["knees"])
    assert {("HIP", "OTHER"), ("CHEST", "OTHER"), ("KNEE", "SKYLINE")} <= set(kinds)
    assert {("HAND", "OTHER"), ("ANKLE", "OTHER")} <= set(kinds)
    for r in records:
        if r["view"] in ("OTHER", "SKYLINE"):
            rad = read_radiograph(folder / r["file"])
            assert float(rad.image.std()) > 0.05, r["file"]  # something is drawn
            tags = pydicom.dcmread(folder / r["file"], stop_before_pixels=True)
            if r["view"] == "SKYLINE" and "ViewPosition" in tags:
                assert tags.ViewPosition in ("AXIAL", "SKYLINE", "TANGENTIAL")
    summary = json.loads((folder / "synth.json").read_text())
    assert summary["parameters"]["other_parts"] == list(ALL_OTHER_PARTS)


def test_unknown_parts_and_styles_are_refused(tmp_path):
    with pytest.raises(ValueError, match="other_parts must be names from"):
        generate(tmp_path, 4, 1, size=128, other_parts=["ELBOW"])
    with pytest.raises(UnknownNameError, match="style"):
        generate(tmp_path, 4, 1, size=128, style="clinicall")
    with pytest.raises(ValueError, match="other_share"):
        generate(tmp_path, 4, 1, size=128, other_share=0.95)


@pytest.fixture(scope="module")
def clinical(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("synth-clinical")
    generate(out, 60, 12, size=256, other_parts=ALL_OTHER_PARTS, other_share=0.3, style="clinical")
    return out, [json.loads(x) for x in (out / "truth.jsonl").read_text().splitlines()]


def test_clinical_style_frames_and_marks_images_as_archives_do(clinical):
    folder, records = clinical
    seen = Counter(k for r in records for k in r["clinical"])
    for change in ("crop", "text", "secondary_capture", "shutter"):
        assert seen[change] > 0, seen
    for r in records:
        ds = pydicom.dcmread(folder / r["file"])
        rows, cols = r["shape"]
        assert (ds.Rows, ds.Columns) == (rows, cols)
        for knee in r["knees"]:  # truth boxes follow the crop and the second view
            x0, y0, x1, y1 = knee["box"]
            assert 0 <= x0 < x1 < cols and 0 <= y0 < y1 < rows, (r["file"], knee["box"])
        if r["clinical"].get("secondary_capture"):
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.BitsStored == 8
        rad = read_radiograph(folder / r["file"])
        assert rad.image.shape == (rows, cols)


def test_a_second_view_sits_beside_the_frontal_knee(tmp_path):
    records = []
    for seed in range(20, 40):
        generate(tmp_path / str(seed), 6, seed, size=192, style="clinical")
        lines = (tmp_path / str(seed) / "truth.jsonl").read_text().splitlines()
        records += [json.loads(x) for x in lines]
        two = [r for r in records if "second_view" in r["clinical"]]
        if two:
            break
    r = two[0]
    rows, cols = r["shape"]
    assert cols > rows * 1.3  # two panels side by side
    assert r["clinical"]["second_view"]["view"] in ("LAT", "SKYLINE")


def test_write_secondary_capture_converts_rgb_exports(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = write_secondary_capture(tmp_path / "x.dcm", rgb, fields={"BodyPartExamined": "KNEE"})
    ds = pydicom.dcmread(path)
    assert (
        ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        and ds.PhotometricInterpretation == "MONOCHROME2"
    )
    assert ds.BitsStored == 8 and ds.BodyPartExamined == "KNEE"
    grey = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert int(ds.pixel_array[0, 0]) == grey
    assert read_radiograph(path).image[0, 0] == pytest.approx(grey / 255, abs=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        write_secondary_capture(tmp_path / "y.dcm", rgb.astype(np.float32))
