"""Robustness in one table: bad input handled, fuzz findings, PHI found, kill points survived.

Rows:

- malformed DICOM files tried / handled (the expected DicomError subclass, or read fine),
- labels-CSV cases tried / handled (each bad row named and counted, or one LabelsError),
- search-space fuzz cases tried / handled (a valid space or a SpaceError naming the file),
- atheris fuzz executions / crashes (exceptions other than DicomError),
- PHI strings searched / found after a search and promote on the phantom (must be 0),
- kill points tried / resumed / completed trials lost / duplicated, from
  ``benchmarks/robustness_faults.py`` (``kill_resume``) when that module is present.

    python benchmarks/robustness.py [--fuzz-seconds 60] [--kill-points 10] [--skip-kill]
                                    [--skip-privacy] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# tests/ first: its ``robustness`` package (the corpora) shadows this script's own name;
# this folder stays on the path after it for ``fuzz_dicom`` and ``robustness_faults``.
sys.path.insert(0, str(ROOT / "tests"))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RADSEARCH_SALT", "robustness-benchmark")


def malformed_row(work: Path) -> dict[str, Any]:
    from robustness.malformed import write_corpus

    from pipeline.dicom import DicomError, read_radiograph

    tried = handled = 0
    wrong: list[str] = []
    for variant, path in write_corpus(work / "malformed"):
        if variant.expected is None:
            continue
        tried += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                read_radiograph(path)
            got = "reads fine"
        except DicomError as e:
            got = type(e).__name__
        except BaseException as e:
            got = f"{type(e).__name__} (not a DicomError)"
        if got == variant.outcome:
            handled += 1
        else:
            wrong.append(f"{variant.name}: {got}, expected {variant.outcome}")
    return {"tried": tried, "handled": handled, "unhandled": wrong}


def labels_row(work: Path) -> dict[str, Any]:
    from robustness.test_labels_csv import FILE_CASES, ROW_CASES

    from pipeline.data import LabelsError, load_labels

    data = work / "labels"
    (data / "dicom").mkdir(parents=True, exist_ok=True)
    for name in ("a.dcm", "b.dcm", "c.dcm", "rodilla_año.dcm"):
        (data / "dicom" / name).write_bytes(b"")
    csv_path = data / "labels.csv"
    tried = handled = 0
    wrong: list[str] = []
    for name, (content, expected, usable) in ROW_CASES.items():
        tried += 1
        csv_path.write_bytes(content.encode() if isinstance(content, str) else content)
        try:
            table = load_labels(csv_path, data)
            got = {p.row: p.reason for p in table.problems}
            ok = (
                got == expected
                and len(table.rows) == usable
                and table.rows_read == len(table.rows) + len(table.problems)
                and all(str(p).startswith(f"labels.csv: row {p.row}: ") for p in table.problems)
            )
        except Exception as e:
            ok, got = False, f"{type(e).__name__}: {e}"
        handled += ok
        if not ok:
            wrong.append(f"{name}: {got}")
    for name, (content, fragment) in FILE_CASES.items():
        tried += 1
        csv_path.write_bytes(content.encode() if isinstance(content, str) else content)
        try:
            load_labels(csv_path, data)
            ok, got = False, "read without error"
        except LabelsError as e:
            ok, got = fragment in str(e) and str(e).startswith(str(csv_path)), str(e)
        except Exception as e:
            ok, got = False, f"{type(e).__name__}: {e}"
        handled += ok
        if not ok:
            wrong.append(f"{name}: {got}")
    return {"tried": tried, "handled": handled, "unhandled": wrong}


def space_row(work: Path, n: int = 300) -> dict[str, Any]:
    from robustness.space_fuzz import UNSAFE_YAML, mutations

    from search.space import SpaceError, load_space

    folder = work / "spaces"
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "constructed"
    cases = [(d, b) for d, b in mutations(n, seed=0)]
    cases += [(f"unsafe #{i}", t.format(marker=marker).encode()) for i, t in enumerate(UNSAFE_YAML)]
    tried = handled = 0
    wrong: list[str] = []
    for i, (description, data) in enumerate(cases):
        tried += 1
        path = folder / f"case{i:03d}.yaml"
        path.write_bytes(data)
        try:
            load_space(path)
            ok = not description.startswith("unsafe")
        except SpaceError as e:
            ok = all(line.startswith(f"{path}: ") for line in str(e).splitlines())
        except BaseException as e:
            ok = False
            description += f" -> {type(e).__name__}: {e}"
        handled += ok
        if not ok:
            wrong.append(description)
    if marker.exists():
        wrong.append("a YAML tag constructed an object")
        handled -= 1
    return {"tried": tried, "handled": handled, "unhandled": wrong}


def privacy_row(work: Path) -> dict[str, Any]:
    from robustness.phi import phi_strings, scan_tree, search_and_promote

    from pipeline.synth import generate

    phantom = work / "phantom"
    generate(phantom, n=60, seed=7, size=256)
    experiment, cache = search_and_promote(phantom, work / "privacy")
    phi = phi_strings(sorted((phantom / "dicom").glob("*.dcm")))
    scanned, hits = scan_tree([experiment, cache], phi, exclude=[phantom])
    return {
        "searched": len(phi),
        "files": scanned,
        "found": len(hits),
        "hits": [f"{h.file.name}: {h.value} ({h.source})" for h in hits[:10]],
    }


def kill_row(points: int) -> dict[str, Any] | None:
    try:
        from robustness_faults import kill_resume  # type: ignore[import-not-found]
    except ImportError:
        return None
    return dict(kill_resume(points=points, seed=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fuzz-seconds", type=float, default=60.0, help="atheris time (60)")
    parser.add_argument("--kill-points", type=int, default=10, help="SIGKILL points (10)")
    parser.add_argument("--skip-kill", action="store_true", help="skip the kill/resume row")
    parser.add_argument(
        "--skip-privacy", action="store_true", help="skip the search + promote scan"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    from fuzz_dicom import run_fuzz

    work = Path(tempfile.mkdtemp(prefix="robustness-"))
    os.environ.setdefault("RADSEARCH_CACHE", str(work / "cache"))
    os.environ.setdefault("XDG_CONFIG_HOME", str(work / "xdg"))
    figures: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def timed(key: str, fn: Any, *a: Any) -> None:
        t0 = time.perf_counter()
        figures[key] = fn(*a)
        timings[key] = round(time.perf_counter() - t0, 1)

    timed("malformed", malformed_row, work)
    timed("labels", labels_row, work)
    timed("spaces", space_row, work)
    timed("fuzz", lambda: run_fuzz(args.fuzz_seconds, crash_dir=work / "crashes"))
    if not args.skip_privacy:
        timed("privacy", privacy_row, work)
    if not args.skip_kill:
        timed("kill", kill_row, args.kill_points)
    figures["seconds"] = timings

    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return 0
    rows = [
        ("malformed DICOM files", "tried / handled", _pair(figures["malformed"])),
        ("labels-CSV cases", "tried / handled", _pair(figures["labels"])),
        ("search-space fuzz cases", "tried / handled", _pair(figures["spaces"])),
        (
            "atheris fuzz of the reader",
            "executions / crashes",
            f"{figures['fuzz']['executions']} / {figures['fuzz']['crashes']}",
        ),
    ]
    if "privacy" in figures:
        p = figures["privacy"]
        rows.append(
            (
                "PHI strings after search + promote",
                "searched / found",
                f"{p['searched']} / {p['found']}",
            )
        )
    else:
        rows.append(("PHI strings after search + promote", "searched / found", "skipped"))
    kill = figures.get("kill")
    label = "kill points: tried / resumed / lost / duplicated / invalid state files"
    if args.skip_kill:
        rows.append(("SIGKILL of the driver", label, "skipped"))
    elif kill is None:
        rows.append(("SIGKILL of the driver", label, "not available"))
    else:
        rows.append(
            (
                "SIGKILL of the driver",
                label,
                " / ".join(
                    str(kill.get(k, "?"))
                    for k in ("kill_points", "resumed", "lost", "duplicated", "invalid_state_files")
                ),
            )
        )
    print("| check | measure | result |\n| --- | --- | --- |")
    for name, measure, value in rows:
        print(f"| {name} | {measure} | {value} |")
    problems = [
        f"{key}: {item}"
        for key in ("malformed", "labels", "spaces")
        for item in figures[key]["unhandled"]
    ]
    problems += [f"fuzz: {s}" for s in figures["fuzz"]["signatures"]]
    problems += [f"privacy: {h}" for h in figures.get("privacy", {}).get("hits", [])]
    for line in problems:
        print(f"- {line}")
    print(f"\nfuzz: {figures['fuzz']['executions_per_s']} executions/s; seconds per row: {timings}")
    return 0


def _pair(row: dict[str, Any]) -> str:
    return f"{row['tried']} / {row['handled']}"


if __name__ == "__main__":
    sys.exit(main())
