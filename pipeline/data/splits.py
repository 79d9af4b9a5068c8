"""Patient-grouped, class-stratified splits with a held-out test set.

Every image of a patient lands in the same split (the reference project split images
and leaked patients across them). The assignment is made per *patient* from the
labeled items' class counts, so:

- the **test** set is drawn first (``test`` fraction of the labeled items), from the
  labeled patients only, and does not depend on ``val`` or ``folds``: the search
  never sees it, whatever the validation scheme;
- the rest is split into **train** / **val**, or, with ``folds=K``, into K folds
  (split ``"trainval"`` with a fold number; fold k's val set is fold k and its train
  set the other folds), for small data sets;
- with ``leave_site_out=SITE``, every patient with an image from that site is the
  test set (``test`` is then ignored), and no image of that site reaches training;
- **unlabeled** items never enter train/val/test: they form the unlabeled training
  pool, except those of test patients (and of a left-out site), which are
  ``"excluded"`` so that no test patient is seen during training, even unlabeled.

Stratification: patients are placed greedily, rarest class first (iterative
stratification in the spirit of Sechidis et al. 2011 and scikit-learn's
``StratifiedGroupKFold``), each into the split where it most lowers a chi-square
distance between the splits' class counts and their targets. The fracture / no
fracture share comes first: with ``stratify="schatzker"`` the seven grades enter at a
fifth of the weight, because grading every split by the rare grades alone sends each
rare grade wholly to train and can leave the test set without a single fracture.
Every requested split gets at least one patient when there are enough. The result
depends only on the labeled items and the seed, not on their order, nor on the
unlabeled items.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_write_text
from pipeline.registry import UnknownNameError, check_choice

SPLITS = ("train", "val", "test", "trainval", "unlabeled", "excluded")
STRATIFY = ("schatzker", "binary")
CSV_COLUMNS = ("file", "laterality", "patient", "site", "label", "split", "fold")
_HEADER_PREFIX = "# radsearch splits "
SCHATZKER_WEIGHT = 0.2  # weight of the grade columns relative to fracture / no fracture


class SplitsError(ValueError):
    """Split settings that cannot be met, or a splits CSV that cannot be read."""


@dataclass(frozen=True)
class Assignment:
    split: str
    fold: int | None = None


@dataclass(frozen=True, kw_only=True)
class SplitRow:
    file: str
    laterality: str | None
    patient: str
    site: str | None
    label: int
    split: str
    fold: int | None


def stratified_group_assign(
    counts: np.ndarray,
    fractions: Sequence[float],
    rng: np.random.Generator,
    *,
    column_weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Assign groups to splits so each split's class counts approach its fraction.

    ``counts`` (G, K): items of each class (column) per group; ``fractions`` (S,) > 0;
    ``column_weights`` (K,), default all 1. Returns (G,) split indices. Groups are taken
    rarest column first (then larger first, ties in random order); each goes to the
    split where it most lowers the weighted chi-square distance between the splits'
    counts and their targets, ``sum_k w_k sum_s (n_sk - t_sk)^2 / t_sk`` with
    ``t_sk = fraction_s * total_k``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n_groups, n_cols = counts.shape
    f = np.asarray(fractions, dtype=np.float64)
    f = f / f.sum()
    w = np.ones(n_cols) if column_weights is None else np.asarray(column_weights, dtype=np.float64)
    total = counts.sum(0)  # (K,)
    target = f[:, None] * total[None, :]  # (S, K)
    weight = np.where(target > 0, w[None, :] / np.maximum(target, 1e-12), 0.0)  # (S, K)
    demand = target.copy()  # (S, K) target minus assigned
    rarity = np.where(counts > 0, total[None, :], np.inf).min(1)  # (G,)
    order = sorted(rng.permutation(n_groups), key=lambda g: (rarity[g], -counts[g].sum()))
    out = np.empty(n_groups, dtype=np.int64)
    for g in order:
        c = counts[g][None, :]  # (1, K)
        # cost decrease of adding the group to each split: sum_k w (d^2 - (d - c)^2) / t
        gain = np.round(((2.0 * demand - c) * c * weight).sum(1), 12)  # (S,)
        size = np.round(demand.sum(1), 9)  # (S,)
        best = max(range(len(f)), key=lambda s: (gain[s], size[s], -s))
        out[g] = best
        demand[best] -= counts[g]
    # A requested split left empty (few patients): give it the smallest group of the
    # split with the most groups, most common classes first, so it is never silently empty.
    for s in range(len(f)):
        members = np.bincount(out, minlength=len(f))
        if members[s] > 0 or n_groups < len(f):
            continue
        donor = int(members.argmax())
        pool = [g for g in order if out[g] == donor]
        out[min(pool, key=lambda g: (counts[g].sum(), -rarity[g]))] = s
    return out


class Splits:
    """Which split (and fold) each patient and item belongs to.

    ``splits[item_key]`` gives the :class:`Assignment` of an item given to
    :func:`make_splits`; :meth:`assign` places any item (for example the crops of a
    preprocessing run) by its patient, label and site; :meth:`select` filters a list.
    """

    def __init__(
        self,
        *,
        patients: Mapping[str, Assignment],
        rows: Sequence[SplitRow],
        folds: int | None = None,
        held_out_site: str | None = None,
        params: Mapping[str, Any] | None = None,
    ):
        self.patients = dict(patients)
        self.rows = list(rows)
        self.folds = folds
        self.held_out_site = held_out_site
        self.params = dict(params or {})
        self._by_key = {(r.file, r.laterality): Assignment(r.split, r.fold) for r in self.rows}

    def __getitem__(self, key: tuple[str, str | None]) -> Assignment:
        return self._by_key[key]

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self._by_key)

    def assign(self, item: Any) -> Assignment:
        """Place an item by its patient (labeled) or as unlabeled pool / excluded."""
        a = self.patients.get(item.patient)
        left_out = self.held_out_site is not None and item.site == self.held_out_site
        if item.label >= 0 and a is not None:
            return a
        # Unlabeled (or a label whose patient has no labeled split unit): never in
        # train/val/test; kept out of training entirely for test patients and a left-out site.
        if left_out or (a is not None and a.split == "test"):
            return Assignment("excluded")
        return Assignment("unlabeled")

    def select(self, items: Iterable[Any], split: str, *, fold: int | None = None) -> list[Any]:
        """The items of one split: ``"train"``, ``"val"``, ``"test"``, ``"unlabeled"``, ...

        With folds, ``"train"`` and ``"val"`` need ``fold`` (fold k's val set is fold k).
        """
        check_choice("split", split, SPLITS)
        if self.folds and split in ("train", "val"):
            if fold is None or not 0 <= fold < self.folds:
                raise SplitsError(
                    f"these splits have {self.folds} folds: pass fold=0..{self.folds - 1}"
                )

            def keep(a: Assignment) -> bool:
                return a.split == "trainval" and (a.fold == fold) == (split == "val")

        else:
            if fold is not None:
                raise SplitsError(
                    "fold is given but these splits have no folds (make_splits(folds=K))"
                )

            def keep(a: Assignment) -> bool:
                return a.split == split

        return [i for i in items if keep(self.assign(i))]

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per split (and per fold): items, patients, labels per class."""
        out: dict[str, dict[str, Any]] = {}
        groups: dict[str, list[SplitRow]] = defaultdict(list)
        for r in self.rows:
            groups[r.split].append(r)
            if r.fold is not None:
                groups[f"fold {r.fold}"].append(r)
        for name in sorted(groups, key=lambda n: (n.startswith("fold"), _order(n), n)):
            rows = groups[name]
            classes = Counter(r.label for r in rows if r.label >= 0)
            out[name] = {
                "items": len(rows),
                "patients": len({r.patient for r in rows}),
                "labeled": sum(classes.values()),
                "fracture": sum(v for k, v in classes.items() if k != 0),
                "classes": {k: classes.get(k, 0) for k in range(7)},
            }
        return out

    def to_csv(self, path: str | Path) -> Path:
        """Write the item table (atomically), with the settings on a first ``#`` line."""
        buf = io.StringIO()
        buf.write(_HEADER_PREFIX + json.dumps(self.params, sort_keys=True) + "\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        # a SplitRow's fields are the columns, in order; None is written as an empty cell
        writer.writerows(["" if v is None else v for v in astuple(r)] for r in self.rows)
        return atomic_write_text(path, buf.getvalue())

    @classmethod
    def read_csv(cls, path: str | Path) -> Splits:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SplitsError(f"{path}: cannot read the splits CSV ({e})") from e
        params: dict[str, Any] = {}
        lines = text.splitlines(keepends=True)
        if lines and lines[0].startswith(_HEADER_PREFIX):
            try:
                params = json.loads(lines[0][len(_HEADER_PREFIX) :])
            except json.JSONDecodeError as e:
                raise SplitsError(
                    f"{path}: row 1: the settings line is not valid JSON ({e})"
                ) from e
            lines = lines[1:]
        reader = csv.DictReader(io.StringIO("".join(lines)))
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SplitsError(f"{path}: missing column(s) {', '.join(missing)}")
        rows, patients = [], {}
        for n, rec in enumerate(reader, start=3 if params else 2):
            try:
                row = SplitRow(
                    file=rec["file"],
                    laterality=rec["laterality"] or None,
                    patient=rec["patient"],
                    site=rec["site"] or None,
                    label=int(rec["label"]),
                    split=check_choice("split", rec["split"], SPLITS),
                    fold=int(rec["fold"]) if rec["fold"] else None,
                )
            except (ValueError, UnknownNameError) as e:
                raise SplitsError(f"{path}: row {n}: {e}") from e
            rows.append(row)
            if row.split in ("train", "val", "test", "trainval"):
                a = Assignment(row.split, row.fold)
                if patients.setdefault(row.patient, a) != a:
                    raise SplitsError(
                        f"{path}: row {n}: patient {row.patient} is in {a.split} here and "
                        f"{patients[row.patient].split} on an earlier row"
                    )
        return cls(
            patients=patients,
            rows=rows,
            folds=params.get("folds"),
            held_out_site=params.get("leave_site_out"),
            params=params,
        )


def _order(name: str) -> int:
    return SPLITS.index(name) if name in SPLITS else len(SPLITS)


def make_splits(
    items: Iterable[Any],
    *,
    test: float = 0.15,
    val: float = 0.15,
    folds: int | None = None,
    leave_site_out: str | None = None,
    seed: int,
    stratify: str = "schatzker",
) -> Splits:
    """Split items by patient (see the module docstring).

    ``items``: objects with ``file``, ``laterality``, ``patient``, ``label`` (-1 =
    unlabeled) and ``site`` (``pipeline.data.Item``; for a split that does not depend on
    preprocessing, pass ``ItemSet.units``). ``test`` and ``val`` are fractions of the
    labeled items; with ``folds`` ``val`` is unused.
    """
    items = list(items)
    _check_settings(test=test, val=val, folds=folds, seed=seed, stratify=stratify)
    labeled = [i for i in items if i.label >= 0]
    patients, matrix, column_weights = _class_counts(labeled, stratify)
    if leave_site_out is not None:
        sites = sorted({str(i.site) for i in items if i.site is not None})
        check_choice("site", leave_site_out, sites)
        test_patients = {i.patient for i in labeled if i.site == leave_site_out}
        is_test = np.array([p in test_patients for p in patients], dtype=bool)
        val_share = val
    else:
        is_test = np.zeros(len(patients), dtype=bool)
        if test > 0 and patients:
            rng = np.random.default_rng(seed)
            is_test = _first_part(matrix, test, rng, column_weights)
        val_share = val / (1.0 - test) if test < 1.0 else 0.0
    assignment = {str(p): Assignment("test") for p in np.asarray(patients)[is_test]}
    rest = [p for p, t in zip(patients, is_test) if not t]
    rest_matrix = matrix[~is_test] if len(patients) else matrix
    rng_rest = np.random.default_rng([seed, 1])  # independent of how many draws the test split used
    if folds is not None:
        assignment |= _fold_assignment(rest, rest_matrix, folds, rng_rest, column_weights)
    else:
        is_val = np.zeros(len(rest), dtype=bool)
        if val_share > 0 and rest:
            is_val = _first_part(rest_matrix, val_share, rng_rest, column_weights)
        assignment |= {p: Assignment("val" if v else "train") for p, v in zip(rest, is_val)}
    params = {
        "seed": seed,
        "test": test if leave_site_out is None else None,
        "val": val if folds is None else None,
        "folds": folds,
        "leave_site_out": leave_site_out,
        "stratify": stratify,
        "labeled_patients": len(patients),
    }
    where = {"folds": folds, "held_out_site": leave_site_out, "params": params}
    rows = _rows(items, Splits(patients=assignment, rows=[], **where))
    return Splits(patients=assignment, rows=rows, **where)


def _check_settings(
    *, test: float, val: float, folds: int | None, seed: int, stratify: str
) -> None:
    check_choice("stratify", stratify, STRATIFY)
    for name, value in (("test", test), ("val", val)):
        if not 0.0 <= value < 1.0:
            raise SplitsError(f"{name} fraction must be in [0, 1), got {value}")
    if folds is None and test + val >= 1.0:
        raise SplitsError(f"test + val must be < 1 (nothing left to train on), got {test} + {val}")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise SplitsError(f"folds must be an integer >= 2, got {folds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SplitsError(f"seed must be a non-negative integer, got {seed!r}")


def _class_counts(
    labeled: Sequence[Any], stratify: str
) -> tuple[list[str], np.ndarray, list[float]]:
    """(patients sorted, their class counts (P, K), the columns' weights).

    Columns: fracture / no fracture (weight 1), plus, for "schatzker", the seven grades
    at a fifth of the weight: the fracture share of every split comes first (a test
    set without fractures cannot be scored), grade shares are kept where counts allow.
    """
    n_classes = 9 if stratify == "schatzker" else 2
    column_weights = [1.0, 1.0] + [SCHATZKER_WEIGHT] * (n_classes - 2)
    counts: dict[str, np.ndarray] = {}
    for i in labeled:
        if i.label > 6:
            raise SplitsError(f"{i.file}: label {i.label} is not a Schatzker grade 0..6")
        row = counts.setdefault(i.patient, np.zeros(n_classes))
        row[int(i.label != 0)] += 1
        if stratify == "schatzker":
            row[2 + i.label] += 1
    patients = sorted(counts)
    matrix = np.stack([counts[p] for p in patients]) if patients else np.zeros((0, n_classes))
    return patients, matrix, column_weights


def _first_part(
    matrix: np.ndarray, share: float, rng: np.random.Generator, column_weights: list[float]
) -> np.ndarray:
    """Whether each patient (row of ``matrix``) goes to a part of ``share`` of the items
    (the rest to the other part), stratified: bool (P,)."""
    parts = stratified_group_assign(
        matrix, [share, 1.0 - share], rng, column_weights=column_weights
    )
    return parts == 0


def _fold_assignment(
    patients: list[str],
    matrix: np.ndarray,
    folds: int,
    rng: np.random.Generator,
    column_weights: list[float],
) -> dict[str, Assignment]:
    """``patients`` (outside the test set) dealt into ``folds`` stratified folds."""
    if len(patients) < folds:
        raise SplitsError(
            f"{folds} folds need at least {folds} labeled patients outside the test set; there are {len(patients)}"
        )
    fold_of = stratified_group_assign(
        matrix, [1.0 / folds] * folds, rng, column_weights=column_weights
    )
    return {p: Assignment("trainval", int(k)) for p, k in zip(patients, fold_of)}


def _rows(items: Sequence[Any], splits: Splits) -> list[SplitRow]:
    """One row per item, sorted by file and laterality; labels kept only in train/val/test."""
    rows = []
    for i in sorted(items, key=lambda i: (i.file, i.laterality or "")):
        a = splits.assign(i)
        kept = i.label >= 0 and a.split not in ("unlabeled", "excluded")
        rows.append(
            SplitRow(
                file=i.file,
                laterality=i.laterality,
                patient=i.patient,
                site=i.site,
                label=int(i.label) if kept else -1,
                split=a.split,
                fold=a.fold,
            )
        )
    return rows
