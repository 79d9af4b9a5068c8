"""Hostile labels CSVs: every bad row is named and counted, nothing vanishes unaccounted.

Each case is a CSV (text or raw bytes) and what must come of it: the problem reasons
per row, or a :class:`LabelsError` naming the file when it cannot be read as a table.
For every case that reads, each data row is either a usable row or a problem whose
message names its row, and the summary counts every problem by reason.
"""

from __future__ import annotations

import pytest

from pipeline.data import LabelsError, load_labels

H = "file,schatzker\n"
LAT = "file,schatzker,laterality\n"

# name -> (CSV content, {row: reason} for the problems, usable rows)
ROW_CASES: dict[str, tuple[str | bytes, dict[int, str], int]] = {
    "unknown_file": (H + "dicom/a.dcm,1\ndicom/nope.dcm,2\n", {3: "unknown_file"}, 1),
    "folder_not_file": (H + "dicom,1\n", {2: "unknown_file"}, 0),
    "duplicate_same_label": (H + "dicom/a.dcm,1\ndicom/a.dcm,1\n", {3: "duplicate_key"}, 1),
    "duplicate_other_label": (H + "dicom/a.dcm,1\ndicom/a.dcm,4\n", {3: "duplicate_key"}, 1),
    "duplicate_spelled_differently": (
        H + "dicom/a.dcm,1\n./dicom//a.dcm,1\ndicom\\a.dcm,1\n",
        {3: "duplicate_key", 4: "duplicate_key"},
        1,
    ),
    "label_7": (H + "dicom/a.dcm,7\n", {2: "out_of_range"}, 0),
    "label_negative": (H + "dicom/a.dcm,-1\n", {2: "out_of_range"}, 0),
    "label_fraction": (H + "dicom/a.dcm,2.5\n", {2: "out_of_range"}, 0),
    "label_huge": (H + "dicom/a.dcm,99999999999999999999999\n", {2: "out_of_range"}, 0),
    "label_inf": (H + "dicom/a.dcm,inf\n", {2: "free_text"}, 0),
    "label_overflow": (H + "dicom/a.dcm,1e400\n", {2: "free_text"}, 0),
    "label_nan": (H + "dicom/a.dcm,nan\n", {2: "free_text"}, 0),
    "label_roman": (H + "dicom/a.dcm,II\n", {2: "free_text"}, 0),
    "label_sentence": (H + 'dicom/a.dcm,"lateral split, type 2?"\n', {2: "free_text"}, 0),
    "empty_label_is_unlabeled": (H + "dicom/a.dcm,\ndicom/b.dcm,  \n", {}, 2),
    "empty_row": (H + "dicom/a.dcm,1\n,\n\ndicom/b.dcm,2\n", {3: "empty_row", 4: "empty_row"}, 2),
    "empty_file_name": (H + ",3\n", {2: "empty_file"}, 0),
    "dotdot": (H + "../x.dcm,1\n", {2: "path_escape"}, 0),
    "dotdot_inside": (H + "dicom/../../x.dcm,1\n", {2: "path_escape"}, 0),
    "dotdot_windows": (H + "dicom\\..\\..\\x.dcm,1\n", {2: "path_escape"}, 0),
    "absolute_posix": (H + "/etc/passwd,1\n", {2: "path_escape"}, 0),
    "absolute_windows": (H + "C:\\data\\x.dcm,1\n", {2: "path_escape"}, 0),
    "drive_relative": (H + "C:x.dcm,1\n", {2: "path_escape"}, 0),
    "unc_share": (H + "\\\\server\\share\\x.dcm,1\n", {2: "path_escape"}, 0),
    "name_too_long": (H + "dicom/" + "x" * 300 + ".dcm,1\ndicom/b.dcm,2\n", {2: "unknown_file"}, 1),
    "path_too_long": (H + "/".join(["d" * 200] * 30) + ".dcm,1\n", {2: "unknown_file"}, 0),
    "nul_in_name": (H + "dicom/a\x00.dcm,1\ndicom/b.dcm,2\n", {2: "unknown_file"}, 1),
    "extra_fields": (H + "dicom/a.dcm,1,oops\n", {2: "extra_fields"}, 0),
    "bad_laterality": (LAT + "dicom/a.dcm,1,both\n", {2: "bad_laterality"}, 0),
    "unbalanced_quote": (
        H + 'dicom/a.dcm,1\n"dicom/b.dcm,2\ndicom/c.dcm,3\n',
        {3: "bad_quoting"},
        1,
    ),
    "latin1_row": (
        (H + "dicom/a.dcm,1\n").encode() + "dicom/rodilla_año.dcm,2\n".encode("latin-1"),
        {3: "encoding"},
        1,
    ),
    "cp1252_quotes": (
        H.encode() + b"dicom/a.dcm,\x932\x94\n" + b"dicom/b.dcm,3\n",
        {2: "encoding"},
        1,
    ),
    "utf8_bom": (b"\xef\xbb\xbf" + (H + "dicom/a.dcm,1\n").encode(), {}, 1),
    "utf8_non_ascii_name": (H + "dicom/rodilla_año.dcm,2\n", {}, 1),
    "crlf_and_cr": (b"file,schatzker\r\ndicom/a.dcm,1\rdicom/b.dcm,2\r\n", {}, 2),
    "semicolons": ("file;schatzker\ndicom/a.dcm;1\ndicom/b.dcm;x\n", {3: "free_text"}, 1),
}

# name -> (content, fragment of the LabelsError message)
FILE_CASES: dict[str, tuple[str | bytes, str]] = {
    "utf16_bom": ((H + "dicom/a.dcm,1\n").encode("utf-16"), "UTF-16"),
    "utf16_no_bom": ((H + "dicom/a.dcm,1\n").encode("utf-16-le"), "NUL bytes"),
    "utf32_bom": ((H + "dicom/a.dcm,1\n").encode("utf-32"), "UTF-32"),
    "binary": (bytes(range(256)) * 4, "no 'file' column"),
    "empty": (b"", "empty"),
    "whitespace": ("  \n\n", "empty"),
    "no_file_column": ("path,schatzker\ndicom/a.dcm,1\n", "no 'file' column"),
    "no_label_column": ("file,grade\ndicom/a.dcm,1\n", "no 'schatzker' column"),
    "latin1_header": ("fíle,schatzker\n".encode("latin-1"), "header is not UTF-8"),
    "duplicate_columns": ("file,schatzker,schatzker\n", "more than once"),
}


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "dicom").mkdir(parents=True)
    for name in ("a.dcm", "b.dcm", "c.dcm", "rodilla_año.dcm"):
        (root / "dicom" / name).write_bytes(b"")
    return root


def _write(data_dir, content: str | bytes):
    path = data_dir / "labels.csv"
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _data_rows(content: str | bytes) -> int:
    """Physical data lines (after the header), as a spreadsheet would number them."""
    raw = content if isinstance(content, bytes) else content.encode("utf-8")
    lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return len([ln for ln in lines[1:]]) - (1 if lines[-1] == b"" else 0)


@pytest.mark.parametrize("name", sorted(ROW_CASES))
def test_bad_rows_are_named_and_counted(name, data_dir):
    content, expected, usable = ROW_CASES[name]
    table = load_labels(_write(data_dir, content), data_dir)
    got = {p.row: p.reason for p in table.problems}
    assert got == expected, [str(p) for p in table.problems]
    assert len(table.rows) == usable
    for p in table.problems:
        text = str(p)
        assert text.startswith(f"labels.csv: row {p.row}: ") and "\n" not in text.replace(
            "\\n", ""
        ), text
        assert len(text) < 400, "a message stays readable"
    summary = table.summary()
    assert summary["problems"] == len(table.problems)
    for reason in set(expected.values()):
        assert summary["problems_by_reason"][reason] == list(expected.values()).count(reason)
    # every row read is either used or a counted problem
    assert table.rows_read == len(table.rows) + len(table.problems)


@pytest.mark.parametrize("name", sorted(ROW_CASES))
def test_no_physical_line_is_lost(name, data_dir):
    """Lines joined by an unbalanced quote are named by the problem's message."""
    content, _, _ = ROW_CASES[name]
    table = load_labels(_write(data_dir, content), data_dir)
    lines = _data_rows(content)
    joined = sum(
        int(p.message.split(" spans ")[1].split()[0]) - 1
        for p in table.problems
        if p.reason == "bad_quoting"
    )
    assert table.rows_read + joined == lines


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_unreadable_tables_raise_one_error_naming_the_file(name, data_dir):
    content, fragment = FILE_CASES[name]
    path = _write(data_dir, content)
    with pytest.raises(LabelsError) as info:
        load_labels(path, data_dir)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message, message
    assert "\x00" not in message and "\n" not in message


def test_a_mixed_file_counts_every_row_once(data_dir):
    """All the row cases in one file: the usable rows and the problems add up."""
    body = [
        "dicom/a.dcm,1",
        "dicom/nope.dcm,2",
        "../x.dcm,1",
        "/etc/passwd,3",
        "dicom/b.dcm,9",
        "dicom/b.dcm,two",
        "dicom/c.dcm,",
        "dicom/a.dcm,1",
        ",",
        "dicom/" + "x" * 300 + ".dcm,1",
    ]
    table = load_labels(_write(data_dir, H + "\n".join(body) + "\n"), data_dir)
    summary = table.summary()
    assert summary["rows_read"] == len(body) == summary["usable_rows"] + summary["problems"]
    assert summary["problems_by_reason"] == {
        "duplicate_key": 1,
        "empty_row": 1,
        "free_text": 1,
        "out_of_range": 1,
        "path_escape": 2,
        "unknown_file": 2,
    }
    assert summary["labeled"] == 1 and summary["unlabeled"] == 1
