"""``python -m pipeline preprocess``: the cache of a phantom folder and the contact sheet."""

from __future__ import annotations

import json

import cv2

from pipeline.__main__ import main
from pipeline.preprocess import PreprocessConfig


def test_preprocess_command_builds_the_cache_and_the_sheet(phantom_dir, tmp_path, capsys):
    cache, sheet = tmp_path / "cache", tmp_path / "sheet.png"
    argv = ["preprocess", "--data", str(phantom_dir), "--cache", str(cache), "--image-size", "32"]
    code = main(
        [*argv, "--sheet", str(sheet), "--sheet-count", "3", "--no-progress", "--workers", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    n_files = len(list((phantom_dir / "dicom").glob("*.dcm")))
    assert f"from {n_files} files" in out and f"{n_files} built" in out
    root = cache / PreprocessConfig.from_trial({"image_size": 32}).key()
    sidecars = list(root.glob("objects/*/*.json"))
    assert len(sidecars) == n_files  # labels.csv, truth.jsonl and synth.json are not images
    crops = sum(len(json.loads(p.read_text())["crops"]) for p in sidecars)
    assert crops > n_files  # bilateral images give two crops
    picture = cv2.imread(str(sheet))
    assert picture is not None and picture.shape[0] >= 3 * 160 and picture.shape[1] >= 7 * 160

    code = main([*argv, "--no-progress"])
    assert code == 0 and f"{n_files} unchanged" in capsys.readouterr().out


def test_preprocess_command_reports_unreadable_files(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.dcm").write_bytes(b"not a dicom file")
    errors = tmp_path / "errors.csv"
    code = main(
        [
            "preprocess",
            "--data",
            str(data),
            "--cache",
            str(tmp_path / "c"),
            "--errors",
            str(errors),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "broken.dcm" in capsys.readouterr().err
    assert "broken.dcm" in errors.read_text()


def test_preprocess_command_rejects_a_bad_config(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - clahe: {clipp: 2}\n")
    code = main(["preprocess", "--data", str(tmp_path / "d"), "--config", str(bad)])
    assert code == 2 and "did you mean 'clip'" in capsys.readouterr().err


def test_preprocess_command_lists_the_files_out_of_scope(phantom_dir, tmp_path, capsys):
    truth = [json.loads(x) for x in (phantom_dir / "truth.jsonl").read_text().splitlines() if x]
    other = [t["file"] for t in truth if t["view"] != "AP" or t["body_part"] != "KNEE"]
    argv = ["preprocess", "--data", str(phantom_dir), "--cache", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{len(other)} files out of scope by their pixels" in out
    listed = [line for line in out.splitlines() if line.startswith("  out of scope: ")]
    assert len(listed) == min(20, len(other))
    assert all(line.split(": ")[1] in other for line in listed)
    assert all(line.endswith(")") for line in listed)  # the decision's score
