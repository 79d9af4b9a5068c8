"""De-identification: the DICOM PS3.15 Annex E basic profile and salted pseudonyms.

Nothing that leaves the machine (logs, W&B, reports, exported files) may carry a
patient name, ID, birth date, accession number, institution, physician, date or UID
from a DICOM header. This module provides the two pieces the rest of the pipeline
uses for that:

- :func:`pseudonym` turns an identifier into a short salted key (``P-3fa9c1d2e0ab``).
  The same salt always gives the same key, so splits can group images by patient
  (or leave a site out) without keeping the identity; without the salt the key
  cannot be traced back.
- :func:`deidentify` applies the basic profile of PS3.15 Table E.1-1 to a dataset:
  every listed attribute is removed (X), emptied (Z), given a dummy value (D) or a
  consistently replaced UID (U), in the main dataset and inside sequences; private
  tags, curves (50xx) and overlays (60xx) are removed. Patient name and ID become
  the patient pseudonym and Institution Name the site pseudonym (dummy values the
  profile allows), so de-identified copies still group by patient and site.

The salt comes from :func:`resolve_salt`: an explicit argument, else
``$RADSEARCH_SALT``, else a per-user secret created once under
``$XDG_CONFIG_HOME/radsearch/salt``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from pipeline.registry import check_choice

__all__ = [
    "BASIC_PROFILE",
    "PSEUDONYM_PREFIXES",
    "DeidReport",
    "clean_text",
    "deidentify",
    "pseudonym",
    "replacement_uid",
    "resolve_salt",
]

SALT_ENV = "RADSEARCH_SALT"

# kind -> prefix of the key: "P-3fa9c1d2e0ab"
PSEUDONYM_PREFIXES: dict[str, str] = {"patient": "P", "study": "S", "site": "I", "image": "F"}
_KEY_HEX = 12
_KEY_RE = {
    kind: re.compile(rf"^{p}-[0-9a-f]{{{_KEY_HEX}}}$") for kind, p in PSEUDONYM_PREFIXES.items()
}


# ---------------------------------------------------------------------------------------
# Salt and pseudonyms
# ---------------------------------------------------------------------------------------


def _salt_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "radsearch" / "salt"


def resolve_salt(salt: str | bytes | None = None) -> bytes:
    """The pseudonym salt: ``salt`` if given, else ``$RADSEARCH_SALT``, else a per-user secret.

    The per-user secret (64 hex characters) is created once, readable only by its
    owner, at ``$XDG_CONFIG_HOME/radsearch/salt`` (``~/.config/radsearch/salt``).
    Creation is race-free: concurrent first calls all end up with the same secret.
    Keep the salt private and fixed for a project: a new salt gives every patient a
    new key, and anyone holding the salt can test guesses of patient IDs against keys.
    """
    if salt is not None:
        value = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
        if not value:
            raise ValueError("the pseudonym salt must not be empty")
        return value
    env = os.environ.get(SALT_ENV, "")
    if env:
        return env.encode("utf-8")
    path = _salt_file()
    with contextlib.suppress(FileNotFoundError):
        return _read_salt_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".salt.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # link() fails if another process created the file first: then read theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return _read_salt_file(path)


def _read_salt_file(path: Path) -> bytes:
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise ValueError(f"{path}: the pseudonym salt file is empty; delete it to create a new one")
    return value.encode("utf-8")


def pseudonym(kind: str, value: str, salt: str | bytes) -> str:
    """Salted key of an identifier: ``pseudonym("patient", "12345", salt) -> "P-3fa9c1d2e0ab"``.

    ``kind`` is ``"patient"``, ``"study"``, ``"site"`` or ``"image"`` (a file path;
    prefixes ``P``, ``S``, ``I``, ``F``).
    The key is the first 48 bits of HMAC-SHA256(salt, kind + value): stable for one
    salt, different for another. A value that already is a key of this kind (a
    de-identified copy written by :func:`deidentify`) is returned unchanged, so the
    original and its de-identified copy get the same key.
    """
    check_choice("pseudonym kind", kind, list(PSEUDONYM_PREFIXES))
    value = str(value).strip()
    if _KEY_RE[kind].match(value):
        return value
    key = salt.encode("utf-8") if isinstance(salt, str) else salt
    digest = hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return f"{PSEUDONYM_PREFIXES[kind]}-{digest[:_KEY_HEX]}"


def identity_keys(ds: Dataset, salt: str | bytes) -> dict[str, str | None]:
    """The patient, study and site pseudonyms of a data set (``patient_key``, ...; None if absent).

    One definition for the keys a file's ``meta`` carries and the values :func:`deidentify`
    writes into its copy, so the original and the copy group together. The patient key needs
    a PatientID (its issuer only qualifies it); a StudyID that already is a study key is kept.
    """
    pid, issuer = _text(ds, _PATIENT_ID), _text(ds, _ISSUER)
    site = [p for p in (_text(ds, _INSTITUTION), _text(ds, _STATION)) if p]
    study_id, study_uid = _text(ds, _STUDY_ID), _text(ds, _STUDY_UID)
    if study_id and _KEY_RE["study"].match(study_id):
        study = study_id
    else:
        study = pseudonym("study", study_uid, salt) if study_uid else None
    return {
        "patient_key": pseudonym("patient", "\x1f".join(p for p in (pid, issuer) if p), salt)
        if pid
        else None,
        "study_key": study,
        "site_key": pseudonym("site", "\x1f".join(site), salt) if site else None,
    }


def replacement_uid(uid: str, salt: str | bytes) -> str:
    """A new UID for ``uid``, the same every time for one salt (``2.25.<128-bit integer>``).

    Consistent replacement keeps the study/series/instance structure and every
    reference between instances intact across all the files de-identified with one salt.
    """
    key = salt.encode("utf-8") if isinstance(salt, str) else salt
    digest = hmac.new(key, b"uid\x00" + str(uid).strip().encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def clean_text(text: str, ds: Dataset) -> str:
    """``text`` with the patient's name parts, ID and accession number masked (``*``).

    Used for free-text descriptors the pipeline keeps (the series description) so
    that a description typed with the patient's name in it does not leak it.
    """
    words: set[str] = set()
    with contextlib.suppress(Exception):
        name = ds.get("PatientName")
        if name:
            words.update(w for w in re.split(r"[\^\s,=]+", str(name)) if len(w) >= 2)
    for keyword in ("PatientID", "AccessionNumber", "OtherPatientIDs"):
        with contextlib.suppress(Exception):
            value = ds.get(keyword)
            if value:
                words.update(
                    str(v).strip() for v in (value if isinstance(value, list | tuple) else [value])
                )
    words = {w for w in words if len(w) >= 2}
    if not words:
        return text
    # one pass, longest alternative first (as masking the longest words first would)
    pattern = "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))
    return re.sub(pattern, "*", text, flags=re.IGNORECASE)


# ---------------------------------------------------------------------------------------
# PS3.15 Table E.1-1, basic profile column
# ---------------------------------------------------------------------------------------

# Tag (group, element) -> action of the basic profile. Repeating groups and private
# tags are handled in code: curves (50xx,xxxx) X, overlay data and comments
# (60xx,3000) (60xx,4000) X, private attributes (odd groups) X.
_PROFILE_TEXT = """
X 00184000 00189424 00404035 001021B0 0040A353 00380010 00380020 00081084 00081080
X 00380021 00001000 00102110 40000010 0040A078 300A00C3 300A00DD 00101081 0016004D 00181007
X 00120082 00120072 00120071 00120051 00400310 00400280 300A02EB 00403001 0008009D 0050001B
X 0040051A 00700086 0018A003 00102150 0040A307 00380300 00080025 00080035 0040A07C FFFCFFFC
X 0018937F 00082111 00500020 0016004B FFFAFFFA 00380040 4008011A 40080119 300A0016 30100037
X 30100036 300A0676 00102160 00404011 300A0196 300A0072 00209158 00181008 00181005 00160076
X 00160075 0016008C 0016008D 00160088 00160087 0016008A 00160089 00160084 00160083 00160086
X 00160085 0016008E 0016007B 00160081 00160080 00160072 00160071 00160074 00160073 00160082
X 0016007A 0016008B 00160078 0016007D 0016007C 00160079 00160077 0016007F 0016007E 00160070
X 00404037 00404036 00880200 00084000 00204000 00284000 00402400 40080300 00080015 04000600
X 00080081 00081040 00081041 00101050 00401011 40080111 4008010C 40080115 40080202 40080102
X 4008010B 4008010A 00380011 00380014 00100021 00380061 00380064 001021D0 0016004F 00160050
X 00160051 0016004E 00500021 04000404 0016002B 00102000 00101090 00101080 04000550 00203406
X 00203401 0018937B 00081060 00401010 04000551 04000552 0040A192 0040A193 00102180 00402010
X 00402011 00402008 00402009 04000561 00101000 00101002 00101001 00080024 00080034 0040A07A
X 00101040 00101010 00101005 00100032 00380400 00100050 00101060 00100101 00100102 001021F0
X 00101020 00102155 00102154 00101030 00104000 00380500 00401004 00400243 00400254 00400250
X 00404051 00400251 00400253 00400244 00404050 00400245 00400241 00404030 00400242 00404028
X 00081050 00081052 00401102 00401104 00401103 00081048 00081049 00081062 40080114 00181004
X 001021C0 00400012 300A000E 30100061 00404052 300C0113 0040100A 00321030 00402001 00401002
X 00321066 00321067 04000402 00380004 00101100 00081120 04000403 00080092 00080094 00080096
X 00102152 00400275 00321070 00401400 00401001 00401005 00189937 00321032 00321033 00189185
X 00102299 00102297 40084000 40080118 40080042 30060028 30060038 30060088 30060085 300A0004
X 300A0003 00404034 0038001E 00400006 0040000B 00400007 00400004 00400005 00404008 00400009
X 00400011 00404010 00400002 00404005 00400003 00400001 00404027 00400010 00404025 00321020
X 00321021 0008103E 00380062 00380060 300A01B2 300A01A6 004006FA 001021A0 300A0216 00380050
X 0040050A 00400602 00400600 30060006 30060004 00324000 00081030 00320012 0040A354 40004000
X 20300020 00080201 00880910 00880912 00880906 00880904 00185011 300A00B2 0018100A 00181009
X 0040A352 0040A358 00384000 00189373
Z 00080050 0040A088 00120060 00120021 00120030 00120031 00120050 3010000F 30100017 0008009C
Z 3010001B 00402017 3010007F 00400513 00400562 30100043 00100030 00100010 00100040 00100020
Z 00080090 00402016 3010007B 30100081 300A067D 3010005C 300600A6 30060026 300A0615 300A0611 3010005A
Z 00400610 30060008 00080020 00200010 00080030 3010007A
D 001811BB 00120081 00120020 00120010 00120040 00120042 00400512 0040A730 30100035 30100038
D 00340002 00340001 00340007 00700001 003A0314 300A0741 300A0742 300A0783 300A0760 00401101
D 0040A123 300A0619 300A0623 300A067C 300A073A 300A0002 30100054 300A062A 0018936A 00340005
D 00400551 00189369 30060002 300A0608 30100077 300A0736 300A0734 30100033 30100034 0040A075
D 0040A073 0040A027 00189371 00189367 3010002D
U 00209161 30100006 30100013 00181002 04000100 00209164 300A0013 3010006E 00080058 0070031A
U 00200052 00080014 00083010 00281214 0018100B 00020003 003A0310 0040A402 0040A171 00281199
U 300A0650 00701101 00701102 3010000B 300A0083 3010006F 30100031 30060024 00404023 0040A172
U 00081155 00041511 300600C2 00001001 3010003B 0020000E 00080018 30100015 00880140 00200200
U 00400554 00182042 0040DB0D 0040DB0C 00620021 00081195 300A0609 300A0700 0040A124 0020000D
X/Z 00400555 00080022 00080032 22000005 22000002 00102203 00081110 00321060 300E0008 30080105
X/D 00181400 0018700A 00189517 30080054 3010004D 3010004C 30080056 00081072 00181030 30100056
X/D 00080021 00080031 00189516 30060009 30080250 30080251 300A0006 300A0007
X/Z/D 0008002A 00181000 00080082 00080080 00081070 00081111 00081010
Z/D 00700084 00080023 00080033 00180010
X/Z/U* 00081140 00082112
"""


def _parse_profile(text: str) -> dict[int, str]:
    table: dict[int, str] = {}
    for line in text.strip().splitlines():
        action, *tags = line.split()
        for tag in tags:
            if int(tag, 16) in table:
                raise ValueError(f"tag {tag} is listed twice in the profile table")
            table[int(tag, 16)] = action
    return table


#: tag (as int, ``0x00100010``) -> basic-profile action (X, Z, D, U, X/Z, X/D, X/Z/D, Z/D, X/Z/U*)
BASIC_PROFILE: dict[int, str] = _parse_profile(_PROFILE_TEXT)

# File meta elements that name the sending or receiving station (not in Table E.1-1,
# but they identify the site): removed.
_META_REMOVE = (0x00020016, 0x00020017, 0x00020018)

# How each combined action is resolved without knowing the IOD's attribute types:
# removal where the profile allows it (the strictest choice), else a zero-length
# value, else a dummy. X/Z/U* keeps the reference sequence and replaces the UIDs
# inside it, which keeps image references consistent.
_RESOLVED = dict.fromkeys(("X", "X/Z", "X/D", "X/Z/D"), "X") | dict.fromkeys(("Z", "Z/D"), "Z")
_RESOLVED |= {"D": "D", "U": "U", "X/Z/U*": "U*"}

# Dates, times and person names the table does not list (Instance Creation Date,
# Date of Last Calibration, any other name): emptied too, as E.2 asks of "dates and
# times" and "personnel involved".
_ALWAYS_EMPTIED_VRS = {"DA", "DT", "TM", "PN"}

_DUMMY_TEXT = "ANONYMOUS"
_DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    **dict.fromkeys(("US", "SS", "UL", "SL", "UV", "SV"), 0),
    **dict.fromkeys(("FL", "FD"), 0.0),
}
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}

_PATIENT_NAME, _PATIENT_ID, _ISSUER = 0x00100010, 0x00100020, 0x00100021
_INSTITUTION, _STATION, _STUDY_UID, _STUDY_ID = 0x00080080, 0x00081010, 0x0020000D, 0x00200010
_PATIENT_AGE = 0x00101010
# Retain Patient Characteristics Option (PS3.15 E.3.8): kept when asked. Sex, age, size,
# weight, ethnic group, smoking status, pregnancy status, sex neutered.
_SEX_AGE_SIZE_WEIGHT = {0x00100040, _PATIENT_AGE, 0x00101020, 0x00101030}
_PATIENT_CHARACTERISTICS = _SEX_AGE_SIZE_WEIGHT | {0x00102160, 0x001021A0, 0x001021C0, 0x00102203}


@dataclass(frozen=True, kw_only=True, eq=False)
class DeidReport:
    """What :func:`deidentify` did to one dataset; ``dataset`` is the de-identified copy.

    Each tuple lists the attributes changed by one kind of action, as keyword paths
    (``RequestAttributesSequence[0].RequestedProcedureID``; private and repeating-group
    tags as ``(0009,1001)``).
    """

    dataset: Dataset
    removed: tuple[str, ...]
    emptied: tuple[str, ...]
    replaced: tuple[str, ...]
    uids: tuple[str, ...]
    added: tuple[str, ...]
    burned_in_annotation: str | None

    @property
    def n_changed(self) -> int:
        """Number of attributes removed, emptied, replaced or given a new UID."""
        return len(self.removed) + len(self.emptied) + len(self.replaced) + len(self.uids)


class _Deidentifier:
    def __init__(self, salt: bytes, *, retain_patient_characteristics: bool) -> None:
        self.salt = salt
        self.retain = retain_patient_characteristics
        self.removed: list[str] = []
        self.emptied: list[str] = []
        self.replaced: list[str] = []
        self.uids: list[str] = []
        self.patient_key: str | None = None
        self.site_key: str | None = None
        self.study_key: str | None = None

    # keys computed from the top-level dataset before anything changes
    def prepare(self, ds: Dataset) -> None:
        keys = identity_keys(ds, self.salt)
        self.patient_key, self.study_key, self.site_key = (
            keys["patient_key"],
            keys["study_key"],
            keys["site_key"],
        )

    def walk(self, ds: Dataset, prefix: str = "", *, top: bool = False) -> None:
        for tag in list(ds.keys()):
            label = _label(tag, prefix)
            try:
                elem = ds[tag]
            except Exception:  # a value pydicom cannot parse cannot be checked: drop it
                del ds[tag]
                self.removed.append(label)
                continue
            group = tag.group
            if (
                tag.is_private
                or (group & 0xFF00) == 0x5000
                or ((group & 0xFF00) == 0x6000 and group % 2 == 0)
            ):
                del ds[tag]
                self.removed.append(label)
                continue
            action = BASIC_PROFILE.get(int(tag))
            if action is None:
                if elem.VR == "SQ":
                    self.walk_sequence(elem, label)
                elif elem.VR in _ALWAYS_EMPTIED_VRS:
                    self.apply(ds, elem, "Z", label)
                continue
            if self.retain and int(tag) in _PATIENT_CHARACTERISTICS:
                if int(tag) == _PATIENT_AGE:
                    self.cap_age(elem, label)
                continue
            if top and int(tag) in (_PATIENT_NAME, _PATIENT_ID) and self.patient_key:
                self.replace(elem, self.patient_key, label)
            elif top and int(tag) == _INSTITUTION and self.site_key:
                self.replace(elem, self.site_key, label)
            elif top and int(tag) == _STUDY_ID and self.study_key:
                self.replace(elem, self.study_key, label)
            else:
                self.apply(ds, elem, _RESOLVED[action], label)

    def walk_sequence(self, elem: DataElement, label: str) -> None:
        for i, item in enumerate(elem.value or []):
            self.walk(item, f"{label}[{i}].")

    def apply(self, ds: Dataset, elem: DataElement, action: str, label: str) -> None:
        if action == "X":
            del ds[elem.tag]
            self.removed.append(label)
        elif action == "Z":
            if elem.VR == "SQ":
                if elem.value:
                    elem.value = Sequence([])
                    self.emptied.append(label)
            elif not _is_empty(elem.value):
                elem.value = None
                self.emptied.append(label)
        elif action == "D":
            dummy = _dummy(elem.VR)
            if dummy is None:  # sequences and binary values cannot carry a safe dummy
                del ds[elem.tag]
                self.removed.append(label)
            elif elem.value != dummy:
                elem.value = dummy
                self.replaced.append(label)
        elif action == "U":
            self.replace_uid(elem, label)
        elif action == "U*":
            if elem.VR == "SQ":
                self.walk_sequence(elem, label)
            else:
                self.replace_uid(elem, label)

    def replace(self, elem: DataElement, value: str, label: str) -> None:
        if str(elem.value or "") != value:
            elem.value = value
            self.replaced.append(label)

    def replace_uid(self, elem: DataElement, label: str) -> None:
        if elem.VR != "UI":
            return
        values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
        new = [replacement_uid(str(v), self.salt) for v in values if v]
        if new:
            elem.value = new if len(new) > 1 else new[0]
            self.uids.append(label)

    def cap_age(self, elem: DataElement, label: str) -> None:
        # HIPAA Safe Harbor: ages of 90 and over are pooled into one category.
        text = str(elem.value or "").strip().upper()
        if len(text) == 4 and text[:3].isdigit() and text[3] == "Y" and int(text[:3]) >= 90:
            elem.value = "090Y"
            self.replaced.append(label)


def deidentify(
    ds: Dataset, salt: str | bytes, *, retain_patient_characteristics: bool = False
) -> DeidReport:
    """Apply the PS3.15 Annex E basic profile to a copy of ``ds``; the original is not changed.

    Actions follow Table E.1-1 (basic profile column) everywhere in the dataset,
    sequences included. Combined actions are resolved without the IOD's attribute
    types: X/Z, X/D and X/Z/D remove, Z/D empties, X/Z/U* keeps the sequence with its
    UIDs replaced; D on a sequence or binary value removes it. Dates, times and person
    names that the table does not list are emptied as well. Patient Name and
    Patient ID become the patient pseudonym, Institution Name the site pseudonym and
    Study ID the study pseudonym (dummy values the profile allows). Private tags,
    curves (50xx) and whole overlay groups (60xx) are removed. Burned In Annotation
    (0028,0301) is left as found and reported: the basic profile does not clean pixels.

    ``retain_patient_characteristics`` keeps sex, age (90 and over pooled as ``090Y``),
    size and weight (the Retain Patient Characteristics Option).

    Adds Patient Identity Removed = YES, De-identification Method (+ Code Sequence,
    DCM 113100) and Longitudinal Temporal Information Modified = REMOVED, and the study and
    site pseudonyms where the original had no Study ID or Institution Name to replace.
    """
    out = copy.deepcopy(ds)
    worker = _Deidentifier(
        resolve_salt(salt), retain_patient_characteristics=retain_patient_characteristics
    )
    worker.prepare(out)
    burned = _text(out, 0x00280301) or None
    worker.walk(out, top=True)
    meta = getattr(out, "file_meta", None)
    if meta is not None:
        for tag in list(meta.keys()):
            label = _label(tag, "")
            if int(tag) in _META_REMOVE:
                del meta[tag]
                worker.removed.append(label)
            elif BASIC_PROFILE.get(int(tag)) == "U":
                worker.replace_uid(meta[tag], label)
    added = _mark_deidentified(out, retain_patient_characteristics)
    # an original without these fields still has the key (from its study UID or station):
    # the copy carries it, so both group together
    for keyword, key in (("StudyID", worker.study_key), ("InstitutionName", worker.site_key)):
        if key and keyword not in out:
            setattr(out, keyword, key)
            added += (keyword,)
    return DeidReport(
        dataset=out,
        removed=tuple(worker.removed),
        emptied=tuple(worker.emptied),
        replaced=tuple(worker.replaced),
        uids=tuple(worker.uids),
        added=added,
        burned_in_annotation=burned,
    )


def _mark_deidentified(ds: Dataset, retained: bool) -> tuple[str, ...]:
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if retained:
        codes.append(("113108", "Retain Patient Characteristics Option"))
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    marks = {
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": "PS3.15 basic profile, salted pseudonyms",
        "DeidentificationMethodCodeSequence": Sequence(items),
        "LongitudinalTemporalInformationModified": "REMOVED",
    }
    for keyword, value in marks.items():
        setattr(ds, keyword, value)
    return tuple(marks)


def _label(tag: BaseTag, prefix: str) -> str:
    keyword = keyword_for_tag(tag) if not tag.is_private else ""
    return prefix + (keyword or f"({tag.group:04X},{tag.element:04X})")


def _text(ds: Dataset, tag: int) -> str:
    try:
        elem = ds.get(Tag(tag))
        if elem is None or elem.value is None:
            return ""
        value = elem.value
        if isinstance(value, list | tuple):
            value = "\\".join(str(v) for v in value)
        return " ".join(str(value).split())  # padding and doubled spaces do not make a new key
    except Exception:  # a value pydicom cannot convert carries no usable identifier
        return ""


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, str | bytes | list | tuple) and len(value) == 0)


def _dummy(vr: str) -> object | None:
    return _DUMMY_BY_VR.get(vr, _DUMMY_TEXT if vr in _TEXT_VRS else None)
