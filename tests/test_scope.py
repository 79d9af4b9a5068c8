"""The out-of-scope decision: held-out phantom images, the cache's record, the policies.

The shipped model was trained on phantoms of seeds 300 and 310; the held-out sets here
use other seeds (and sizes), so none of their images was seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipeline.data import SCOPE_POLICIES, build_items, scope_verdict
from pipeline.dicom import read_radiograph
from pipeline.preprocess import PreprocessConfig, build_cache
from pipeline.preprocess.scope import (
    SCOPES,
    ScopeModel,
    decide_image,
    decision_of,
)
from pipeline.preprocess.scope_train import evaluate_scope, fit_scope, scope_samples
from pipeline.synth import ALL_OTHER_PARTS, generate
from pipeline.trial import TrialConfig, TrialConfigError


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A phantom with every body part and view, unseen in training."""
    out = tmp_path_factory.mktemp("scope-held-out")
    generate(out, n=90, seed=23, size=384, other_parts=ALL_OTHER_PARTS, other_share=0.4)
    return out


@pytest.fixture(scope="module")
def held_out_clinical(tmp_path_factory):
    """The same, framed and marked as archives are (tight crops, two views, shutters...)."""
    out = tmp_path_factory.mktemp("scope-held-out-clinical")
    generate(
        out, n=90, seed=24, size=384, other_parts=ALL_OTHER_PARTS, other_share=0.4, style="clinical"
    )
    return out


@pytest.mark.parametrize("which", ["held_out", "held_out_clinical"])
def test_decision_is_accurate_on_held_out_phantom_images(which, request):
    r = evaluate_scope(request.getfixturevalue(which))
    confusion = np.asarray(r["confusion"])
    assert confusion.sum(axis=1).min() > 0, "every class is in the held-out set"
    assert r["accuracy"] >= 0.98, r["wrong"]
    assert r["out_of_scope_rejected"] >= 0.98, r["wrong"]  # none let through as frontal


def test_decision_on_the_default_test_phantom_matches_its_views(phantom_dir):
    for rec in (phantom_dir / "truth.jsonl").read_text().splitlines()[:40]:
        t = __import__("json").loads(rec)
        d = decide_image(read_radiograph(phantom_dir / t["file"]).image)
        frontal = t["view"] == "AP" and t["body_part"] == "KNEE"
        assert d.in_scope == frontal, (t["file"], t["view"], t["body_part"], d.reason)


def test_decision_is_stored_and_reads_well():
    d = decision_of(np.array([0.05, 0.15, 0.8]))
    assert (d.scope, round(d.score, 2), d.in_scope) == ("not_knee", 0.8, False)
    assert d.reason == "not a knee (0.80)"
    stored = d.to_dict()
    assert stored["in_scope"] is False and stored["knee"] is False
    assert decision_of(np.array([0.6, 0.3, 0.1])).reason == "frontal knee (0.60)"


def test_the_decision_averages_an_image_and_its_mirror():
    model = ScopeModel.load()
    rng = np.random.default_rng(0)
    img = rng.random((120, 90), dtype=np.float32)
    a = model.decide(img)
    b = model.decide(np.ascontiguousarray(img[:, ::-1]))
    assert a.scope == b.scope and a.score == pytest.approx(b.score, abs=1e-5)


def test_training_needs_every_class_and_records_its_localizer(held_out, tmp_path):
    x, y, files = scope_samples(held_out, limit=30)
    assert x.shape == (len(files), 2, x.shape[-1]) and set(y.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="other_parts"):
        fit_scope(x[y == 0], y[y == 0])
    model = fit_scope(x, y)
    path = model.save(tmp_path / "scope.npz")
    again = ScopeModel.load(path)
    assert again.localizer_sha256 == model.localizer_sha256 and again.coef.shape == (3, x.shape[-1])
    assert set(again.info["images"]) == set(SCOPES)


def test_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="scope_cli"):
        ScopeModel.load(tmp_path / "none.npz")


def test_other_localizer_weights_need_the_model_retrained():
    model = ScopeModel.load()
    stale = ScopeModel(
        coef=model.coef,
        intercept=model.intercept,
        mean=model.mean,
        scale=model.scale,
        localizer_sha256="0" * 64,
    )
    with pytest.raises(ValueError, match="retrain"):
        stale.decide(np.zeros((64, 64), np.float32))


# --------------------------------------------------------------------------- the cache


def test_every_cache_entry_holds_its_files_decision_and_the_summary_counts_them(held_out, tmp_path):
    files = sorted((held_out / "dicom").glob("*.dcm"))[:30]
    index = build_cache(files, PreprocessConfig.default(), tmp_path, progress=False)
    assert not index.errors
    assert all(e.scope is not None and e.scope["scope"] in SCOPES for e in index.entries)
    out = index.out_of_scope()
    assert out and all(reason.endswith(")") for _, reason in out)
    assert f"{len(out)} files out of scope by their pixels" in index.summary()
    again = build_cache(files, PreprocessConfig.default(), tmp_path, progress=False)
    assert again.stats["stat_hits"] == len(files) and again.out_of_scope() == out


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Entry:
    file: str
    laterality: str | None
    meta: dict[str, Any] = field(hash=False)
    scope: dict[str, Any] | None = field(default=None, hash=False)
    confidence: float = 1.0


class Index:
    def __init__(self, entries):
        self.entries = list(entries)


def decided(scope: str, score: float = 0.9) -> dict[str, Any]:
    probs = [0.05, 0.05, 0.05]
    probs[SCOPES.index(scope)] = score
    return decision_of(np.array(probs)).to_dict()


AP = {"view": "AP", "body_part": "KNEE", "patient_key": "P1", "study_key": "S1"}
LAT = {"view": "LAT", "body_part": "KNEE", "patient_key": "P1", "study_key": "S1"}
ANKLE = {"view": "AP", "body_part": "ANKLE", "patient_key": "P2"}
UNTAGGED = {"patient_key": "P3"}


def test_policies_combine_pixels_and_tags():
    entries = [
        Entry("ap_but_hip.dcm", None, AP, decided("not_knee")),  # tags wrong
        Entry("ankle_but_knee.dcm", None, ANKLE, decided("frontal_knee")),  # tags wrong
        Entry("ap.dcm", "L", AP, decided("frontal_knee")),
        Entry("lat.dcm", None, LAT, decided("other_knee_view")),
        Entry("untagged_knee.dcm", None, UNTAGGED, decided("frontal_knee")),
        Entry("untagged_chest.dcm", None, UNTAGGED, decided("not_knee")),
        Entry("old_entry.dcm", None, AP, None),  # built before the decision: tags decide
    ]
    kept = {}
    for policy in SCOPE_POLICIES:
        s = build_items(Index(entries), scope_policy=policy)
        kept[policy] = {i.file for i in s.items}
        # disagreements are reported whatever the policy: only where the tags say something
        assert {d.file for d in s.disagreements} == {"ap_but_hip.dcm", "ankle_but_knee.dcm"}
    assert kept["pixels"] == {
        "ankle_but_knee.dcm",
        "ap.dcm",
        "untagged_knee.dcm",
        "old_entry.dcm",
    }
    assert kept["tags"] == {
        "ap_but_hip.dcm",
        "ap.dcm",
        "untagged_knee.dcm",
        "untagged_chest.dcm",
        "old_entry.dcm",
    }
    assert kept["both"] == {"ap.dcm", "untagged_knee.dcm", "old_entry.dcm"}
    s = build_items(Index(entries))
    reasons = {e.file: e.reason for e in s.excluded}
    assert reasons["ap_but_hip.dcm"] == "out of scope: not a knee (0.90)"
    assert reasons["lat.dcm"] == "out of scope: other knee view (0.90)"
    summary = s.summary()
    assert summary["out_of_scope"] == 3 and summary["tag_pixel_disagreements"] == 2
    assert summary["excluded_by_reason"]["out of scope: not a knee"] == 2
    said = {d.file: str(d) for d in s.disagreements}
    assert said["ap_but_hip.dcm"].endswith(
        "tags say frontal knee (AP), pixels say not a knee (0.90)"
    )
    assert "tags say other body part (ANKLE), pixels say frontal knee" in said["ankle_but_knee.dcm"]


def test_a_lateral_partner_must_show_a_knee_by_its_pixels():
    front = Entry("ap.dcm", "L", AP, decided("frontal_knee"))
    for scope, partnered in (("other_knee_view", True), ("not_knee", False)):
        lat = Entry("lat.dcm", None, dict(LAT, laterality="L"), decided(scope))
        (item,) = build_items(Index([front, lat])).items
        assert (item.partner is not None) == partnered


def test_scope_verdict_follows_the_tags_without_a_decision():
    assert scope_verdict(AP, None) == (True, "frontal knee (AP)", None)
    assert scope_verdict(LAT, None)[0] is False


def test_the_trial_key_sets_the_policy():
    assert TrialConfig.from_dict({}).data.scope_policy == "pixels"
    assert TrialConfig.from_dict({"scope_policy": "both"}).data.scope_policy == "both"
    with pytest.raises(TrialConfigError, match="did you mean 'tags'"):
        TrialConfig.from_dict({"scope_policy": "tag"})
