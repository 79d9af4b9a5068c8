"""Joining the cache with labels (bilateral rules, lateral partners) and the torch datasets.

A minimal stand-in for ``pipeline.preprocess.CacheIndex`` is built here: entries with
the contract's fields and a ``load`` that reads each crop's ``.npy``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data import (
    CachedRadiographs,
    Item,
    build_items,
    collate,
    load_labels,
    make_splits,
    split_units,
)
from pipeline.data.items import relative_file
from pipeline.dicom import read_meta
from pipeline.preprocess import PreprocessConfig, build_cache
from pipeline.registry import UnknownNameError

SIZE = 16


@dataclass(frozen=True)
class FakeEntry:
    file: str
    sha256: str
    crop: int
    laterality: str | None
    array_path: Path
    box: tuple[int, int, int, int]
    confidence: float
    fallback: bool
    meta: dict[str, Any] = field(hash=False)


class FakeIndex:
    def __init__(self, entries):
        self.entries = list(entries)
        self.loads = 0

    def load(self, entry) -> np.ndarray:
        self.loads += 1
        return np.load(entry.array_path)


class Builder:
    """Writes fake DICOM files (empty), their crops (.npy) and a labels CSV."""

    def __init__(self, root: Path):
        self.root = root
        self.entries: list[FakeEntry] = []
        (root / "dicom").mkdir(parents=True, exist_ok=True)
        (root / "cache").mkdir(exist_ok=True)
        self.rng = np.random.default_rng(0)

    def add(
        self,
        name,
        *,
        view="AP",
        lats=(None,),
        patient="P-1",
        study="S-1",
        site="I-1",
        size=SIZE,
        meta_lat=None,
    ):
        file = f"dicom/{name}.dcm"
        (self.root / file).write_bytes(b"")
        meta = {
            "view": view,
            "body_part": "KNEE",
            "laterality": meta_lat,
            "patient_key": patient,
            "study_key": study,
            "site_key": site,
        }
        for k, lat in enumerate(lats):
            arr = self.rng.integers(0, 65536, size=(size, size), dtype=np.uint16)
            arr[0, 0], arr[0, 1] = 0, 65535
            path = self.root / "cache" / f"{name}_{k}.npy"
            np.save(path, arr)
            self.entries.append(
                FakeEntry(
                    file, f"sha-{name}", k, lat, path, (0, 0, size, size), 0.9, False, dict(meta)
                )
            )
        return file

    def labels(self, text: str):
        path = self.root / "labels.csv"
        path.write_text(text)
        return load_labels(path, self.root)

    def index(self) -> FakeIndex:
        return FakeIndex(self.entries)


@pytest.fixture
def b(tmp_path):
    return Builder(tmp_path / "data")


def by_key(items):
    return {i.key: i for i in items}


# --- join rules ------------------------------------------------------------------------


def test_unilateral_and_bilateral_labels_join_by_file_and_laterality(b):
    b.add("uni", lats=("R",), patient="P-1", study="S-1")
    b.add("bi", lats=("L", "R"), patient="P-2", study="S-2")
    b.add("bi0", lats=("L", "R"), patient="P-3", study="S-3")
    b.add("unk", lats=(None,), patient="P-4", study="S-4")
    b.add("free", lats=("L",), patient="P-5", study="S-5")
    table = b.labels(
        "file,schatzker,laterality\n"
        "dicom/uni.dcm,3,\n"  # image-level row, one crop
        "dicom/bi.dcm,2,L\n"
        "dicom/bi.dcm,0,R\n"
        "dicom/bi0.dcm,0,\n"  # image-level 0 on a bilateral image: both knees 0
        "dicom/unk.dcm,5,L\n"  # crop laterality unknown, one crop, one knee row
    )
    s = build_items(b.index(), table)
    items = by_key(s.items)
    assert items["dicom/uni.dcm", "R"].label == 3 and items["dicom/uni.dcm", "R"].row == 2
    assert (items["dicom/bi.dcm", "L"].label, items["dicom/bi.dcm", "R"].label) == (2, 0)
    assert (items["dicom/bi0.dcm", "L"].label, items["dicom/bi0.dcm", "R"].label) == (0, 0)
    assert items["dicom/unk.dcm", None].label == 5
    assert items["dicom/free.dcm", "L"].label == -1  # not in the CSV: unlabeled
    assert s.problems == ()
    assert items["dicom/bi.dcm", "L"].patient == "P-2" and items["dicom/bi.dcm", "L"].site == "I-1"


def test_bilateral_image_level_fracture_is_ambiguous_and_reported(b):
    b.add("bi", lats=("L", "R"))
    s = build_items(b.index(), b.labels("file,schatzker\ndicom/bi.dcm,4\n"))
    assert [i.label for i in s.items] == [-1, -1]
    (problem,) = s.problems
    assert (problem.row, problem.reason) == (2, "ambiguous_bilateral")
    assert "laterality column" in problem.message


def test_rows_that_find_no_crop_are_reported_with_their_reason(b):
    b.add("ap", lats=("L",), study="S-1")
    b.add("lat", view="LAT", lats=(None,), study="S-1", meta_lat="L")
    (b.root / "dicom" / "broken.dcm").write_bytes(b"")  # in the folder, not in the cache
    table = b.labels(
        "file,schatzker,laterality\ndicom/ap.dcm,1,R\ndicom/lat.dcm,2,\ndicom/broken.dcm,0,\n"
    )
    s = build_items(b.index(), table)
    reasons = {p.row: p.reason for p in s.problems}
    assert reasons == {2: "unmatched_laterality", 3: "not_frontal", 4: "no_cache_entry"}
    assert all("not used" in p.message for p in s.problems)
    assert [(e.file, e.reason) for e in s.excluded] == [("dicom/lat.dcm", "lateral view (LAT)")]
    assert [i.file for i in s.items] == ["dicom/ap.dcm"]  # lateral images are never items
    summary = s.summary()
    assert summary["join_problems"] == 3
    assert summary["excluded_by_reason"] == {"lateral view": 1}


@pytest.mark.parametrize(
    ("header_lat", "rows", "label", "reason"),
    [
        ("R", "R,3", 3, None),  # one knee: the header's laterality places the row
        ("L", "R,3", -1, "unmatched_laterality"),  # header and row disagree
        ("B", "L,0\nR,3", 3, None),  # one crop of both knees: the broken knee's grade
        ("B", "L,0\nR,0", 0, None),  # neither broken
        ("B", "L,2\nR,5", -1, "ambiguous_bilateral"),  # both broken, different grades
        ("B", "L,4\nR,4", 4, None),
        ("B", "R,3", -1, "unmatched_laterality"),  # the other knee's label is missing
    ],
)
def test_crops_without_laterality_use_the_header_and_whole_image_rules(
    b, header_lat, rows, label, reason
):
    """Without localization a crop has no laterality; the rules still place what they can."""
    b.add("img", lats=(None,), meta_lat=header_lat)
    text = "file,laterality,schatzker\n" + "".join(
        f"dicom/img.dcm,{line}\n" for line in rows.split("\n")
    )
    s = build_items(b.index(), b.labels(text))
    (item,) = s.items
    assert item.label == label
    assert [p.reason for p in s.problems][:1] == ([reason] if reason else [])


def test_failed_files_name_the_preprocessing_error(b):
    b.add("ok")
    (b.root / "dicom" / "bad.dcm").write_bytes(b"")
    index = b.index()
    index.errors = [
        type("E", (), {"file": "dicom/bad.dcm", "reason": "dicom/bad.dcm: truncated"})()
    ]
    s = build_items(index, b.labels("file,schatzker\ndicom/bad.dcm,2\n"))
    (problem,) = s.problems
    assert (
        problem.reason == "no_cache_entry"
        and "failed to preprocess (dicom/bad.dcm: truncated)" in problem.message
    )


def test_unused_rows_without_a_label_are_not_reported(b):
    b.add("lat", view="LAT", lats=(None,))
    s = build_items(b.index(), b.labels("file,schatzker\ndicom/lat.dcm,\n"))
    assert s.problems == () and s.items == ()


def test_lateral_partners_pair_by_study_and_laterality(b):
    b.add("ap1", lats=("L",), patient="P-1", study="S-1")
    b.add("lat1", view="LAT", lats=("L",), patient="P-1", study="S-1", meta_lat="L")
    b.add("ap2", lats=("L", "R"), patient="P-2", study="S-2")
    b.add("lat2r", view="LAT", lats=(None,), patient="P-2", study="S-2", meta_lat="R")
    b.add("lat2l", view="LAT", lats=(None,), patient="P-2", study="S-2", meta_lat="L")
    b.add("ap3", lats=("R",), patient="P-3", study="S-3")
    b.add("lat3", view="LAT", lats=(None,), patient="P-3", study="S-3")  # laterality not recorded
    b.add("ap4", lats=("R",), patient="P-4", study="S-4")  # no lateral view
    b.add("lat5", view="LAT", lats=("R",), patient="P-4", study="S-5", meta_lat="R")  # other study
    items = by_key(build_items(b.index()).items)
    partner = {k: (i.partner.file if i.partner is not None else None) for k, i in items.items()}
    assert partner == {
        ("dicom/ap1.dcm", "L"): "dicom/lat1.dcm",
        ("dicom/ap2.dcm", "L"): "dicom/lat2l.dcm",
        ("dicom/ap2.dcm", "R"): "dicom/lat2r.dcm",
        ("dicom/ap3.dcm", "R"): "dicom/lat3.dcm",
        ("dicom/ap4.dcm", "R"): None,
    }


def test_split_units_do_not_depend_on_the_number_of_crops(b, tmp_path):
    """A bilateral image gives 1 crop without localization and 2 with it; same split."""
    table_text = "file,schatzker,laterality\n" + "".join(
        f"dicom/k{p}.dcm,{p % 7},\n" for p in range(0, 40, 2)
    )
    one = Builder(tmp_path / "one")
    two = Builder(tmp_path / "two")
    for p in range(40):
        one.add(f"k{p}", lats=(None,), patient=f"P-{p}", study=f"S-{p}")
        two.add(
            f"k{p}", lats=("L", "R") if p % 3 == 0 else (None,), patient=f"P-{p}", study=f"S-{p}"
        )
    s1 = build_items(one.index(), one.labels(table_text))
    s2 = build_items(two.index(), two.labels(table_text))
    assert len(s2.items) > len(s1.items)
    assert [u.key for u in s1.units] == [u.key for u in s2.units]
    assert make_splits(s1.units, seed=0).patients == make_splits(s2.units, seed=0).patients


def test_split_units_skip_flagged_views_and_keep_unlabeled_files():
    metas = {
        "a.dcm": {"view": "AP", "body_part": "KNEE", "patient_key": "P-1"},
        "b.dcm": {"view": "LAT", "body_part": "KNEE", "patient_key": "P-1"},
        "c.dcm": {
            "view": "AP",
            "body_part": "KNEE",
        },  # no patient key: grouped by a hash of the file
    }
    units = split_units(None, metas)
    assert [(u.file, u.label) for u in units] == [("a.dcm", -1), ("c.dcm", -1)]
    assert units[1].patient.startswith("F-") and "c.dcm" not in units[1].patient


def test_relative_file(tmp_path):
    assert relative_file(tmp_path / "dicom" / "a.dcm", tmp_path) == "dicom/a.dcm"
    assert relative_file("dicom\\a.dcm", None) == "dicom/a.dcm"


# --- datasets --------------------------------------------------------------------------


def test_items_have_the_contract_dtype_shape_and_range(b):
    b.add("a", lats=("L",), patient="P-1")
    b.add("b", lats=(None,), patient="P-2", study="S-2")
    s = build_items(b.index(), b.labels("file,schatzker,laterality\ndicom/a.dcm,2,L\n"))
    ds = CachedRadiographs(s.items, b.index())
    assert len(ds) == 2 and ds.channels == 1
    x = ds[0]
    assert set(x) >= {"image", "label", "patient", "file", "laterality", "meta", "view_mask"}
    assert x["image"].dtype == torch.float32 and x["image"].shape == (1, SIZE, SIZE)
    assert float(x["image"].min()) == 0.0 and float(x["image"].max()) == 1.0
    assert (x["label"], x["patient"], x["file"], x["laterality"]) == (2, "P-1", "dicom/a.dcm", "L")
    assert x["meta"]["view"] == "AP" and x["meta"]["crop_confidence"] == 0.9
    raw = np.load(s.items[0].entry.array_path)
    assert torch.allclose(x["image"][0], torch.from_numpy(raw.astype(np.float32) / 65535.0))
    assert ds[1]["label"] == -1 and ds[1]["laterality"] is None
    assert ds.labels.tolist() == [2, -1]


def test_dataloader_batches_single_view(b):
    for k in range(5):
        b.add(f"a{k}", lats=("L",), patient=f"P-{k}", study=f"S-{k}")
    ds = CachedRadiographs(build_items(b.index()).items, b.index())
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 1, SIZE, SIZE)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [-1] * 4
    assert batch["view_mask"].shape == (4, 1) and bool(batch["view_mask"].all())
    assert batch["laterality"] == ["L"] * 4 and len(batch["meta"]) == 4


def two_view_set(b):
    b.add("ap1", lats=("L",), patient="P-1", study="S-1")
    b.add("lat1", view="LAT", lats=(None,), patient="P-1", study="S-1", meta_lat="L", size=2 * SIZE)
    b.add("ap2", lats=("R",), patient="P-2", study="S-2")  # no lateral view
    b.add("ap3", lats=("R",), patient="P-3", study="S-3")
    b.add("lat3", view="LAT", lats=(None,), patient="P-3", study="S-3", meta_lat="R")
    return build_items(b.index()).items


def test_two_view_batches_stack_ap_and_lateral_and_zero_the_missing_view(b):
    items = two_view_set(b)
    ds = CachedRadiographs(items, b.index(), views="ap+lat", missing_view="zero")
    assert ds.channels == 2 and len(ds) == 3 and ds.dropped == []
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 2, SIZE, SIZE)  # (B, 2, H, W)
    assert batch["image"].dtype == torch.float32
    assert batch["view_mask"].tolist() == [[True, True], [True, False], [True, True]]
    assert bool((batch["image"][1, 1] == 0).all())  # missing lateral: zero channel
    assert float(batch["image"][0, 1].max()) > 0  # lateral (resized from 2x size) present
    lat3 = np.load(items[2].partner.array_path).astype(np.float32) / 65535.0
    assert torch.allclose(batch["image"][2, 1], torch.from_numpy(lat3))
    ap1 = np.load(items[0].entry.array_path).astype(np.float32) / 65535.0
    assert torch.allclose(batch["image"][0, 0], torch.from_numpy(ap1))


def test_two_view_drop_policy_leaves_out_items_without_a_lateral(b):
    items = two_view_set(b)
    ds = CachedRadiographs(items, b.index(), views="ap+lat", missing_view="drop")
    assert [i.file for i in ds.items] == ["dicom/ap1.dcm", "dicom/ap3.dcm"]
    assert [i.file for i in ds.dropped] == ["dicom/ap2.dcm"]
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert batch["image"].shape == (2, 2, SIZE, SIZE)
    assert bool(batch["view_mask"].all())


def test_bare_cache_entries_make_an_unlabeled_dataset_and_transforms_apply(b):
    b.add("a", lats=("L", "R"))
    index = b.index()
    ds = CachedRadiographs(index.entries, index, transform=lambda t: t.flip(-1))
    x = ds[0]
    assert x["label"] == -1 and x["patient"] == "P-1" and x["file"] == "dicom/a.dcm"
    raw = np.load(index.entries[0].array_path).astype(np.float32) / 65535.0
    assert torch.allclose(x["image"][0], torch.from_numpy(raw[:, ::-1].copy()))


def test_bad_dataset_settings_fail_clearly(b):
    b.add("a")
    with pytest.raises(UnknownNameError, match="did you mean 'ap\\+lat'"):
        CachedRadiographs([], b.index(), views="ap+lt")
    with pytest.raises(UnknownNameError, match="missing view policy"):
        CachedRadiographs([], b.index(), views="ap+lat", missing_view="skip")
    with pytest.raises(ValueError, match="no cache entry"):
        CachedRadiographs([Item(file="x.dcm", laterality=None, patient="P-1")], b.index())


def test_splits_select_feeds_the_dataset(b):
    for p in range(20):
        b.add(f"k{p}", lats=("L",), patient=f"P-{p}", study=f"S-{p}")
    table = b.labels("file,schatzker\n" + "".join(f"dicom/k{p}.dcm,{p % 2}\n" for p in range(14)))
    s = build_items(b.index(), table)
    splits = make_splits(s.units, test=0.2, val=0.2, seed=0)
    parts = {name: splits.select(s.items, name) for name in ("train", "val", "test", "unlabeled")}
    assert sum(len(v) for v in parts.values()) == len(s.items)
    assert all(i.labeled for name in ("train", "val", "test") for i in parts[name])
    assert not any(i.labeled for i in parts["unlabeled"])
    train = CachedRadiographs(parts["train"], b.index())
    assert set(train.labels.tolist()) <= {0, 1}


def test_partners_and_labels_match_the_phantom_truth(phantom_dir):
    """Pairing from de-identified headers finds the phantom's true partner views, and
    every joined label equals the true label of that knee (perfect crops assumed)."""
    truth = [
        json.loads(line) for line in (phantom_dir / "truth.jsonl").read_text().splitlines() if line
    ]
    entries = []
    for t in truth:
        meta = read_meta(phantom_dir / t["file"])
        lats = [k["laterality"] for k in t["knees"]] if t["view"] == "AP" and t["knees"] else [None]
        for k, lat in enumerate(lats):
            entries.append(
                FakeEntry(t["file"], "", k, lat, Path("unused"), (0, 0, 1, 1), 1.0, False, meta)
            )
    table = load_labels(phantom_dir / "labels.csv", phantom_dir)
    items = build_items(FakeIndex(entries), table).items
    by_file = {t["file"]: t for t in truth}
    assert {i.file for i in items} == {
        t["file"] for t in truth if t["view"] == "AP" and t["body_part"] == "KNEE"
    }
    paired = labeled = 0
    for i in items:
        t = by_file[i.file]
        assert (i.partner.file if i.partner is not None else None) == t["partner"], i.file
        paired += i.partner is not None
        if i.labeled:
            knee = next(k for k in t["knees"] if i.laterality in (None, k["laterality"]))
            assert i.label == knee["schatzker"], i.key
            labeled += 1
    assert paired > 0 and labeled > 0


def test_real_cache_of_phantom_pairs_gives_two_view_batches(phantom_dir, tmp_path):
    """The real cache contract end to end: AP/LAT pairs of the phantom, no localizer."""
    truth = [
        json.loads(line) for line in (phantom_dir / "truth.jsonl").read_text().splitlines() if line
    ]
    pairs = [t for t in truth if t["view"] == "AP" and t["partner"]][:4]
    files = sorted({t["file"] for t in pairs} | {t["partner"] for t in pairs})
    config = PreprocessConfig.from_trial({"image_size": 32, "localize": False})
    index = build_cache(files, config, tmp_path / "cache", progress=False, data_dir=phantom_dir)
    assert not index.errors
    items = build_items(index, load_labels(phantom_dir / "labels.csv", phantom_dir)).items
    assert sorted(i.file for i in items) == sorted(t["file"] for t in pairs)
    assert all(i.partner is not None for i in items)
    ds = CachedRadiographs(items, index, views="ap+lat", missing_view="drop")
    batch = next(iter(DataLoader(ds, batch_size=len(ds), collate_fn=collate)))
    assert batch["image"].shape == (len(pairs), 2, 32, 32) and batch["image"].dtype == torch.float32
    assert float(batch["image"].min()) >= 0.0 and float(batch["image"].max()) <= 1.0
    assert float(batch["image"][:, 1].std()) > 0  # the lateral channel holds an image
