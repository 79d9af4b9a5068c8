"""PreprocessConfig: YAML forms, "did you mean" errors, stable keys, the trial mapping."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.preprocess import PreprocessConfig, PreprocessConfigError
from pipeline.preprocess.config import TRIAL_DEFAULTS
from pipeline.preprocess.localizer import WEIGHTS_FILE

STEPS = [
    "clean",
    {"localize": {"min_confidence": 0.4}},
    {"name": "window", "low": 1, "high": 99},
    {"clahe": {"clip": 3.0, "grid": 4}},
    {"pad_square": None},
    {"resize": {"size": 96}},
]


def test_every_entry_form_is_accepted_and_typed():
    cfg = PreprocessConfig.from_dict({"steps": STEPS})
    assert cfg.step_names() == ["clean", "localize", "window", "clahe", "pad_square", "resize"]
    window = cfg.steps[2].params
    assert (window.low, window.high) == (1.0, 99.0) and isinstance(window.low, float)
    assert cfg.steps[1].params.min_confidence == 0.4
    assert cfg.image_size == 96


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"steps": ["clahee"]}, "did you mean 'clahe'"),
        (
            {"steps": [{"clahe": {"clipp": 2}}]},
            "preprocess.steps[0].clahe: unknown parameter 'clipp': did you mean 'clip'",
        ),
        ({"steps": [{"window": {"low": 90, "high": 10}}]}, "preprocess.steps[0].window"),
        (
            {"steps": [{"resize": {"size": 2.5}}]},
            "preprocess.steps[0].resize.size: expected an integer",
        ),
        ({"steps": [{"clahe": {"backend": "opencvv"}}]}, "did you mean 'opencv'"),
        ({"stepz": ["clean"]}, "did you mean 'steps'"),
        ({"steps": []}, "non-empty list"),
        ({"steps": ["localize", "localize"]}, "only once"),
    ],
)
def test_invalid_configurations_name_the_key(config, message):
    with pytest.raises(PreprocessConfigError) as e:
        PreprocessConfig.from_dict(config)
    assert message in str(e.value)


def test_key_is_stable_and_follows_every_parameter():
    a = PreprocessConfig.from_dict({"steps": STEPS})
    b = PreprocessConfig.from_dict({"steps": STEPS})
    assert a.key() == b.key() and len(a.key()) == 16
    changed = [dict(s) if isinstance(s, dict) else s for s in STEPS]
    changed[3] = {"clahe": {"clip": 3.0, "grid": 8}}
    assert PreprocessConfig.from_dict({"steps": changed}).key() != a.key()
    # the round trip through to_dict keeps the key
    assert PreprocessConfig.from_dict(a.to_dict()).key() == a.key()


def test_key_follows_the_localizer_weights(tmp_path):
    copy = tmp_path / "w.npz"
    copy.write_bytes(WEIGHTS_FILE.read_bytes())
    same = PreprocessConfig.from_dict({"steps": [{"localize": {"weights": str(copy)}}]})
    key = same.key()
    copy.write_bytes(WEIGHTS_FILE.read_bytes() + b"\0")
    assert same.key() != key


def test_config_is_frozen():
    cfg = PreprocessConfig.default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps[0].params.margin = 0.5  # type: ignore[misc]


def test_from_trial_maps_the_trial_keys():
    trial = {
        "image_size": 128,
        "clahe_clip": 3.5,
        "clahe_grid": 4,
        "window_low": 1.0,
        "window_high": 98.0,
        "localize": False,
        "lr": 0.1,  # not a preprocessing key: ignored
    }
    cfg = PreprocessConfig.from_trial(trial)
    assert "localize" not in cfg.step_names()
    params = {s.name: s.params for s in cfg.steps}
    assert (params["clahe"].clip, params["clahe"].grid) == (3.5, 4)
    assert (params["window"].low, params["window"].high) == (1.0, 98.0)
    assert params["resize"].size == 128 == cfg.image_size
    default = PreprocessConfig.from_trial({})
    assert "localize" in default.step_names() and default.image_size == TRIAL_DEFAULTS["image_size"]
    assert PreprocessConfig.from_trial({"image_size": 128}).key() != default.key()
    with pytest.raises(PreprocessConfigError, match="window"):
        PreprocessConfig.from_trial({"window_low": 99.0, "window_high": 1.0})


def test_from_yaml(tmp_path):
    path = tmp_path / "pre.yaml"
    path.write_text(
        "preprocess:\n  steps:\n    - clean\n    - clahe: {clip: 1.5}\n    - resize: {size: 32}\n"
    )
    cfg = PreprocessConfig.from_yaml(path)
    assert cfg.step_names() == ["clean", "clahe", "resize"] and cfg.steps[1].params.clip == 1.5
    path.write_text("steps:\n  - clean\n  - resise\n")
    with pytest.raises(
        PreprocessConfigError, match=r"pre\.yaml: preprocess\.steps\[1\].*did you mean 'resize'"
    ):
        PreprocessConfig.from_yaml(path)
