"""Patient-grouped splits: no patient shared, class shares kept, test held out."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from pipeline.data import Item, Splits, SplitsError, make_splits
from pipeline.data.splits import stratified_group_assign
from pipeline.registry import UnknownNameError

LABELED_SPLITS = {"train", "val", "test", "trainval"}


def make_items(
    n_patients: int, seed: int, *, n_sites: int = 3, p_fracture: float = 0.3, unlabeled: float = 0.4
):
    """Patients with 1-3 images each, some labeled (Schatzker 0..6), some not, over a few sites.
    About a tenth of the patients have images from two sites."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_patients):
        sites = [f"I-{rng.integers(n_sites)}", f"I-{rng.integers(n_sites)}"]
        two_sites = rng.random() < 0.1
        for j in range(int(rng.integers(1, 4))):
            if rng.random() < unlabeled:
                label = -1
            else:
                label = int(rng.integers(1, 7)) if rng.random() < p_fracture else 0
            items.append(
                Item(
                    file=f"dicom/{p:04d}_{j}.dcm",
                    laterality=None,
                    patient=f"P-{p:04d}",
                    label=label,
                    site=sites[j % 2] if two_sites else sites[0],
                )
            )
    return items


def patient_splits(splits: Splits, items) -> dict[str, set[str]]:
    out = defaultdict(set)
    for i in items:
        a = splits[i.key]
        if a.split in LABELED_SPLITS:
            out[i.patient].add(a.split)
    return out


@pytest.mark.parametrize("n_patients", [5, 12, 40, 150])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_patient_is_shared_and_unlabeled_never_enter_labeled_splits(n_patients, seed):
    items = make_items(n_patients, seed)
    splits = make_splits(items, test=0.15, val=0.15, seed=seed)
    assert len(splits) == len(items)
    for patient, names in patient_splits(splits, items).items():
        assert len(names) == 1, f"{patient} is in {names}"
    test_patients = {p for p, a in splits.patients.items() if a.split == "test"}
    for i in items:
        a = splits[i.key]
        if i.labeled:
            assert a.split in {"train", "val", "test"}
        else:
            assert a.split == ("excluded" if i.patient in test_patients else "unlabeled")
    # A patient's every image follows the patient: no test patient anywhere in training.
    training = {i.patient for i in items if splits[i.key].split in {"train", "val", "unlabeled"}}
    assert not training & test_patients
    labeled_patients = {i.patient for i in items if i.labeled}
    if len(labeled_patients) >= 3:
        assert {a.split for a in splits.patients.values()} == {"train", "val", "test"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_sizes_follow_the_fractions(seed):
    items = make_items(300, seed)
    splits = make_splits(items, test=0.2, val=0.1, seed=seed)
    labeled = [i for i in items if i.labeled]
    share = Counter(splits[i.key].split for i in labeled)
    assert share["test"] / len(labeled) == pytest.approx(0.2, abs=0.03)
    assert share["val"] / len(labeled) == pytest.approx(0.1, abs=0.03)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratification_keeps_class_shares_close(seed):
    items = make_items(400, seed, p_fracture=0.25, unlabeled=0.0)
    splits = make_splits(items, test=0.2, val=0.2, seed=seed)
    overall = np.bincount([i.label for i in items], minlength=7) / len(items)
    for name in ("train", "val", "test"):
        labels = [i.label for i in splits.select(items, name)]
        shares = np.bincount(labels, minlength=7) / len(labels)
        assert abs((1 - shares[0]) - (1 - overall[0])) < 0.03, name  # fracture share
        assert 0.5 * np.abs(shares - overall).sum() < 0.06, name  # total variation over 7 classes


def test_stratification_beats_a_random_patient_split():
    """The greedy placement is closer to the class shares than shuffled patients are."""
    items = make_items(200, 11, p_fracture=0.2, unlabeled=0.0)
    patients = sorted({i.patient for i in items})
    overall = np.mean([i.label != 0 for i in items])

    def error(test_set):
        labels = [i.label != 0 for i in items if i.patient in test_set]
        return abs(np.mean(labels) - overall)

    greedy = [
        error({p for p, a in make_splits(items, seed=s).patients.items() if a.split == "test"})
        for s in range(8)
    ]
    rng = np.random.default_rng(0)
    shuffled = [
        error(set(rng.permutation(patients)[: len(patients) * 15 // 100])) for _ in range(8)
    ]
    assert np.mean(greedy) < np.mean(shuffled)


def test_leave_site_out_puts_the_site_wholly_in_test():
    items = make_items(120, 5, n_sites=4)
    splits = make_splits(items, leave_site_out="I-2", val=0.2, seed=0)
    for i in items:
        a = splits[i.key]
        if i.site == "I-2":
            assert a.split in {"test", "excluded"}, i
            assert a.split == ("test" if i.labeled else "excluded")
        if a.split == "test":
            # Only patients with an image from the site are tested (all their images).
            assert any(j.site == "I-2" for j in items if j.patient == i.patient)
    for patient, names in patient_splits(splits, items).items():
        assert len(names) == 1, patient
    assert splits.held_out_site == "I-2"
    assert splits.params["test"] is None


def test_leave_site_out_unknown_site_suggests_the_close_one():
    items = make_items(20, 0)
    with pytest.raises(UnknownNameError, match=r"unknown site 'I-l': did you mean .*'I-1'"):
        make_splits(items, leave_site_out="I-l", seed=0)


@pytest.mark.parametrize(
    ("n_patients", "folds", "test"), [(30, 5, 0.0), (60, 3, 0.15), (12, 4, 0.0)]
)
def test_kfold_covers_every_labeled_patient_exactly_once(n_patients, folds, test):
    items = make_items(n_patients, 3, unlabeled=0.2)
    splits = make_splits(items, test=test, folds=folds, seed=0)
    labeled_patients = {i.patient for i in items if i.labeled}
    test_patients = {p for p, a in splits.patients.items() if a.split == "test"}
    seen = Counter()
    for k in range(folds):
        val = {i.patient for i in splits.select(items, "val", fold=k)}
        train = {i.patient for i in splits.select(items, "train", fold=k)}
        assert val and train and not val & train
        assert not (val | train) & test_patients
        assert train | val | test_patients == labeled_patients
        seen.update(val)
    assert set(seen) == labeled_patients - test_patients
    assert set(seen.values()) == {1}


def test_test_set_does_not_depend_on_val_or_folds():
    items = make_items(80, 9)

    def test_set(**kw):
        return {
            p for p, a in make_splits(items, seed=4, **kw).patients.items() if a.split == "test"
        }

    assert test_set(val=0.15) == test_set(val=0.3) == test_set(folds=5)


def test_deterministic_for_a_seed_and_independent_of_order_and_unlabeled():
    items = make_items(60, 2)
    a = make_splits(items, seed=7)
    shuffled = [items[i] for i in np.random.default_rng(1).permutation(len(items))]
    b = make_splits(shuffled, seed=7)
    assert a.rows == b.rows
    labeled_only = make_splits([i for i in items if i.labeled], seed=7)
    assert labeled_only.patients == a.patients
    others = [make_splits(items, seed=s).patients for s in range(8, 12)]
    assert any(o != a.patients for o in others)


def test_assign_places_new_crops_by_patient():
    items = make_items(40, 1)
    splits = make_splits(items, seed=0)
    test_patient = next(p for p, a in splits.patients.items() if a.split == "test")
    train_patient = next(p for p, a in splits.patients.items() if a.split == "train")
    crop = Item(file="dicom/new.dcm", laterality="L", patient=test_patient, label=3)
    assert splits.assign(crop).split == "test"
    assert splits.assign(Item(file="x", laterality="R", patient=test_patient)).split == "excluded"
    assert splits.assign(Item(file="x", laterality="R", patient=train_patient)).split == "unlabeled"
    # A label on a patient the split never saw is not trusted into train/val/test.
    assert (
        splits.assign(Item(file="y", laterality=None, patient="P-new", label=2)).split
        == "unlabeled"
    )


def test_csv_round_trip(tmp_path):
    items = make_items(50, 4, n_sites=2)
    for kwargs in ({"seed": 3}, {"seed": 3, "folds": 3}, {"seed": 3, "leave_site_out": "I-0"}):
        splits = make_splits(items, **kwargs)
        path = splits.to_csv(tmp_path / "splits.csv")
        back = Splits.read_csv(path)
        assert back.rows == splits.rows
        assert back.patients == splits.patients
        assert (back.folds, back.held_out_site) == (splits.folds, splits.held_out_site)
        assert [splits.assign(i) for i in items] == [back.assign(i) for i in items]


def test_read_csv_rejects_a_patient_in_two_splits(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(
        "file,laterality,patient,site,label,split,fold\na.dcm,,P-1,,0,train,\nb.dcm,,P-1,,1,test,\n"
    )
    with pytest.raises(SplitsError, match="row 3: patient P-1"):
        Splits.read_csv(path)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"test": 0.5, "val": 0.5}, "test \\+ val"),
        ({"test": -0.1}, "test fraction"),
        ({"val": 1.0}, "val fraction"),
        ({"folds": 1}, "folds must be"),
        ({"folds": 50}, "50 folds need at least 50"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_are_refused(kwargs, fragment):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(SplitsError, match=fragment):
        make_splits(make_items(20, 0), **kwargs)


def test_select_checks_folds():
    items = make_items(30, 0)
    with pytest.raises(SplitsError, match="pass fold"):
        make_splits(items, folds=3, seed=0).select(items, "train")
    with pytest.raises(SplitsError, match="no folds"):
        make_splits(items, seed=0).select(items, "val", fold=1)
    with pytest.raises(UnknownNameError, match="did you mean 'train'"):
        make_splits(items, seed=0).select(items, "trian")


def test_tiny_sets_still_get_every_requested_split():
    counts = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 0]], dtype=float)
    out = stratified_group_assign(counts, [0.15, 0.15, 0.7], np.random.default_rng(0))
    assert set(out) == {0, 1, 2}


def test_binary_stratification():
    items = make_items(200, 6, p_fracture=0.1, unlabeled=0.0)
    splits = make_splits(items, stratify="binary", seed=1)
    overall = np.mean([i.label != 0 for i in items])
    for name in ("train", "val", "test"):
        share = np.mean([i.label != 0 for i in splits.select(items, name)])
        assert abs(share - overall) < 0.03


@pytest.mark.parametrize("n_patients", [40, 80, 150])
def test_rare_fractures_still_reach_test_and_val(n_patients):
    """With ~5-10% fractures spread over six grades, grading by the rare grades alone would
    send each grade wholly to train; the fracture share comes first, so every split whose
    expected fracture count is at least 1.5 gets fractures."""
    checked = 0
    for seed in range(25):
        items = make_items(n_patients, 100 + seed, p_fracture=0.08, unlabeled=0.3)
        splits = make_splits(items, test=0.15, val=0.15, seed=seed)
        fractures = sum(i.label > 0 for i in items)
        for name in ("test", "val"):
            if 0.15 * fractures >= 1.5:
                checked += 1
                assert any(i.label > 0 for i in splits.select(items, name)), (seed, name)
    assert checked > 0
