"""Items: cache crops joined with their labels, and the split units that decide splits.

An :class:`Item` is one knee crop of a frontal radiograph (the unit a model sees),
with its Schatzker label (-1 = unlabeled), pseudonymous patient / study / site keys,
its cache entry and, when the study has one, the lateral view of the same knee.

Joining the cache index with the label table by ``(file, laterality)``:

1. a crop with laterality ``L``/``R`` takes the row for ``(file, L/R)`` when there is one;
2. otherwise it takes the image-level row ``(file, no laterality)``, when the file has
   one crop (unilateral image), or when it has several (bilateral image) and that row
   says 0 (no fracture in either knee). A non-zero image-level label on a bilateral
   image does not say which knee is broken: both crops stay unlabeled and the row is
   reported (``ambiguous_bilateral``; add one row per knee with the laterality column);
3. a crop whose laterality is unknown (no localization) takes the header's laterality
   when the file has one crop and the header names one knee; a single crop of a
   bilateral image with a row per knee gets 0 when neither knee is broken, the broken
   knee's grade when one is (or both share it), and stays unlabeled otherwise
   (``ambiguous_bilateral``);
4. every label row (with a label, a tie or a conflict) that no crop took is reported
   with its reason (``no_cache_entry``: the file failed to read or was not
   preprocessed, with the cache's error when it has one; ``not_frontal``: the view
   filter flagged it; ``unmatched_laterality``).

Out of scope: each cache entry carries its file's decision from the pixels (frontal
knee, other knee view, not a knee, with a score: :mod:`pipeline.preprocess.scope`).
``scope_policy`` (:data:`SCOPE_POLICIES`) says how it combines with the tags' view
filter: ``pixels`` (the default: the pixels decide, whatever the tags say), ``tags``
(the view filter alone, as before the decision existed) or ``both`` (kept only when
both say frontal knee). A file left out is listed in ``excluded`` with its reason
(``out of scope: not a knee (0.93)``, ``lateral view (LAT)``, ...); a file whose tags
and pixels disagree on whether it is a frontal knee is listed in ``disagreements``
whatever the policy. An entry without a decision (built before it existed) follows
the tags.

Two views: a frontal crop's partner is the lateral image with the same study key (and
patient key) and the same laterality (lateral images' laterality comes from the
header tag, else from the crop); a lateral image without laterality pairs only with a
study's single frontal crop. When several lateral images qualify, the first by file
name is used. What happens to crops without a partner is the dataset's policy
(:class:`pipeline.data.CachedRadiographs`, ``missing_view``).

Split units (:func:`split_units`) are built from the label table and per-file header
metadata only, one per labeled row plus one per unlabeled file, so the patient-level
split does not change with preprocessing settings (a bilateral image gives one crop
without localization and two with it, but its label rows are the same).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.labels import LabelProblem, LabelRow, LabelTable, normalize_file
from pipeline.data.views import body_part_kind, is_frontal_knee, view_kind
from pipeline.io import stable_hash
from pipeline.registry import check_choice

#: How an image's out-of-scope decision from its pixels and its DICOM tags combine
#: (the trial key ``scope_policy``; see the module docstring).
SCOPE_POLICIES = ("pixels", "tags", "both")


@dataclass(frozen=True, kw_only=True)
class Item:
    """One knee crop (or, for split units, one label row / unlabeled file)."""

    file: str
    laterality: str | None
    patient: str
    label: int = -1  # Schatzker grade 0..6; -1 = unlabeled
    study: str | None = None
    site: str | None = None
    row: int | None = None  # labels CSV row the label came from
    entry: Any = None  # pipeline.preprocess.CacheEntry (None for split units)
    partner: Any = None  # lateral CacheEntry of the same study and knee, or None
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.file, self.laterality)

    @property
    def labeled(self) -> bool:
        return self.label >= 0


@dataclass(frozen=True, kw_only=True)
class Excluded:
    """A file left out of the items, with the reason (view filter, ...)."""

    file: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Disagreement:
    """A file whose tags and pixels disagree on whether it is a frontal knee."""

    file: str
    tags: str  # what the view filter read in the tags
    pixels: str  # the decision from the pixels and its score

    def __str__(self) -> str:
        return f"{self.file}: tags say {self.tags}, pixels say {self.pixels}"


@dataclass(frozen=True, kw_only=True)
class ItemSet:
    """Crops with labels (``items``), split units, and everything left out, with reasons."""

    items: tuple[Item, ...]
    units: tuple[Item, ...]
    excluded: tuple[Excluded, ...] = ()
    problems: tuple[LabelProblem, ...] = ()
    disagreements: tuple[Disagreement, ...] = ()

    def summary(self) -> dict:
        items = self.items
        return {
            "items": len(items),
            "labeled": sum(i.labeled for i in items),
            "unlabeled": sum(not i.labeled for i in items),
            "patients": len({i.patient for i in items}),
            "with_lateral_partner": sum(i.partner is not None for i in items),
            "units": len(self.units),
            "excluded_files": len(self.excluded),
            "excluded_by_reason": dict(
                sorted(Counter(e.reason.partition(" (")[0] for e in self.excluded).items())
            ),
            "out_of_scope": sum(e.reason.startswith(OUT_OF_SCOPE) for e in self.excluded),
            "tag_pixel_disagreements": len(self.disagreements),
            "join_problems": len(self.problems),
            "join_problems_by_reason": dict(
                sorted(Counter(p.reason for p in self.problems).items())
            ),
        }


OUT_OF_SCOPE = "out of scope: "


def tags_say_frontal(meta: Mapping[str, Any]) -> bool | None:
    """Whether the tags say frontal knee (True), something else (False), or nothing (None)."""
    part, _ = body_part_kind(meta)
    view, _ = view_kind(meta)
    if part == "other" or view in ("lateral", "other"):
        return False
    if part == "knee" and view == "frontal":
        return True
    return None


def scope_verdict(
    meta: Mapping[str, Any],
    scope: Mapping[str, Any] | None,
    policy: str = "pixels",
    *,
    strict: bool = False,
) -> tuple[bool, str, str | None]:
    """(kept, why, what the pixels say when they disagree with the tags, else None).

    ``scope``: the cache entry's decision (``in_scope``, ``reason``), or None; ``policy``
    one of :data:`SCOPE_POLICIES`; ``strict`` as for :func:`is_frontal_knee`.
    """
    tags_ok, tags_why = is_frontal_knee(meta, strict=strict)
    if scope is None:
        return tags_ok, tags_why, None
    pixels_ok = bool(scope.get("in_scope", True))
    pixels_why = str(scope.get("reason", ""))
    said = tags_say_frontal(meta)
    disagree = pixels_why if said is not None and said != pixels_ok else None
    if policy == "tags" or (policy == "both" and not tags_ok):
        return tags_ok, tags_why, disagree
    if not pixels_ok:
        return False, OUT_OF_SCOPE + pixels_why, disagree
    return True, pixels_why, disagree


def relative_file(file: str | Path, data_dir: str | Path | None) -> str:
    """A cache entry's file as the labels CSV names it: POSIX, relative to the data folder."""
    path = Path(file)
    if path.is_absolute() and data_dir is not None:
        root = Path(data_dir)
        for a, b in ((path, root), (path.resolve(), root.resolve())):
            try:
                return a.relative_to(b).as_posix()
            except ValueError:
                continue
        return path.as_posix()
    return normalize_file(str(file))


def patient_of(meta: Mapping[str, Any], file: str) -> str:
    """The grouping key: patient pseudonym, else study pseudonym, else a hash of the file.

    Without a patient key two images of one patient cannot be told apart; the fallbacks
    keep at least one study (or one file) together and never write a raw path.
    """
    return str(
        meta.get("patient_key") or meta.get("study_key") or f"F-{stable_hash(file, length=12)}"
    )


def _file_fields(file: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`Item` fields every crop (and split unit) of one file shares."""
    return {
        "file": file,
        "patient": patient_of(meta, file),
        "study": meta.get("study_key"),
        "site": meta.get("site_key"),
        "meta": meta,
    }


def _laterality(value: Any) -> str | None:
    text = str(value or "").strip().upper()
    return text if text in ("L", "R") else None


def split_units(
    table: LabelTable | None,
    metas: Mapping[str, Mapping[str, Any]],
    *,
    strict_views: bool = False,
) -> list[Item]:
    """One unit per labeled row of a frontal knee file, plus one per file without a label.

    ``metas`` maps each readable file (relative path, as in the CSV) to its de-identified
    header metadata. Only labeled units drive the split; unlabeled units follow their
    patient (see :func:`pipeline.data.make_splits`).
    """
    rows_by_file: dict[str, list[LabelRow]] = defaultdict(list)
    for r in table.rows if table is not None else ():
        rows_by_file[r.file].append(r)
    units: list[Item] = []
    for file in sorted(metas):
        meta = metas[file]
        if not is_frontal_knee(meta, strict=strict_views)[0]:
            continue
        common = _file_fields(file, meta)
        labeled = [r for r in rows_by_file.get(file, []) if r.schatzker is not None]
        for r in labeled:
            units.append(Item(laterality=r.laterality, label=int(r.schatzker), row=r.row, **common))
        if not labeled:
            units.append(Item(laterality=None, label=-1, **common))
    return units


def build_items(
    index: Any,
    table: LabelTable | None = None,
    *,
    data_dir: str | Path | None = None,
    strict_views: bool = False,
    scope_policy: str = "pixels",
) -> ItemSet:
    """Join a preprocessing cache index with a label table (rules in the module docstring).

    ``index`` is a ``pipeline.preprocess.CacheIndex`` (anything with ``.entries`` of
    ``CacheEntry``-like objects: ``file``, ``laterality``, ``meta``, ``scope``, ...);
    ``scope_policy``: how the pixels' decision and the tags combine (:data:`SCOPE_POLICIES`).
    """
    check_choice("scope_policy", scope_policy, SCOPE_POLICIES)
    if data_dir is None and table is not None:
        data_dir = table.data_dir
    by_file: dict[str, list[Any]] = defaultdict(list)
    for entry in index.entries:
        by_file[relative_file(entry.file, data_dir)].append(entry)
    metas = {f: dict(ents[0].meta or {}) for f, ents in by_file.items()}

    frontal, excluded, laterals, disagreements = _sort_views(
        by_file, metas, strict_views, scope_policy
    )
    failed = {
        relative_file(e.file, data_dir): str(getattr(e, "reason", "") or e)
        for e in getattr(index, "errors", None) or ()
    }
    joiner = _Joiner(table, frontal, {e.file: e.reason for e in excluded}, failed)
    frontal_crops_per_study = Counter(
        str(metas[f].get("study_key")) for f, ents in frontal.items() for _ in ents
    )
    items: list[Item] = []
    for file, entries in frontal.items():
        meta = metas[file]
        image_lat = str(meta.get("laterality") or "").upper() or None
        for entry in sorted(entries, key=lambda e: str(e.laterality or "")):
            lat = _laterality(entry.laterality)
            if lat is None and len(entries) == 1:
                lat = _laterality(image_lat)  # a one-knee image: the header names the knee
            label, row = joiner.label_for(file, lat, len(entries), image_lat)
            study = meta.get("study_key")
            partner = None
            if study:
                partner = _pick_partner(
                    lat, laterals.get(str(study), []), frontal_crops_per_study[str(study)]
                )
            items.append(
                Item(
                    laterality=lat,
                    label=label,
                    row=row,
                    entry=entry,
                    partner=partner,
                    **_file_fields(file, meta),
                )
            )
    return ItemSet(
        items=tuple(items),
        units=tuple(split_units(table, metas, strict_views=strict_views)),
        excluded=tuple(excluded),
        problems=tuple(joiner.problems + joiner.unused()),
        disagreements=tuple(disagreements),
    )


def _sort_views(
    by_file: Mapping[str, list[Any]],
    metas: Mapping[str, dict[str, Any]],
    strict_views: bool,
    policy: str = "pixels",
) -> tuple[
    dict[str, list[Any]],
    list[Excluded],
    dict[str, list[tuple[str, Any, str | None]]],
    list[Disagreement],
]:
    """(frontal knee files' entries, excluded files with why, study key -> the lateral
    knee images of that study as (file, best entry, laterality), files whose tags and
    pixels disagree), files in sorted order."""
    excluded: list[Excluded] = []
    frontal: dict[str, list[Any]] = {}
    laterals: dict[str, list[tuple[str, Any, str | None]]] = defaultdict(list)
    disagreements: list[Disagreement] = []
    for file in sorted(by_file):
        meta = metas[file]
        scope = getattr(by_file[file][0], "scope", None)
        ok, reason, pixels = scope_verdict(meta, scope, policy, strict=strict_views)
        if pixels is not None:
            tags = is_frontal_knee(meta, strict=strict_views)[1]
            disagreements.append(Disagreement(file=file, tags=tags, pixels=pixels))
        if ok:
            frontal[file] = by_file[file]
            continue
        excluded.append(Excluded(file=file, reason=reason))
        shows_knee = scope is None or policy == "tags" or bool(scope.get("knee", True))
        if (
            view_kind(meta)[0] == "lateral"
            and body_part_kind(meta)[0] != "other"
            and shows_knee
            and meta.get("study_key")
        ):
            entry = max(by_file[file], key=lambda e: float(getattr(e, "confidence", 0.0) or 0.0))
            lat = _laterality(meta.get("laterality")) or _laterality(entry.laterality)
            laterals[str(meta["study_key"])].append((file, entry, lat))
    return frontal, excluded, laterals, disagreements


def _pick_partner(
    lat: str | None, candidates: list[tuple[str, Any, str | None]], n_frontal: int
) -> Any:
    if not candidates:
        return None
    ordered = sorted(candidates, key=lambda c: c[0])
    if lat is not None:
        same = [c for c in ordered if c[2] == lat]
        if same:
            return same[0][1]
    unknown = [c for c in ordered if c[2] is None]
    if n_frontal == 1:
        if unknown:
            return unknown[0][1]
        if lat is None and len(ordered) == 1:
            return ordered[0][1]
    return None


class _Joiner:
    """Finds each crop's label row and remembers which rows were used."""

    def __init__(
        self,
        table: LabelTable | None,
        frontal: Mapping[str, list[Any]],
        excluded: Mapping[str, str],
        failed: Mapping[str, str] | None = None,
    ):
        self.rows: dict[str, list[LabelRow]] = defaultdict(list)
        for r in table.rows if table is not None else ():
            self.rows[r.file].append(r)
        self.frontal, self.excluded = frontal, excluded
        self.failed = dict(failed or {})
        self.crop_lats: dict[str, list[str | None]] = defaultdict(list)
        self.used: set[int] = set()
        self.problems: list[LabelProblem] = []
        self.source = table.path.name if table is not None and table.path is not None else ""

    def _problem(self, row: LabelRow, reason: str, message: str) -> LabelProblem:
        return LabelProblem(
            row=row.row, file=row.file, reason=reason, message=message, source=self.source
        )

    def problem(self, row: LabelRow, reason: str, message: str) -> None:
        self.used.add(row.row)
        self.problems.append(self._problem(row, reason, message))

    def use(self, row: LabelRow) -> tuple[int, int]:
        self.used.add(row.row)
        return (-1 if row.schatzker is None else int(row.schatzker)), row.row

    def label_for(
        self, file: str, lat: str | None, n_crops: int, image_lat: str | None
    ) -> tuple[int, int | None]:
        """(label, label row) of one crop; (-1, None) when it has none."""
        self.crop_lats[file].append(lat)
        rows = self.rows.get(file, [])
        knee = {r.laterality: r for r in rows if r.laterality is not None}
        image = next((r for r in rows if r.laterality is None), None)
        if lat is not None and lat in knee:
            return self.use(knee[lat])
        if lat is None and knee and image is None:
            if n_crops == 1 and len(knee) == 1 and image_lat != "B":
                return self.use(next(iter(knee.values())))
            if n_crops == 1 and set(knee) == {"L", "R"}:
                return self.whole_image(file, knee["L"], knee["R"])
            for row in knee.values():
                if row.row not in self.used:
                    self.problem(
                        row,
                        "unmatched_laterality",
                        f"{file}: the crop's laterality is unknown, so the label for knee "
                        f"{row.laterality} cannot be placed",
                    )
            return -1, None
        if image is None:
            return -1, None
        if n_crops == 1 or image.schatzker in (0, None):
            return self.use(image)
        if image.row not in self.used:
            self.problem(
                image,
                "ambiguous_bilateral",
                f"{file} is bilateral ({n_crops} knees) but has one image-level label "
                f"{image.schatzker}; add one row per knee with the laterality column",
            )
        return -1, None

    def whole_image(self, file: str, left: LabelRow, right: LabelRow) -> tuple[int, int | None]:
        """One crop showing both knees (no localization): 0 when neither is broken, the
        grade of the broken knee when one is (or both share it), else ambiguous."""
        self.used.update((left.row, right.row))
        if left.schatzker is None or right.schatzker is None:
            return -1, None  # a tie or conflict: already on the adjudication list
        broken = {r.schatzker: r for r in (left, right) if r.schatzker != 0}
        if not broken:
            return 0, left.row
        if len(broken) == 1:
            grade, row = next(iter(broken.items()))
            return int(grade), row.row
        self.problem(
            left,
            "ambiguous_bilateral",
            f"{file}: one crop shows both knees, broken with different grades "
            f"(L {left.schatzker}, R {right.schatzker}); localize the knees to use these labels",
        )
        return -1, None

    def unused(self) -> list[LabelProblem]:
        """Every label row no crop took (an unused row without a label loses nothing)."""
        out = [
            self._problem(row, *self._why_unused(row))
            for rows in self.rows.values()
            for row in rows
            if row.row not in self.used and row.source != "unlabeled"
        ]
        return sorted(out, key=lambda p: p.row or 0)

    def _why_unused(self, row: LabelRow) -> tuple[str, str]:
        file = row.file
        if file in self.excluded:
            reason, why = "not_frontal", f"{file} is not a frontal knee ({self.excluded[file]})"
        elif file in self.failed:
            reason, why = "no_cache_entry", f"{file} failed to preprocess ({self.failed[file]})"
        elif file not in self.frontal:
            reason = "no_cache_entry"
            why = f"{file} has no cache entry (it failed to read or was not preprocessed)"
        else:
            lats = ", ".join(sorted(str(x) for x in self.crop_lats.get(file, [])))
            reason = "unmatched_laterality"
            why = f"no crop of {file} has laterality {row.laterality} (crops: {lats})"
        return reason, f"{why}; its label is not used"


def items_from_entries(entries: Iterable[Any], *, data_dir: str | Path | None = None) -> list[Item]:
    """Unlabeled items straight from cache entries (no labels, no view filter)."""
    return [
        Item(
            laterality=_laterality(entry.laterality),
            entry=entry,
            **_file_fields(relative_file(entry.file, data_dir), dict(entry.meta or {})),
        )
        for entry in entries
    ]
