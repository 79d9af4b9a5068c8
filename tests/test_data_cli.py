"""``python -m pipeline split``: label summary, problems, view filter and split counts."""

from __future__ import annotations

import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.data import Splits
from pipeline.data import cli as split_cli


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A data folder whose 'DICOM headers' come from a table (no decoding needed)."""
    root = tmp_path / "data"
    (root / "dicom").mkdir(parents=True)
    metas = {}
    for p in range(30):
        for j, view in enumerate(("AP", "LAT")):
            file = f"dicom/{p:03d}_{j}.dcm"
            (root / file).write_bytes(b"")
            metas[file] = {
                "view": view,
                "body_part": "KNEE",
                "patient_key": f"P-{p:03d}",
                "study_key": f"S-{p:03d}",
                "site_key": f"I-{p % 3}",
            }
    metas["dicom/ankle.dcm"] = {"view": "AP", "body_part": "ANKLE", "patient_key": "P-999"}
    (root / "dicom" / "ankle.dcm").write_bytes(b"")
    rows = [f"dicom/{p:03d}_0.dcm,{(p % 4 == 0) * (1 + p % 6)}" for p in range(24)]
    rows += [
        "dicom/nope.dcm,1",
        "dicom/000_0.dcm,9",
        "dicom/001_1.dcm,2",
    ]  # unknown, out of range, lateral
    (root / "labels.csv").write_text("file,schatzker\n" + "\n".join(rows) + "\n")

    def fake_folder_metas(data_dir, *, skip=()):
        return {f: dict(m) for f, m in metas.items()}, ["dicom/junk.bin: not a DICOM file"]

    monkeypatch.setattr(split_cli, "folder_metas", fake_folder_metas)
    return root


def test_split_prints_summary_problems_and_counts_and_writes_csv(folder, tmp_path, capsys):
    out = tmp_path / "splits.csv"
    assert pipeline_main(["split", "--data", str(folder), "--out", str(out), "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "rows read 27, usable 25: labeled 25" in text
    assert "row 26: dicom/nope.dcm is not a file in the data folder" in text
    assert "row 27: schatzker '9' of dicom/000_0.dcm is outside 0..6" in text
    assert "view filter keeps 30" in text
    assert "30  flag  lateral view: LAT 30" in text
    assert "1  flag  other body part: ANKLE 1" in text
    assert "unreadable: dicom/junk.bin" in text
    assert "row 28: dicom/001_1.dcm: lateral view (LAT)" in text
    assert "sites (for --leave-site-out): I-0" in text
    for name in ("train", "val", "test", "unlabeled"):
        assert f"\n{name} " in text
    splits = Splits.read_csv(out)
    assert splits.params["seed"] == 3
    labeled = [r for r in splits.rows if r.split in ("train", "val", "test")]
    assert len(labeled) == 24  # one unit per usable labeled frontal row
    assert {r.split for r in splits.rows} >= {"train", "val", "test", "unlabeled"}


def test_split_fail_on_problems_and_folds(folder, capsys):
    assert (
        pipeline_main(["split", "--data", str(folder), "--folds", "3", "--fail-on-problems"]) == 1
    )
    text = capsys.readouterr().out
    assert "fold 0" in text and "trainval" in text


def test_split_leave_site_out_and_its_errors(folder, capsys):
    assert pipeline_main(["split", "--data", str(folder), "--leave-site-out", "I-1"]) == 0
    assert pipeline_main(["split", "--data", str(folder), "--leave-site-out", "I-7"]) == 2
    err = capsys.readouterr().err
    assert "unknown site 'I-7'" in err and "I-1" in err


def test_split_unreadable_labels_exit_2(folder, capsys):
    (folder / "bad.csv").write_text("name,grade\n")
    assert pipeline_main(["split", "--data", str(folder), "--labels", str(folder / "bad.csv")]) == 2
    assert "no 'file' column" in capsys.readouterr().err


def test_split_on_the_phantom(phantom_dir, tmp_path, capsys):
    out = tmp_path / "splits.csv"
    assert pipeline_main(["split", "--data", str(phantom_dir), "--out", str(out)]) == 0
    assert "labels:" in capsys.readouterr().out
    splits = Splits.read_csv(out)
    test_patients = {r.patient for r in splits.rows if r.split == "test"}
    trained = {r.patient for r in splits.rows if r.split in ("train", "val", "unlabeled")}
    assert test_patients and not test_patients & trained
