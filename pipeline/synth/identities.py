"""Fake people, sites, dates and UIDs for the phantom's DICOM headers.

Every identifying field a real radiograph carries (names, IDs, birth dates, accession
numbers, institutions, physicians, dates, UIDs, a private tag with an operator's name)
is filled with invented values, so that de-identification has something to remove and
pseudonymisation has patients to group. Nothing here reads the clock or the global
random state: every value comes from the generator passed in, or from a hash of the
data set's seed, so one seed always yields the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np

FEMALE_NAMES = (
    "MARIA",
    "CARMEN",
    "ANA",
    "LUCIA",
    "ISABEL",
    "LAURA",
    "PILAR",
    "ELENA",
    "ROSA",
    "MONTSERRAT",
    "NURIA",
    "SARAH",
    "EMMA",
    "OLIVIA",
    "GRACE",
    "HANNAH",
    "CHLOE",
)
MALE_NAMES = (
    "JOSE",
    "ANTONIO",
    "MANUEL",
    "FRANCISCO",
    "JUAN",
    "JAVIER",
    "JORDI",
    "PABLO",
    "SERGIO",
    "MIGUEL",
    "DAVID",
    "JAMES",
    "OLIVER",
    "THOMAS",
    "HARRY",
    "GEORGE",
)
SURNAMES = (
    "GARCIA",
    "MARTINEZ",
    "LOPEZ",
    "SANCHEZ",
    "PEREZ",
    "GOMEZ",
    "MARTIN",
    "JIMENEZ",
    "RUIZ",
    "HERNANDEZ",
    "DIAZ",
    "MORENO",
    "PUIG",
    "FERRER",
    "VIDAL",
    "SERRA",
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILLIAMS",
    "WILSON",
    "EVANS",
    "THOMPSON",
)
STREETS = ("CALLE MAYOR", "AVDA DIAGONAL", "PASEO DEL PRADO", "HIGH STREET", "MILL LANE")
CITIES = ("VALDEMORA", "ALTAMIRA DEL RIO", "SANTA LUCIA", "NORTHFIELD", "KINGSBRIDGE")


@dataclass(frozen=True)
class Site:
    """One imaging site: a device and the header habits it comes with."""

    institution: str
    address: str
    manufacturer: str
    model: str
    modality: str  # "CR" or "DX"
    station: str
    spanish: bool  # series descriptions in Spanish
    laterality_tag: str  # "ImageLaterality", "Laterality" or "" (none written)
    issuer: str  # IssuerOfPatientID


SITES: tuple[Site, ...] = (
    Site(
        "HOSPITAL UNIVERSITARIO DE VALDEMORA",
        "CALLE DEL HOSPITAL 1, VALDEMORA",
        "AGFA",
        "CR 85-X",
        "CR",
        "RX-URG-01",
        True,
        "Laterality",
        "HUV",
    ),
    Site(
        "CLINICA SANTA LUCIA DEL MAR",
        "PASEO MARITIMO 22, SANTA LUCIA",
        "FUJIFILM Corporation",
        "FCR CAPSULA XLII",
        "CR",
        "FCR-SALA2",
        True,
        "",
        "CSL",
    ),
    Site(
        "MUTUA ASISTENCIAL ALTAMIRA",
        "AVDA DE LA INDUSTRIA 7, ALTAMIRA DEL RIO",
        "Carestream Health",
        "DRX-Evolution",
        "DX",
        "DRX-TRAUMA",
        True,
        "ImageLaterality",
        "MAA",
    ),
    Site(
        "HOSPITAL COMARCAL DEL NORTE",
        "CTRA GENERAL KM 4",
        "SIEMENS",
        "Ysio Max",
        "DX",
        "YSIO-RX3",
        True,
        "ImageLaterality",
        "HCN",
    ),
    Site(
        "NORTHFIELD GENERAL HOSPITAL",
        "12 INFIRMARY ROAD, NORTHFIELD",
        "Philips Medical Systems",
        "DigitalDiagnost",
        "DX",
        "DDIAG-ED",
        False,
        "ImageLaterality",
        "NGH",
    ),
    Site(
        "ST BRENDAN ORTHOPAEDIC CLINIC",
        "3 QUAY STREET, KINGSBRIDGE",
        "GE Healthcare",
        "Definium 8000",
        "DX",
        "DEF8000-1",
        False,
        "ImageLaterality",
        "SBC",
    ),
    Site(
        "KINGSBRIDGE COMMUNITY IMAGING",
        "UNIT 5, MILL LANE, KINGSBRIDGE",
        "KONICA MINOLTA",
        "REGIUS 190",
        "CR",
        "REGIUS-A",
        False,
        "Laterality",
        "KCI",
    ),
)


def make_uid(seed: int, *parts: object) -> str:
    """A DICOM UID under the UUID-derived root ``2.25``, fixed for (seed, parts)."""
    text = "radsearch-synth|" + "|".join(str(p) for p in (seed, *parts))
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big")
    return f"2.25.{value}"


def hash_int(text: str) -> int:
    """A process-independent integer hash of ``text`` (``hash()`` is salted per run)."""
    return int.from_bytes(text.encode("utf-8")[:8].ljust(8, b"\0"), "little")


def day(rng: np.random.Generator, first: dt.date, last: dt.date) -> dt.date:
    """A uniformly drawn date in ``[first, last]``."""
    return first + dt.timedelta(days=int(rng.integers(0, (last - first).days + 1)))


def dicom_date(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def age_years(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def dicom_age(years: int) -> str:
    return f"{max(years, 0):03d}Y"


def person_name(rng: np.random.Generator, sex: str) -> str:
    """``SURNAME1 SURNAME2^GIVEN`` (Spanish style) or ``SURNAME^GIVEN``."""
    given = rng.choice(FEMALE_NAMES if sex == "F" else MALE_NAMES)
    first, second = rng.choice(SURNAMES, size=2, replace=False)
    family = f"{first} {second}" if rng.random() < 0.6 else str(first)
    return f"{family}^{given}"


def physician_name(rng: np.random.Generator) -> str:
    given = rng.choice(FEMALE_NAMES + MALE_NAMES)
    return f"{rng.choice(SURNAMES)}^{given}^^DR"


def fake_patient(rng: np.random.Generator, seed: int, number: int) -> dict:
    """Identity of one invented patient (plain data, so it pickles to workers)."""
    sex = "F" if rng.random() < 0.5 else "M"
    birth = day(rng, dt.date(1938, 1, 1), dt.date(2004, 12, 31))
    digits = int.from_bytes(hashlib.sha256(f"{seed}|patient|{number}".encode()).digest()[:4], "big")
    return {
        "number": number,
        "id": f"{digits % 10_000_000:07d}",
        "name": person_name(rng, sex),
        "sex": sex,
        "birth": birth.toordinal(),
        "address": f"{rng.choice(STREETS)} {int(rng.integers(1, 120))}, {rng.choice(CITIES)}",
        "phone": f"+34 6{int(rng.integers(10_000_000, 99_999_999))}",
        "other_id": f"NHC{int(rng.integers(100_000, 999_999))}",
    }
