"""The plan of a phantom set: who the patients are, what each image shows and how it
is stored, and which rows the labels CSV gets.

The plan is drawn once, in order, from the data set's seed; rendering an image then
needs only its own entry (and generators seeded from (seed, index) or from the knee),
so images can be rendered by any number of worker processes and still be identical.

Categorical variants are dealt from shuffled "decks" rather than drawn independently:
every variant then appears once per pass through its deck, so even a small set (tens
of images) carries every photometric interpretation, transfer syntax, bit depth, view
and Schatzker type, while a large set keeps the intended proportions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .acquisition import COLLIMATIONS, Acquisition
from .identities import SITES, age_years, fake_patient, make_uid, physician_name
from .parts import DEFAULT_OTHER_PARTS, part_kind

# Schatzker I..VI shares among fractures: II the commonest, as in clinical series.
SCHATZKER_SHARES = {1: 0.15, 2: 0.30, 3: 0.11, 4: 0.14, 5: 0.12, 6: 0.18}
READERS = ("r1", "r2", "r3")


class Deck:
    """Deal items in shuffled passes; each pass holds the given counts of each item."""

    def __init__(self, rng: np.random.Generator, items: Sequence[Any]):
        self.rng, self.items, self.pending = rng, list(items), []

    def next(self) -> Any:
        if not self.pending:
            order = self.rng.permutation(len(self.items))
            self.pending = [self.items[i] for i in order]
        return self.pending.pop()


def quota_deck(rng: np.random.Generator, rate: float, size: int = 20) -> Deck:
    """A deck of booleans, ``round(rate * size)`` of ``size`` True."""
    hits = round(rate * size)
    return Deck(rng, [True] * hits + [False] * (size - hits))


class TypeDealer:
    """Schatzker types for injured patients: one of each first, then by clinical share."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.first = list(rng.permutation(np.arange(1, 7)))

    def next(self) -> int:
        if self.first:
            return int(self.first.pop())
        types = list(SCHATZKER_SHARES)
        p = np.array([SCHATZKER_SHARES[t] for t in types])
        return int(self.rng.choice(types, p=p / p.sum()))


@dataclass(frozen=True)
class KneeSpec:
    laterality: str  # "L" or "R"
    schatzker: int  # 0..6
    visibility: float  # 0 (subtle) .. 1 (obvious); 0 when not fractured
    anatomy_key: int  # seeds the knee's shape (one per patient knee)
    fracture_key: int  # seeds the fracture's geometry (one per study knee)


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render and write one file."""

    seed: int
    index: int
    file: str
    view: str  # "AP", "LAT", "SKYLINE" (a knee) or "OTHER" (another body part)
    body_part: str  # "KNEE", "HAND", "ANKLE", ... (pipeline.synth.parts.OTHER_PARTS)
    bilateral: bool
    knees: tuple[KneeSpec, ...]
    partner: int | None
    shape: tuple[int, int]  # (rows, columns)
    site: int
    patient: dict
    study: dict
    acquisition: Acquisition
    header: dict = field(default_factory=dict)  # header habits: descriptions, tags present
    style: str = "phantom"  # "clinical": framed and marked as archives are (synth.clinical)


@dataclass
class Plan:
    images: list[ImageSpec]
    label_rows: list[dict]


def _image_shape(size: int | tuple[int, int], bilateral: bool, rng: np.random.Generator):
    if not isinstance(size, int):
        return int(size[0]), int(size[1])
    if bilateral:
        return round(0.8 * size), size
    aspect = rng.choice([1.0, 0.8, 0.83], p=[0.5, 0.3, 0.2])
    return size, round(aspect * size)


#: body part -> (English word, Spanish word, view) of its descriptions
_OTHER_WORDS = {
    "HAND": ("HAND", "MANO", "PA"),
    "ANKLE": ("ANKLE", "TOBILLO", "AP"),
    "HIP": ("HIP", "CADERA", "AP"),
    "CHEST": ("CHEST", "TORAX", "AP"),
}


def _descriptions(site_spanish: bool, view: str, body: str, side: str, rng) -> tuple[str, str]:
    """(series description, study description) in the site's language and habits."""
    es = site_spanish
    if body in _OTHER_WORDS:
        word, palabra, projection = _OTHER_WORDS[body]
        return f"{palabra if es else word} {projection}", f"RX {palabra}" if es else f"XR {word}"
    if view == "SKYLINE":
        series = (
            "RODILLA AXIAL ROTULA" if es else str(rng.choice(["KNEE SKYLINE", "PATELLA AXIAL"]))
        )
        return series, ("RX RODILLA" if es else "XR KNEE")
    side_es = {"R": "DCHA", "L": "IZDA"}.get(side, "")
    if view == "BILATERAL":
        series = rng.choice(
            ["RODILLA AP BILATERAL", "RODILLAS AP EN CARGA"]
            if es
            else ["BILATERAL KNEES AP STANDING", "KNEES AP BILATERAL"]
        )
    elif view == "LAT":
        series = rng.choice(
            ["RODILLA LAT", "RODILLA LATERAL", f"RODILLA {side_es} LAT"]
            if es
            else ["KNEE LAT", f"{side} KNEE LATERAL", "Knee Lateral"]
        )
    else:
        series = rng.choice(
            ["RODILLA AP", f"RODILLA {side_es} AP", "RX RODILLA AP"]
            if es
            else ["KNEE AP", f"{side} KNEE AP", "Knee AP"]
        )
    study = ("RX RODILLA" if es else "XR KNEE") + (" 2 PROYECCIONES" if es else " 2 VIEWS") * (
        rng.random() < 0.3
    )
    return str(series), study


def _view_tag(view: str, side: str, rng: np.random.Generator) -> str | None:
    if rng.random() < 0.08:
        return None  # the tag is missing: only the description tells the view
    if view == "LAT":
        return str(rng.choice(["LAT", "LL", "RL", "LATERAL"], p=[0.4, 0.25, 0.25, 0.1]))
    if view == "OTHER":
        return str(rng.choice(["PA", "AP"]))
    if view == "SKYLINE":
        return str(rng.choice(["AXIAL", "SKYLINE", "TANGENTIAL"]))
    return "PA" if rng.random() < 0.05 else "AP"


def _body_part_tag(body: str, rng: np.random.Generator) -> str | None:
    if body != "KNEE":
        return body if rng.random() < 0.9 else None
    options = ["KNEE"] * 6 + ["LEG", "EXTREMITY", "RODILLA", None]
    return options[int(rng.integers(len(options)))]


#: the share of studies that are not a knee study (two in twenty)
DEFAULT_OTHER_SHARE = 0.1


def study_deck(rng: np.random.Generator, other_share: float = DEFAULT_OTHER_SHARE) -> Deck:
    """The kinds of study, dealt in passes of twenty: ``round(20 * other_share)`` studies
    of something else than a knee, the rest frontal, frontal + lateral and bilateral knee
    studies as 9 : 6 : 3 (the default share gives 9, 6, 3 and 2)."""
    other = round(20 * other_share)
    knee = 20 - other
    ap, lat = round(knee * 9 / 18), round(knee * 6 / 18)
    kinds = ["ap"] * ap + ["ap+lat"] * lat + ["bilateral"] * (knee - ap - lat)
    return Deck(rng, kinds + ["other"] * other)


def plan_dataset(
    n: int,
    seed: int,
    *,
    size: int | tuple[int, int],
    fracture_rate: float,
    labeled_fraction: float,
    transfer_syntaxes: Sequence[str],
    bits_stored: Sequence[int] | None = None,
    other_parts: Sequence[str] = DEFAULT_OTHER_PARTS,
    other_share: float = DEFAULT_OTHER_SHARE,
) -> Plan:
    """Draw the whole set's plan (deterministic for ``seed``); ``other_parts`` (names of
    :data:`pipeline.synth.parts.ALL_OTHER_PARTS`) are what the ``other_share`` of
    studies that are not a knee study show (:func:`study_deck`)."""
    rng = np.random.default_rng([seed, 0])
    sites = Deck(rng, range(len(SITES)))
    injured_deck = quota_deck(rng, fracture_rate)
    labeled_deck = quota_deck(rng, labeled_fraction)
    types = TypeDealer(rng)
    studies = study_deck(rng, other_share)
    decks = AcquisitionDecks(rng, transfer_syntaxes, bits_stored)
    reader_only = quota_deck(rng, 0.15)
    reader_patterns = Deck(rng, ["unanimous", "majority", "majority", "tie"])

    images: list[ImageSpec] = []
    rows: list[dict] = []
    patient_no = 0
    while len(images) < n:
        patient_no += 1
        person = fake_patient(rng, seed, patient_no)
        site = sites.next() if rng.random() < 0.85 or not images else images[-1].site
        injury = (types.next(), str(rng.choice(["L", "R"]))) if injured_deck.next() else (0, "")
        usual_side = injury[1] or str(rng.choice(["L", "R"]))
        n_studies = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1]))
        when = dt.date(2012, 1, 1) + dt.timedelta(days=int(rng.integers(0, 4000)))
        for study_no in range(n_studies):
            if len(images) >= n:
                break
            kind = studies.next()
            if study_no:
                when += dt.timedelta(days=int(rng.integers(10, 400)))
            study = _study(rng, seed, person, patient_no, study_no, when, site)
            labeled = labeled_deck.next()
            common = dict(size=size, site=site, person=person, study=study, side=usual_side)
            if kind == "other":  # another body part, or the knee's skyline view
                body, view = part_kind(str(rng.choice(list(other_parts))))
                spec = _spec(rng, decks, seed=seed, idx=len(images), view=view, body=body, **common)
                images.append(spec)
                if rng.random() < 0.5:
                    rows.append(_row(spec.file, "", ""))
                continue
            knees = _study_knees(rng, kind, (seed, patient_no, study_no), injury, usual_side)
            views = ["AP", "LAT"] if kind == "ap+lat" and len(images) + 1 < n else ["AP"]
            first = len(images)
            for view in views:
                idx = len(images)
                partner = (first + 1 if idx == first else first) if len(views) == 2 else None
                spec = _spec(
                    rng,
                    decks,
                    seed=seed,
                    idx=idx,
                    view=view,
                    body="KNEE",
                    bilateral=kind == "bilateral",
                    knees=tuple(_dim(k, rng) for k in knees) if view == "LAT" else knees,
                    partner=partner,
                    **common,
                )
                images.append(spec)
                # labels attach to the frontal view; its lateral partner is listed unlabeled
                with_label = labeled and view != "LAT"
                rows.extend(_label_rows(spec, with_label, rng, reader_only, reader_patterns))
    return Plan(images, rows)


def _study_knees(
    rng: np.random.Generator,
    kind: str,
    key: tuple[int, int, int],
    injury: tuple[int, str],
    usual_side: str,
) -> tuple[KneeSpec, ...]:
    """The knees a knee study shows: both for a bilateral study, else one, mostly the
    patient's usual (or injured) side. ``key``: (seed, patient_no, study_no)."""
    visibility = float(np.clip(rng.beta(1.6, 1.3), 0.05, 1.0))
    if kind == "bilateral":
        return tuple(_knee(*key, side, injury, visibility) for side in ("R", "L"))
    side = usual_side if rng.random() < 0.9 or injury[0] else ("L" if usual_side == "R" else "R")
    return (_knee(*key, side, injury, visibility),)


def _knee(seed, patient_no, study_no, side, injury, visibility) -> KneeSpec:
    schatzker = injury[0] if side == injury[1] else 0
    return KneeSpec(
        laterality=side,
        schatzker=schatzker,
        visibility=round(visibility, 4) if schatzker else 0.0,
        anatomy_key=int(patient_no * 2 + (side == "L")),
        fracture_key=int((patient_no * 16 + study_no) * 2 + (side == "L")),
    )


def _dim(k: KneeSpec, rng: np.random.Generator) -> KneeSpec:
    """The lateral view of a fractured knee usually shows it a little less well."""
    if not k.schatzker:
        return k
    vis = round(float(np.clip(k.visibility * rng.uniform(0.75, 1.0), 0.05, 1.0)), 4)
    return KneeSpec(k.laterality, k.schatzker, vis, k.anatomy_key, k.fracture_key)


def _study(rng, seed, person, patient_no, study_no, when, site) -> dict:
    return {
        "uid": make_uid(seed, "study", patient_no, study_no),
        "date": when.toordinal(),
        "time": f"{int(rng.integers(7, 23)):02d}{int(rng.integers(0, 60)):02d}"
        f"{int(rng.integers(0, 60)):02d}",
        "accession": f"{SITES[site].issuer}{when.year % 100:02d}{int(rng.integers(0, 10**6)):06d}",
        "study_id": str(int(rng.integers(1, 99999))),
        "referring": physician_name(rng),
        "performing": physician_name(rng),
        "operator": physician_name(rng).replace("^^DR", ""),
        "age": age_years(dt.date.fromordinal(person["birth"]), when),
    }


class AcquisitionDecks:
    """One deck per acquisition variant, dealt once per image."""

    def __init__(
        self, rng: np.random.Generator, syntaxes: Sequence[str], bits_stored: Sequence[int] | None
    ):
        self.polarity = Deck(
            rng,
            [("MONOCHROME2", None)] * 3
            + [("MONOCHROME2", "IDENTITY")]
            + [("MONOCHROME1", None)] * 3
            + [("MONOCHROME1", "INVERSE")] * 2
            + [("MONOCHROME2", "INVERSE")],
        )
        self.bits = Deck(rng, list(bits_stored) if bits_stored else [10, 12, 12, 14, 15, 16])
        self.signed = quota_deck(rng, 0.2, size=5)
        self.rescale = Deck(
            rng, [None, None, (1.0, 0.0), (1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, 100.0)]
        )
        self.voi = Deck(
            rng,
            ["window"] * 3
            + ["window_sigmoid", "window_linear_exact", "window_multi", "lut", "lut", "none"],
        )
        self.collimation = Deck(rng, ["none", "none", *COLLIMATIONS[1:]])
        self.syntax = Deck(rng, list(syntaxes))

    def deal(self, rng: np.random.Generator) -> Acquisition:
        photometric, shape = self.polarity.next()
        return Acquisition(
            photometric=photometric,
            presentation_lut=shape,
            bits_stored=int(self.bits.next()),
            signed=bool(self.signed.next()),
            rescale=self.rescale.next(),
            voi=self.voi.next(),
            collimation=self.collimation.next(),
            marker=bool(rng.random() < 0.9),
            transfer_syntax=self.syntax.next(),
        )


def _spec(
    rng: np.random.Generator,
    decks: AcquisitionDecks,
    *,
    seed: int,
    idx: int,
    view: str,
    body: str,
    size: int | tuple[int, int],
    site: int,
    person: dict,
    study: dict,
    side: str,
    bilateral: bool = False,
    knees: tuple[KneeSpec, ...] = (),
    partner: int | None = None,
) -> ImageSpec:
    acq = decks.deal(rng)
    shown_side = "B" if bilateral else (knees[0].laterality if knees else side)
    series, study_desc = _descriptions(
        SITES[site].spanish, "BILATERAL" if bilateral else view, body, shown_side, rng
    )
    spacing_style = str(
        rng.choice(
            ["imager", "imager", "imager", "both", "both", "pixel", "none"],
            p=[0.3, 0.2, 0.1, 0.2, 0.1, 0.07, 0.03],
        )
    )
    header = {
        "series_description": series if rng.random() < 0.97 else "",
        "study_description": study_desc,
        "view_position": _view_tag(view, shown_side, rng),
        "body_part": _body_part_tag(body, rng),
        "laterality": shown_side,
        "age_tag": bool(rng.random() < 0.7),
        "spacing_style": spacing_style,
        "comments": bool(rng.random() < 0.2),
        "request_sequence": bool(rng.random() < 0.4),
        "fov_mm": float(rng.uniform(380, 440) if bilateral else rng.uniform(220, 320)),
        "kvp": int(rng.integers(55, 71)),
        "mas": round(float(rng.uniform(2.0, 10.0)), 1),
    }
    return ImageSpec(
        seed=seed,
        index=idx,
        file=f"dicom/{idx + 1:06d}.dcm",
        view=view,
        body_part=body,
        bilateral=bilateral,
        knees=tuple(knees),
        partner=partner,
        shape=_image_shape(size, bilateral, rng),
        site=site,
        patient=person,
        study=study,
        acquisition=acq,
        header=header,
    )


def _row(file: str, schatzker: str, laterality: str, readers=("", "", "")) -> dict:
    row = {"file": file, "schatzker": schatzker, "laterality": laterality}
    row.update({f"schatzker_{r}": v for r, v in zip(READERS, readers)})
    return row


def _label_rows(spec: ImageSpec, labeled: bool, rng, reader_only: Deck, patterns: Deck):
    """Rows of the labels CSV for one knee image (none, one, or one per knee)."""
    if not labeled:
        if rng.random() < 0.5:  # unlabeled files are sometimes listed, sometimes not
            return [_row(spec.file, "", "")]
        return []
    out = []
    for knee in spec.knees:
        lat = knee.laterality if spec.bilateral or rng.random() < 0.5 else ""
        truth = knee.schatzker
        if reader_only.next():
            out.append(_row(spec.file, "", lat, _readers(truth, patterns.next(), rng)))
        elif rng.random() < 0.1:  # adjudicated: readers disagreed, the consensus is given
            out.append(_row(spec.file, str(truth), lat, _readers(truth, "majority", rng)))
        else:
            out.append(_row(spec.file, str(truth), lat))
    return out


def _readers(truth: int, pattern: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """Three readers' labels: all agree, two agree on the truth, or a tie."""
    others = [t for t in range(7) if t != truth]
    near = [t for t in others if abs(t - truth) == 1] or others
    wrong = int(rng.choice(near))
    if pattern == "unanimous":
        labels = [truth, truth, truth]
    elif pattern == "majority":
        labels = [truth, truth, wrong]
    else:  # tie: two readers disagree and the third did not read, or all three differ
        third = [t for t in others if t != wrong]
        labels = [truth, wrong, "" if rng.random() < 0.5 else int(rng.choice(third))]
    order = rng.permutation(3)
    return tuple(str(labels[i]) for i in order)
