"""The labels CSV: a team's Schatzker spreadsheet, read strictly and reported in full.

Schema (docs/architecture.md, "Labels CSV")::

    file,schatzker[,laterality][,schatzker_<reader>...]

- ``file``: the DICOM file's path relative to the data folder. Absolute paths and
  ``..`` are refused; ``\\`` separators (spreadsheets saved on Windows) read as ``/``.
- ``schatzker``: 0..6, or empty for an unlabeled image.
- ``laterality``: optional ``L``/``R`` (also ``left``/``right``), for a bilateral image
  that carries a label per knee. A row's key is ``(file, laterality)``.
- ``schatzker_<reader>``: one column per reader. When ``schatzker`` is empty the readers'
  labels are folded by :func:`consensus`; a tie goes to the adjudication list and the
  image stays unlabeled until someone decides. A filled ``schatzker`` always wins over
  the readers (it is the adjudicated label).

Column names are matched case-insensitively; other columns are ignored and listed in
the summary. The delimiter is ``,`` (``;`` and tab are recognised from the header, as
spreadsheets in many locales write them, and so is Excel's ``sep=;`` first line).
Labels written as ``2.0`` (spreadsheet exports) read as 2.

Nothing is dropped silently: every row that cannot be used becomes a
:class:`LabelProblem` that names the row (the CSV's line number, header = row 1, as a
spreadsheet shows it) and the reason, and is counted in :meth:`LabelTable.summary`.
Reasons: ``encoding`` (not UTF-8; UTF-8 with or without BOM is read), ``empty_row``,
``empty_file``, ``path_escape``, ``unknown_file``, ``duplicate_key`` (a later row
repeating a key is ignored; when both rows carry different labels, the key goes to
adjudication and the image is unlabeled until then),
``out_of_range`` (a number outside 0..6), ``free_text`` (not a number),
``bad_laterality``, ``extra_fields``, ``bad_quoting`` (an unbalanced quote: the
lines it joins are named in the message). A file that cannot be read as a table at
all (missing, no ``file`` column, UTF-16 or UTF-32, NUL bytes, ...) raises
:class:`LabelsError`.

Binary task: fracture = ``schatzker != 0``.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath

SCHATZKER_CLASSES: tuple[int, ...] = tuple(range(7))
READER_PREFIX = "schatzker_"
LATERALITIES = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R"}


class LabelsError(ValueError):
    """The labels CSV cannot be read as a table at all (one line, names the file)."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True, kw_only=True)
class LabelProblem:
    """One unusable row (or, for join problems, one label that found no image)."""

    row: int | None
    file: str | None
    reason: str
    message: str
    source: str = ""

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "-"
        prefix = f"{self.source}: " if self.source else ""
        return f"{prefix}{where}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class LabelRow:
    """One usable row. ``schatzker`` is None for an unlabeled image (empty cell or tie)."""

    row: int
    file: str
    laterality: str | None
    schatzker: int | None
    readers: Mapping[str, int] = field(default_factory=dict)
    # "explicit" | "majority" | "single_reader" | "unlabeled" | "tie" | "conflict"
    source: str = "explicit"

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.file, self.laterality)


@dataclass(frozen=True, kw_only=True)
class Adjudication:
    """A key whose label a person must decide: readers tied, or duplicate rows disagree."""

    row: int
    file: str
    laterality: str | None
    candidates: tuple[int, ...]
    votes: Mapping[str, int]
    reason: str  # "tie" | "conflicting duplicate"

    def __str__(self) -> str:
        lat = f" ({self.laterality})" if self.laterality else ""
        votes = ", ".join(f"{k}={v}" for k, v in self.votes.items())
        return f"row {self.row}: {self.file}{lat}: {self.reason} between {list(self.candidates)} ({votes})"


@dataclass(frozen=True, kw_only=True)
class LabelTable:
    """The parsed CSV: usable rows, counted problems, the adjudication list."""

    path: Path | None
    data_dir: Path
    rows: tuple[LabelRow, ...]
    problems: tuple[LabelProblem, ...] = ()
    adjudication: tuple[Adjudication, ...] = ()
    readers: tuple[str, ...] = ()
    encoding: str = "utf-8"
    ignored_columns: tuple[str, ...] = ()
    rows_read: int = 0
    explicit_overrides: int = 0  # rows whose explicit label differs from the readers' majority

    @classmethod
    def empty(cls, data_dir: str | Path) -> LabelTable:
        """No labels CSV: every file of the data folder is unlabeled."""
        return cls(path=None, data_dir=Path(data_dir), rows=())

    def get(self, file: str, laterality: str | None = None) -> LabelRow | None:
        return self._by_key.get((normalize_file(file), laterality))

    @property
    def labeled(self) -> list[LabelRow]:
        return [r for r in self.rows if r.schatzker is not None]

    @cached_property
    def _by_key(self) -> dict[tuple[str, str | None], LabelRow]:
        return {r.key: r for r in self.rows}

    def summary(self) -> dict:
        """Counts for a run's summary: rows, labels per class, problems per reason."""
        labeled = self.labeled
        classes = Counter(r.schatzker for r in labeled)
        return {
            "csv": self.path.name if self.path else None,  # not its folder: shared in reports
            "encoding": self.encoding,
            "rows_read": self.rows_read,
            "usable_rows": len(self.rows),
            "labeled": len(labeled),
            "unlabeled": sum(r.source == "unlabeled" for r in self.rows),
            "adjudication": len(self.adjudication),
            "problems": len(self.problems),
            "problems_by_reason": dict(sorted(Counter(p.reason for p in self.problems).items())),
            "classes": {k: classes.get(k, 0) for k in SCHATZKER_CLASSES},
            "binary": {
                "no_fracture": classes.get(0, 0),
                "fracture": sum(v for k, v in classes.items() if k != 0),
            },
            "label_source": dict(sorted(Counter(r.source for r in self.rows).items())),
            "readers": list(self.readers),
            "explicit_overrides_readers": self.explicit_overrides,
            "ignored_columns": list(self.ignored_columns),
        }


def consensus(labels: Iterable[int]) -> int | None:
    """Majority (plurality) of several readers' labels; None when the top count is shared.

    ``[2, 2, 3] -> 2``, ``[0, 1, 1, 2] -> 1``, ``[2, 3] -> None`` (tie: adjudicate),
    ``[4] -> 4``. Raises ``ValueError`` for no labels at all (that is an unlabeled image,
    not a tie).
    """
    counts = Counter(int(v) for v in labels)
    if not counts:
        raise ValueError("consensus of no labels: the image is unlabeled, not tied")
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def tied_labels(labels: Iterable[int]) -> tuple[int, ...]:
    """The labels that share the top count (the candidates an adjudicator chooses from)."""
    counts = Counter(int(v) for v in labels)
    top = max(counts.values(), default=0)
    return tuple(sorted(k for k, v in counts.items() if v == top))


def normalize_file(text: str) -> str:
    """``./dicom\\a.dcm`` -> ``dicom/a.dcm`` (a POSIX path relative to the data folder)."""
    text = text.strip().replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    return "/".join(parts)


def escapes_data_dir(text: str) -> bool:
    """True for absolute paths (POSIX, Windows drive or UNC) and any ``..`` component."""
    raw = text.strip()
    if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).is_absolute():
        return True
    if PureWindowsPath(raw).drive or raw.startswith(("/", "\\")):
        return True
    return ".." in raw.replace("\\", "/").split("/")


def parse_schatzker(text: str) -> tuple[int | None, str | None]:
    """``"2"`` / ``"2.0"`` -> (2, None); ``""`` -> (None, None); bad -> (None, reason)."""
    t = text.strip()
    if not t:
        return None, None
    try:
        x = float(t)
    except ValueError:
        return None, "free_text"
    if not math.isfinite(x):
        return None, "free_text"
    if x != int(x) or int(x) not in SCHATZKER_CLASSES:
        return None, "out_of_range"
    return int(x), None


def parse_laterality(text: str) -> tuple[str | None, bool]:
    """``"l"`` / ``"Left"`` -> ("L", True); ``""`` -> (None, True); other -> (None, False)."""
    t = text.strip().upper()
    return LATERALITIES.get(t), not t or t in LATERALITIES


def _decode(raw: bytes, path: Path) -> tuple[str, str]:
    """UTF-8 (with or without BOM); otherwise keep bad bytes as surrogates for per-row reports."""
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise LabelsError(path, "the CSV is UTF-32 encoded; save it as UTF-8 (CSV UTF-8)")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LabelsError(path, "the CSV is UTF-16 encoded; save it as UTF-8 (CSV UTF-8)")
    head = raw[:4096]
    if head.count(b"\x00") > len(head) // 8:  # UTF-16/32 text is a quarter to half NULs
        raise LabelsError(
            path,
            "the CSV holds NUL bytes: UTF-16 or UTF-32 without a byte-order mark, or not a "
            "text file at all; save it as UTF-8 (CSV UTF-8)",
        )
    bom = raw.startswith(b"\xef\xbb\xbf")
    body = raw[3:] if bom else raw
    try:
        return body.decode("utf-8"), "utf-8-sig" if bom else "utf-8"
    except UnicodeDecodeError:
        # Keep going row by row: bad bytes become surrogates, and each row that holds
        # one is reported by number instead of refusing the whole file.
        return body.decode("utf-8", errors="surrogateescape"), "invalid"


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _show_bad(text: str) -> str:
    """The cell as a user would see it in a Latin-1 editor (bad bytes decoded as Latin-1)."""
    return text.encode("utf-8", errors="surrogateescape").decode("latin-1")


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _column_name(name: str) -> str:
    text = unicodedata.normalize("NFKC", name).strip().lower()
    return text.removeprefix("\ufeff")


def load_labels(csv_path: str | Path, data_dir: str | Path) -> LabelTable:
    """Read and check a labels CSV against the data folder; see the module docstring."""
    path, data_dir = Path(csv_path), Path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LabelsError(
            path, "labels CSV not found; pass --labels or put labels.csv in the data folder"
        ) from None
    except OSError as e:
        raise LabelsError(path, f"cannot read the labels CSV ({e.strerror or e})") from e
    text, encoding = _decode(raw, path)
    if not text.strip():
        raise LabelsError(
            path, "the labels CSV is empty (expected a header: file,schatzker[,laterality])"
        )
    first_line = text.splitlines()[0]
    if _has_bad_bytes(first_line):
        raise LabelsError(path, "the header is not UTF-8; save the CSV as UTF-8 (CSV UTF-8)")
    offset = 0  # lines before the header
    delimiter = _delimiter(first_line)
    if re.fullmatch(r"sep=.", first_line.strip(), flags=re.IGNORECASE):
        # Excel's "sep=;" hint line: it names the delimiter and precedes the header.
        delimiter, offset = first_line.strip()[4], 1
        text = text.split("\n", 1)[1] if "\n" in text else ""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [_column_name(h) for h in next(reader)]
    except (csv.Error, StopIteration) as e:
        why = str(e) or "nothing after the sep= line"
        raise LabelsError(path, f"the header row cannot be read ({why})") from e
    columns = _check_header(header, path)
    builder = _TableBuilder(path=path, data_dir=data_dir, columns=columns, encoding=encoding)
    last_line = reader.line_num + offset
    try:
        for fields in reader:
            row_number = last_line + 1
            last_line = reader.line_num + offset
            builder.add(row_number, fields)
    except csv.Error as e:
        raise LabelsError(path, f"row {last_line + 1}: not valid CSV ({e})") from e
    return builder.build()


@dataclass(frozen=True)
class _Columns:
    header: tuple[str, ...]
    file: int
    schatzker: int | None
    laterality: int | None
    readers: tuple[tuple[str, int], ...]  # (reader name, column index)
    ignored: tuple[str, ...]


def _check_header(header: Sequence[str], path: Path) -> _Columns:
    dupes = sorted(n for n, c in Counter(header).items() if c > 1 and n)
    if dupes:
        raise LabelsError(path, f"column(s) {', '.join(dupes)} appear more than once in the header")
    if "file" not in header:
        close = difflib.get_close_matches("file", header, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LabelsError(
            path,
            f"no 'file' column{hint}; the header is {','.join(header)!r}, expected file,schatzker[,laterality]",
        )
    readers = tuple(
        (name[len(READER_PREFIX) :], i)
        for i, name in enumerate(header)
        if name.startswith(READER_PREFIX) and len(name) > len(READER_PREFIX)
    )
    if "schatzker" not in header and not readers:
        close = difflib.get_close_matches("schatzker", header, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LabelsError(path, f"no 'schatzker' column and no schatzker_<reader> columns{hint}")
    known = {"file", "schatzker", "laterality"} | {f"{READER_PREFIX}{r}" for r, _ in readers}
    return _Columns(
        header=tuple(header),
        file=header.index("file"),
        schatzker=header.index("schatzker") if "schatzker" in header else None,
        laterality=header.index("laterality") if "laterality" in header else None,
        readers=readers,
        ignored=tuple(h for h in header if h not in known),
    )


@dataclass
class _TableBuilder:
    path: Path
    data_dir: Path
    columns: _Columns
    encoding: str
    rows: dict[tuple[str, str | None], LabelRow] = field(default_factory=dict)
    problems: list[LabelProblem] = field(default_factory=list)
    adjudication: dict[tuple[str, str | None], Adjudication] = field(default_factory=dict)
    rows_read: int = 0
    overrides: int = 0

    def problem(self, row: int, file: str | None, reason: str, message: str) -> None:
        self.problems.append(
            LabelProblem(row=row, file=file, reason=reason, message=message, source=self.path.name)
        )

    def add(self, row: int, fields: list[str]) -> None:
        self.rows_read += 1
        cols = self.columns
        if not self._well_formed(row, fields):
            return
        fields = fields + [""] * (len(cols.header) - len(fields))
        file = self._file(row, fields)
        if file is None:
            return
        laterality = None
        if cols.laterality is not None:
            laterality, ok = parse_laterality(fields[cols.laterality])
            if not ok:
                self.problem(
                    row,
                    file,
                    "bad_laterality",
                    f"laterality {fields[cols.laterality].strip()!r} of {file}: expected L, R or empty",
                )
                return
        explicit = None
        if cols.schatzker is not None:
            ok, explicit = self._label(row, file, "schatzker", fields[cols.schatzker])
            if not ok:
                return
        readers: dict[str, int] = {}
        for name, index in cols.readers:
            ok, value = self._label(row, file, f"{READER_PREFIX}{name}", fields[index])
            if not ok:
                return
            if value is not None:
                readers[name] = value
        self._keep(row, file, laterality, explicit, readers)

    def _well_formed(self, row: int, fields: list[str]) -> bool:
        """Whether a row is one CSV record of readable text that fits the header; else
        False, with the problem recorded."""
        if not any(f.strip() for f in fields):
            self.problem(row, None, "empty_row", "empty row (no file, no label)")
            return False
        if any("\n" in f or "\r" in f for f in fields):
            lines = 1 + max(
                len(f.rstrip("\r\n").replace("\r\n", "\n").replace("\r", "\n").split("\n")) - 1
                for f in fields
            )
            self.problem(
                row,
                None,
                "bad_quoting",
                f"a quoted value spans {lines} lines from this row on (an unbalanced '\"'); "
                f"those lines are read as one value and ignored: close the quote",
            )
            return False
        if _has_bad_bytes("".join(fields)):
            shown = ",".join(_show_bad(f) for f in fields)
            self.problem(
                row,
                None,
                "encoding",
                f"not valid UTF-8 ({shown!r} read as Latin-1); save the CSV as UTF-8 (CSV UTF-8)",
            )
            return False
        header = self.columns.header
        extra = fields[len(header) :]
        if any(f.strip() for f in extra):
            self.problem(
                row,
                None,
                "extra_fields",
                f"{len(fields)} values but the header has {len(header)} columns "
                f"(extra: {', '.join(repr(f) for f in extra if f.strip())}); quote values that contain the delimiter",
            )
            return False
        return True

    def _file(self, row: int, fields: list[str]) -> str | None:
        """The row's file, relative to the data folder, when it is a file there; else None,
        with the problem recorded."""
        raw_file = fields[self.columns.file]
        if not raw_file.strip():
            self.problem(row, None, "empty_file", f"no file name (values: {','.join(fields)!r})")
            return None
        if escapes_data_dir(raw_file):
            self.problem(
                row,
                raw_file,
                "path_escape",
                f"{raw_file.strip()!r} points outside the data folder; give the path relative to it, without '..'",
            )
            return None
        file = normalize_file(raw_file)
        try:
            exists = (self.data_dir / file).is_file()
        except (OSError, ValueError) as e:  # a name too long, a NUL byte, ...
            self.problem(
                row,
                file,
                "unknown_file",
                f"{file[:80]!r} cannot be a file in the data folder ({getattr(e, 'strerror', None) or e})",
            )
            return None
        if not exists:
            self.problem(row, file, "unknown_file", f"{file} is not a file in the data folder")
            return None
        return file

    def _label(self, row: int, file: str, column: str, text: str) -> tuple[bool, int | None]:
        """(True, label or None when empty), or (False, None) after recording a problem."""
        value, reason = parse_schatzker(text)
        if reason is None:
            return True, value
        what = "is not a number" if reason == "free_text" else "is outside 0..6"
        self.problem(
            row,
            file,
            reason,
            f"{column} {text.strip()!r} of {file} {what}; use a Schatzker grade 0..6, "
            "or leave it empty for an unlabeled image",
        )
        return False, None

    def _keep(
        self,
        row: int,
        file: str,
        laterality: str | None,
        explicit: int | None,
        readers: dict[str, int],
    ) -> None:
        key = (file, laterality)
        adjudicate: Adjudication | None = None
        if explicit is not None:
            value, source = explicit, "explicit"
            if readers and consensus(readers.values()) not in (None, explicit):
                self.overrides += 1
        elif not readers:
            value, source = None, "unlabeled"
        elif len(readers) == 1:
            value, source = next(iter(readers.values())), "single_reader"
        else:
            value = consensus(readers.values())
            source = "majority" if value is not None else "tie"
            if value is None:
                adjudicate = Adjudication(
                    row=row,
                    file=file,
                    laterality=laterality,
                    candidates=tied_labels(readers.values()),
                    votes=dict(readers),
                    reason="tie",
                )
        new = LabelRow(
            row=row,
            file=file,
            laterality=laterality,
            schatzker=value,
            readers=readers,
            source=source,
        )
        first = self.rows.get(key)
        if first is not None:
            self._duplicate(first, new)
            return
        self.rows[key] = new
        if adjudicate is not None:
            self.adjudication[key] = adjudicate

    def _duplicate(self, first: LabelRow, new: LabelRow) -> None:
        lat = f" (laterality {new.laterality})" if new.laterality else ""
        conflict = (
            first.source != "conflict"
            and None not in (first.schatzker, new.schatzker)
            and first.schatzker != new.schatzker
        )
        if not conflict:

            def shown(r: LabelRow) -> str:
                return "no label" if r.schatzker is None else f"label {r.schatzker}"

            self.problem(
                new.row,
                new.file,
                "duplicate_key",
                f"{new.file}{lat} was already given on row {first.row} ({shown(first)}); "
                f"this row ({shown(new)}) is ignored",
            )
            return
        self.problem(
            new.row,
            new.file,
            "duplicate_key",
            f"{new.file}{lat} was already given on row {first.row} with a different label "
            f"({first.schatzker} vs {new.schatzker}); the image is unlabeled until adjudicated",
        )
        candidates = tuple(sorted({v for v in (first.schatzker, new.schatzker) if v is not None}))
        votes = {f"row {first.row}": first.schatzker, f"row {new.row}": new.schatzker}
        self.rows[first.key] = replace(first, schatzker=None, source="conflict")
        self.adjudication[first.key] = Adjudication(
            row=first.row,
            file=first.file,
            laterality=first.laterality,
            candidates=candidates,
            votes={k: v for k, v in votes.items() if v is not None},
            reason="conflicting duplicate",
        )

    def build(self) -> LabelTable:
        return LabelTable(
            path=self.path,
            data_dir=self.data_dir,
            rows=tuple(sorted(self.rows.values(), key=lambda r: r.row)),
            problems=tuple(self.problems),
            adjudication=tuple(sorted(self.adjudication.values(), key=lambda a: a.row)),
            readers=tuple(name for name, _ in self.columns.readers),
            encoding=self.encoding,
            ignored_columns=self.columns.ignored,
            rows_read=self.rows_read,
            explicit_overrides=self.overrides,
        )
