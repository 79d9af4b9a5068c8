"""``python -m pipeline split``: check the labels, filter views, write patient-grouped splits.

Reads only DICOM headers (no pixel decoding), so it runs in seconds on a large folder.
The split is made from the same units a trial uses (one per labeled row, plus one per
unlabeled file, see :func:`pipeline.data.split_units`), so for the same data, labels
and settings it matches the split of a trial that filters views by their tags
(``scope_policy: tags``). A trial's default also decides every image from its pixels,
which needs them decoded: ``python -m pipeline preprocess`` makes and lists that decision.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.data.items import split_units
from pipeline.data.labels import LabelsError, LabelTable, load_labels
from pipeline.data.splits import STRATIFY, SplitsError, make_splits
from pipeline.data.views import is_frontal_knee
from pipeline.dicom import DicomError, candidate_files, read_meta
from pipeline.registry import UnknownNameError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, type=Path, help="data folder (DICOM files, any depth)"
    )
    parser.add_argument(
        "--labels", type=Path, default=None, help="labels CSV (default: DATA/labels.csv if present)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the splits CSV here")
    parser.add_argument(
        "--test", type=float, default=0.15, help="test fraction of labeled items (0.15)"
    )
    parser.add_argument(
        "--val", type=float, default=0.15, help="validation fraction of labeled items (0.15)"
    )
    parser.add_argument(
        "--folds", type=int, default=None, help="K-fold over train+val instead of one val set"
    )
    parser.add_argument(
        "--leave-site-out",
        default=None,
        metavar="SITE",
        help="site key whose patients form the test set",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (0)")
    parser.add_argument(
        "--stratify", choices=STRATIFY, default="schatzker", help="classes to stratify by"
    )
    parser.add_argument(
        "--strict-views",
        action="store_true",
        help="also flag images whose view or body part is not recorded",
    )
    parser.add_argument(
        "--max-problems",
        type=int,
        default=50,
        help="print at most this many problems (50; 0 = all)",
    )
    parser.add_argument(
        "--fail-on-problems", action="store_true", help="exit 1 when any label row is unusable"
    )


def folder_metas(
    data_dir: Path, *, skip: Iterable[Path] = ()
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """De-identified header meta of every DICOM file under ``data_dir`` (by relative path),
    and one line per file that could not be read."""
    skipped = {p.resolve() for p in skip}
    metas: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for path in sorted(candidate_files(data_dir)):
        if path.resolve() in skipped:
            continue
        try:
            metas[path.relative_to(data_dir).as_posix()] = dict(read_meta(path))
        except DicomError as e:
            errors.append(str(e))
    return metas, errors


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_labels(table: LabelTable, max_problems: int) -> None:
    s = table.summary()
    print(f"labels: {s['csv']} ({s['encoding']})")
    print(
        f"  rows read {s['rows_read']}, usable {s['usable_rows']}: labeled {s['labeled']}, "
        f"unlabeled {s['unlabeled']}, adjudication {s['adjudication']}; problems {s['problems']}"
    )
    classes = ", ".join(f"{k}: {v}" for k, v in s["classes"].items())
    print(
        f"  schatzker {classes}; binary fracture {s['binary']['fracture']}, none {s['binary']['no_fracture']}"
    )
    if s["readers"]:
        print(f"  readers {', '.join(s['readers'])}; label source {s['label_source']}")
        if s["explicit_overrides_readers"]:
            print(
                f"  {s['explicit_overrides_readers']} explicit label(s) differ from the readers' majority (explicit wins)"
            )
    if s["ignored_columns"]:
        print(f"  ignored columns: {', '.join(s['ignored_columns'])}")
    unlabeled_rows = [r.row for r in table.rows if r.source == "unlabeled"]
    if unlabeled_rows:
        shown = ", ".join(str(r) for r in unlabeled_rows[:20]) + (
            ", ..." if len(unlabeled_rows) > 20 else ""
        )
        print(f"  rows with an empty label (kept as unlabeled images): {shown}")
    _print_problems("label problems", table.problems, s["problems_by_reason"], max_problems)
    if table.adjudication:
        print(
            f"adjudication list ({len(table.adjudication)}): these images stay unlabeled until decided"
        )
        for a in table.adjudication:
            print(f"  {a}")


def _print_problems(
    title: str, problems: Iterable[Any], by_reason: Mapping[str, int], max_problems: int
) -> None:
    problems = list(problems)
    if not problems:
        return
    print(f"{title} ({len(problems)}): " + ", ".join(f"{k} {v}" for k, v in by_reason.items()))
    shown = problems if max_problems <= 0 else problems[:max_problems]
    for p in shown:
        print(f"  {p}")
    if len(shown) < len(problems):
        print(f"  ... {len(problems) - len(shown)} more (--max-problems 0 prints all)")


def _print_view_reasons(checks: Iterable[tuple[bool, str]]) -> None:
    """One line per decision kind with the tag values behind it (``138 keep frontal knee: AP 115, ...``)."""
    groups: dict[tuple[bool, str], Counter[str]] = {}
    for ok, reason in checks:
        kind, _, detail = reason.partition(" (")
        groups.setdefault((ok, kind), Counter())[detail.removesuffix(")")] += 1
    for (ok, kind), details in sorted(
        groups.items(), key=lambda kv: (not kv[0][0], -kv[1].total())
    ):
        shown = [f"{d} {n}" for d, n in details.most_common(6) if d]
        more = ", ..." if len(details) > 6 else ""
        tail = f": {', '.join(shown)}{more}" if shown else ""
        print(f"  {details.total():6d}  {'keep' if ok else 'flag'}  {kind}{tail}")


def main(args: argparse.Namespace) -> int:
    data_dir: Path = args.data
    if not data_dir.is_dir():
        print(f"python -m pipeline split: {data_dir} is not a folder", file=sys.stderr)
        return 2
    labels_path = args.labels
    if labels_path is None and (data_dir / "labels.csv").is_file():
        labels_path = data_dir / "labels.csv"
    try:
        table = (
            load_labels(labels_path, data_dir)
            if labels_path is not None
            else LabelTable.empty(data_dir)
        )
    except LabelsError as e:
        print(f"python -m pipeline split: {e}", file=sys.stderr)
        return 2
    if labels_path is None:
        print(
            f"labels: none (no {data_dir / 'labels.csv'}; pass --labels): every image is unlabeled"
        )
    else:
        _print_labels(table, args.max_problems)

    metas, unreadable = folder_metas(data_dir, skip=[labels_path] if labels_path else [])
    checks = {f: is_frontal_knee(m, strict=args.strict_views) for f, m in metas.items()}
    frontal = sum(ok for ok, _ in checks.values())
    print(
        f"images: {len(metas)} readable, {len(unreadable)} unreadable; view filter keeps {frontal}"
    )
    _print_view_reasons(checks.values())
    print(
        "  (tags only: a trial also decides every image from its pixels, scope_policy 'pixels' "
        "by default; `python -m pipeline preprocess --data DIR` lists the files it keeps out)"
    )
    for line in unreadable[: args.max_problems or None]:
        print(f"  unreadable: {line}")
    unused = _unused_label_rows(table, metas, checks, args.max_problems)
    units = split_units(table, metas, strict_views=args.strict_views)
    sites = Counter(u.site for u in units if u.site is not None)
    if len(sites) > 1 or args.leave_site_out:
        print(
            "sites (for --leave-site-out): "
            + ", ".join(f"{k} {v}" for k, v in sorted(sites.items()))
        )
    try:
        splits = make_splits(
            units,
            test=args.test,
            val=args.val,
            folds=args.folds,
            leave_site_out=args.leave_site_out,
            seed=args.seed,
            stratify=args.stratify,
        )
    except (SplitsError, UnknownNameError) as e:
        print(f"python -m pipeline split: {e}", file=sys.stderr)
        return 2
    rows = [
        [name, c["items"], c["patients"], c["labeled"], c["fracture"], *c["classes"].values()]
        for name, c in splits.counts().items()
    ]
    header = ["split", "items", "patients", "labeled", "fracture", *[f"s{k}" for k in range(7)]]
    print(_table(rows, header))
    if args.out is not None:
        splits.to_csv(args.out)
        print(f"wrote {args.out}")
    if args.fail_on_problems and (table.problems or unused):
        return 1
    return 0


def _unused_label_rows(
    table: LabelTable,
    metas: Mapping[str, Any],
    checks: Mapping[str, tuple[bool, str]],
    max_problems: int,
) -> list[Any]:
    """Print, and return, the label rows whose labels go unused: their file has no
    readable header, or the view filter flags its image."""
    carrying = [r for r in table.rows if r.source != "unlabeled"]  # a label (or a tie)
    missing = [r for r in carrying if r.file not in metas]
    if missing:
        print(
            f"label rows whose file has no readable header ({len(missing)}): their labels are not used"
        )
        for r in missing[: max_problems or None]:
            print(f"  row {r.row}: {r.file}")
    flagged = [r for r in carrying if r.file in checks and not checks[r.file][0]]
    if flagged:
        print(
            f"label rows on images the view filter flags ({len(flagged)}): their labels are not used"
        )
        for r in flagged[: max_problems or None]:
            print(f"  row {r.row}: {r.file}: {checks[r.file][1]}")
    return missing + flagged
