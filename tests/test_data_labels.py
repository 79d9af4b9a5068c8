"""Labels CSV: consensus rule, every bad-row case reported by row and counted."""

from __future__ import annotations

import pytest

from pipeline.data import LabelsError, consensus, load_labels
from pipeline.data.labels import escapes_data_dir, normalize_file, parse_schatzker


@pytest.fixture
def data_dir(tmp_path):
    """A data folder with six (empty) files the CSVs can name."""
    root = tmp_path / "data"
    (root / "dicom").mkdir(parents=True)
    for i in range(6):
        (root / "dicom" / f"{i:06d}.dcm").write_bytes(b"")
    (root / "dicom" / "rodilla_año.dcm").write_bytes(b"")
    return root


def write(data_dir, text: str | bytes, name: str = "labels.csv"):
    path = data_dir / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def check_accounting(table):
    """Every data row read is either usable or a counted problem."""
    assert table.rows_read == len(table.rows) + len(table.problems)
    assert table.summary()["problems"] == len(table.problems)


# --- consensus -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([2, 2, 3], 2),  # majority
        ([0, 1, 1, 2], 1),  # plurality wins when it is unique
        ([4], 4),  # single reader
        ([3, 3, 3], 3),
        ([2, 3], None),  # tie
        ([0, 0, 5, 5, 1], None),  # tie at the top
    ],
)
def test_consensus_cases(labels, expected):
    assert consensus(labels) == expected


def test_consensus_of_nothing_is_an_error_not_a_tie():
    with pytest.raises(ValueError, match="unlabeled"):
        consensus([])


def test_readers_folded_with_ties_to_adjudication_and_explicit_winning(data_dir):
    csv = write(
        data_dir,
        "file,schatzker,schatzker_ana,schatzker_ben,schatzker_cruz\n"
        "dicom/000000.dcm,,2,2,3\n"  # majority -> 2
        "dicom/000001.dcm,,2,3,\n"  # tie -> adjudication, unlabeled
        "dicom/000002.dcm,,,,5\n"  # single reader -> 5
        "dicom/000003.dcm,0,4,4,4\n"  # explicit wins over unanimous readers
        "dicom/000004.dcm,,,,\n",  # nobody read it -> unlabeled
    )
    table = load_labels(csv, data_dir)
    check_accounting(table)
    got = {r.file: (r.schatzker, r.source) for r in table.rows}
    assert got == {
        "dicom/000000.dcm": (2, "majority"),
        "dicom/000001.dcm": (None, "tie"),
        "dicom/000002.dcm": (5, "single_reader"),
        "dicom/000003.dcm": (0, "explicit"),
        "dicom/000004.dcm": (None, "unlabeled"),
    }
    assert table.readers == ("ana", "ben", "cruz")
    (adj,) = table.adjudication
    assert (adj.row, adj.file, adj.candidates, adj.reason) == (3, "dicom/000001.dcm", (2, 3), "tie")
    assert dict(adj.votes) == {"ana": 2, "ben": 3}
    s = table.summary()
    assert s["labeled"] == 3 and s["adjudication"] == 1 and s["unlabeled"] == 1
    assert s["explicit_overrides_readers"] == 1
    assert s["binary"] == {"no_fracture": 1, "fracture": 2}
    assert table.problems == ()


def test_excel_sep_line_sets_the_delimiter_and_keeps_row_numbers(data_dir):
    csv = write(data_dir, "sep=;\nfile;schatzker\ndicom/000000.dcm;1\ndicom/000001.dcm;8\n")
    table = load_labels(csv, data_dir)
    assert [r.schatzker for r in table.rows] == [1]
    (problem,) = table.problems
    assert problem.row == 4  # line 4 of the file, as a text editor shows it


def test_readers_only_csv_without_schatzker_column(data_dir):
    csv = write(data_dir, "file,schatzker_a,schatzker_b,schatzker_c\ndicom/000000.dcm,1,1,0\n")
    (row,) = load_labels(csv, data_dir).rows
    assert (row.schatzker, row.source) == (1, "majority")


def test_good_csv_with_laterality_bom_and_semicolons(data_dir):
    text = "\ufeffFile;Schatzker;Laterality;notes\r\n./dicom\\000000.dcm;2.0;l;x\r\ndicom/000000.dcm;0;R;\r\n"
    csv = write(data_dir, text.encode("utf-8"))
    table = load_labels(csv, data_dir)
    check_accounting(table)
    assert table.encoding == "utf-8-sig"
    assert [(r.file, r.laterality, r.schatzker) for r in table.rows] == [
        ("dicom/000000.dcm", "L", 2),
        ("dicom/000000.dcm", "R", 0),
    ]
    assert table.get("dicom/000000.dcm", "L").schatzker == 2
    assert table.get("dicom/000000.dcm") is None
    assert table.ignored_columns == ("notes",)


# --- bad rows: each named by its row number and counted ---------------------------------

BAD_ROWS = [
    ("dicom/999999.dcm,1", "unknown_file", "999999.dcm"),
    ("dicom/000001.dcm,7", "out_of_range", "'7'"),
    ("dicom/000001.dcm,-1", "out_of_range", "'-1'"),
    ("dicom/000001.dcm,2.5", "out_of_range", "'2.5'"),
    ("dicom/000001.dcm,II", "free_text", "'II'"),
    ("dicom/000001.dcm,fracture", "free_text", "not a number"),
    ("dicom/000001.dcm,nan", "free_text", "'nan'"),
    (",,", "empty_row", "empty row"),
    (",3", "empty_file", "no file name"),
    ("../outside.dcm,1", "path_escape", "outside the data folder"),
    ("dicom/../../etc/passwd,1", "path_escape", "outside the data folder"),
    ("/etc/passwd,1", "path_escape", "outside the data folder"),
    ("C:\\data\\knee.dcm,1", "path_escape", "outside the data folder"),
    ("\\\\server\\share\\knee.dcm,1", "path_escape", "outside the data folder"),
    ("dicom/000001.dcm,1,X", "bad_laterality", "laterality 'X'"),
    ("dicom/000001.dcm,1,L,surprise", "extra_fields", "surprise"),
]


@pytest.mark.parametrize(("line", "reason", "fragment"), BAD_ROWS)
def test_each_bad_row_is_reported_with_its_row_and_counted(data_dir, line, reason, fragment):
    csv = write(
        data_dir, f"file,schatzker,laterality\ndicom/000000.dcm,0\n{line}\ndicom/000002.dcm,3\n"
    )
    table = load_labels(csv, data_dir)
    check_accounting(table)
    (problem,) = table.problems
    assert problem.reason == reason
    assert problem.row == 3
    assert str(problem).startswith("labels.csv: row 3: ")
    assert fragment in problem.message
    assert table.summary()["problems_by_reason"] == {reason: 1}
    # The good rows around it are kept.
    assert [r.file for r in table.rows] == ["dicom/000000.dcm", "dicom/000002.dcm"]


def test_bad_reader_cell_is_reported_with_its_column(data_dir):
    csv = write(data_dir, "file,schatzker,schatzker_ana\ndicom/000000.dcm,,tipo II\n")
    table = load_labels(csv, data_dir)
    check_accounting(table)
    (problem,) = table.problems
    assert (problem.row, problem.reason) == (2, "free_text")
    assert "schatzker_ana 'tipo II'" in problem.message


def test_duplicates_same_label_keep_first_and_conflicting_go_to_adjudication(data_dir):
    csv = write(
        data_dir,
        "file,schatzker\n"
        "dicom/000000.dcm,2\n"
        "./dicom/000000.dcm,2\n"  # same key after normalisation, same label
        "dicom/000001.dcm,0\n"
        "dicom/000001.dcm,4\n",  # same key, different label
    )
    table = load_labels(csv, data_dir)
    check_accounting(table)
    assert [(p.row, p.reason) for p in table.problems] == [
        (3, "duplicate_key"),
        (5, "duplicate_key"),
    ]
    assert "row 2" in table.problems[0].message
    assert "different label (0 vs 4)" in table.problems[1].message
    assert table.get("dicom/000000.dcm").schatzker == 2
    conflict = table.get("dicom/000001.dcm")
    assert (conflict.schatzker, conflict.source) == (None, "conflict")
    (adj,) = table.adjudication
    assert (adj.row, adj.candidates, adj.reason) == (4, (0, 4), "conflicting duplicate")


def test_latin1_row_is_reported_by_row_and_the_rest_is_read(data_dir):
    raw = (
        "file,schatzker\ndicom/000000.dcm,1\ndicom/rodilla_año.dcm,2\ndicom/000002.dcm,0\n".encode(
            "latin-1"
        )
    )
    table = load_labels(write(data_dir, raw), data_dir)
    check_accounting(table)
    assert table.encoding == "invalid"
    (problem,) = table.problems
    assert (problem.row, problem.reason) == (3, "encoding")
    assert "rodilla_año.dcm" in problem.message  # shown as a Latin-1 editor would
    assert "UTF-8" in problem.message
    assert len(table.rows) == 2


def test_the_same_name_in_utf8_is_read(data_dir):
    table = load_labels(write(data_dir, "file,schatzker\ndicom/rodilla_año.dcm,2\n"), data_dir)
    assert [r.file for r in table.rows] == ["dicom/rodilla_año.dcm"] and table.problems == ()


def test_every_row_is_accounted_for_in_a_mixed_file(data_dir):
    lines = (
        ["file,schatzker,laterality"] + [line for line, _, _ in BAD_ROWS] + ["dicom/000005.dcm,6,R"]
    )
    table = load_labels(write(data_dir, "\n".join(lines) + "\n"), data_dir)
    check_accounting(table)
    assert table.rows_read == len(BAD_ROWS) + 1
    assert sorted(p.row for p in table.problems) == list(range(2, 2 + len(BAD_ROWS)))
    assert len(table.rows) == 1


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        ("file,schatzker\n".encode("utf-16"), "UTF-16"),
        (b"filename,schatzker\nx,1\n", "did you mean 'filename'"),
        (b"file,grade\nx,1\n", "no 'schatzker' column"),
        (b"file,schatzker,file\n", "more than once"),
        (b"fil\xe9,schatzker\n", "header is not UTF-8"),
        (b"sep=;\n", "nothing after the sep= line"),
    ],
)
def test_unreadable_csv_raises_one_line_naming_the_file(data_dir, content, fragment):
    csv = write(data_dir, content)
    with pytest.raises(LabelsError, match=fragment) as info:
        load_labels(csv, data_dir)
    assert str(info.value).startswith(str(csv))
    assert "\n" not in str(info.value)


def test_missing_csv_raises(data_dir):
    with pytest.raises(LabelsError, match="not found"):
        load_labels(data_dir / "nope.csv", data_dir)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", (0, None)),
        (" 6 ", (6, None)),
        ("3.0", (3, None)),
        ("", (None, None)),
        ("inf", (None, "free_text")),
    ],
)
def test_parse_schatzker(text, expected):
    assert parse_schatzker(text) == expected


@pytest.mark.parametrize(
    ("text", "escapes"),
    [
        ("a/b.dcm", False),
        ("a/..b.dcm", False),
        ("../a", True),
        ("a/../../b", True),
        ("/a", True),
        ("D:x", True),
    ],
)
def test_escapes_data_dir(text, escapes):
    assert escapes_data_dir(text) is escapes


def test_normalize_file():
    assert normalize_file(" ./dicom\\\\a.dcm ") == "dicom/a.dcm"


def test_duplicate_without_a_label_is_ignored_not_a_conflict(data_dir):
    csv = write(data_dir, "file,schatzker\ndicom/000000.dcm,3\ndicom/000000.dcm,\n")
    table = load_labels(csv, data_dir)
    check_accounting(table)
    (problem,) = table.problems
    assert problem.row == 3 and "(label 3); this row (no label) is ignored" in problem.message
    assert table.get("dicom/000000.dcm").schatzker == 3 and table.adjudication == ()
