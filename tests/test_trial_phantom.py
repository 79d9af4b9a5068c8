"""The trial's phantom keys: labeled share and fracture rate reach the generator, and
each parameter set gets its own cache folder."""

from __future__ import annotations

import json

import pytest

from pipeline import TrialConfigError
from pipeline.trial import (
    PHANTOM_FRACTURE_RATE,
    PHANTOM_LABELED_FRACTION,
    TrialConfig,
    ensure_phantom,
    phantom_folder_name,
    trial_keys,
)


def test_phantom_fraction_keys_are_trial_keys_with_the_generator_defaults():
    import inspect

    from pipeline.synth import generate

    keys = trial_keys()
    params = inspect.signature(generate).parameters
    assert keys["phantom_labeled_fraction"] == params["labeled_fraction"].default
    assert keys["phantom_fracture_rate"] == params["fracture_rate"].default
    assert params["labeled_fraction"].default == PHANTOM_LABELED_FRACTION
    assert params["fracture_rate"].default == PHANTOM_FRACTURE_RATE


@pytest.mark.parametrize("key", ["phantom_labeled_fraction", "phantom_fracture_rate"])
def test_phantom_fractions_outside_0_1_are_refused_by_name(key):
    with pytest.raises(TrialConfigError, match=key):
        TrialConfig.from_dict({key: 1.5})
    assert getattr(TrialConfig.from_dict({key: 0.5}).data, key) == 0.5


def test_each_phantom_parameter_set_has_its_own_folder():
    default = phantom_folder_name(600, 0, 256)
    assert default == "n600-seed0-px256"  # the folder trials made before these keys existed
    names = {
        default,
        phantom_folder_name(600, 0, 256, labeled_fraction=0.15),
        phantom_folder_name(600, 0, 256, fracture_rate=0.5),
        phantom_folder_name(600, 0, 256, labeled_fraction=0.15, fracture_rate=0.5),
        phantom_folder_name(600, 0, 256, labeled_fraction=0.5, fracture_rate=0.15),
    }
    assert len(names) == 5


def test_ensure_phantom_passes_the_fractions_and_reuses_the_folder(tmp_path, monkeypatch):
    import pipeline.trial.data

    calls = []

    def fake_generate(out, n, seed, *, size, labeled_fraction, fracture_rate, workers):
        calls.append((n, seed, size, labeled_fraction, fracture_rate))
        out.mkdir(parents=True)
        (out / "synth.json").write_text(json.dumps({"n": n}))

    monkeypatch.setattr(pipeline.trial.data, "generate", fake_generate)
    first = ensure_phantom(20, 3, 128, tmp_path, labeled_fraction=0.15, fracture_rate=0.5)
    again = ensure_phantom(20, 3, 128, tmp_path, labeled_fraction=0.15, fracture_rate=0.5)
    other = ensure_phantom(20, 3, 128, tmp_path)
    assert first == again != other
    assert first.name == phantom_folder_name(20, 3, 128, labeled_fraction=0.15, fracture_rate=0.5)
    assert calls == [(20, 3, 128, 0.15, 0.5), (20, 3, 128, 0.3, 0.25)]
