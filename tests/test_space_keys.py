"""Every key a shipped space searches changes what a trial does, within the space's budget.

A searched key that cannot change training wastes the search's trials: Ax spends
proposals on a dimension that is pure noise. For each shipped space and each searched
key, two trials that differ only in that key (the ends of its range, or two of its
choices; a conditional key with its parent set to a value that activates it) must end
in different weights (training keys, on a small in-memory stand-in for the data with
the space's own steps per epoch) or different crops (preprocessing keys, on a phantom
radiograph).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.preprocess import TRIAL_DEFAULTS, PreprocessConfig, preprocess
from pipeline.train import TrainConfig, fit
from pipeline.train.toy import toy_train_data
from pipeline.trial import TrialConfig
from search.parameters import ChoiceParameter, FixedParameter, RangeParameter
from search.space import SpaceConfig, load_space

SPACES = sorted((Path(__file__).resolve().parents[1] / "spaces").glob("*.yaml"))
#: what the stand-in run changes from the space, to run in seconds: a small batch, tiny
#: images, one thread, fp32 (the same numbers on every CPU), and timm's test network
#: unless the backbone is the key under test
FAST = {"batch_size": 8, "threads": 1, "precision": "32", "channels_last": False}
FAST_BACKBONE = "test_resnet"


def _cases() -> list[tuple[Path, str]]:
    return [(p, q.name) for p in SPACES for q in load_space(p).parameters.searched]


def _middle(p: RangeParameter | ChoiceParameter) -> Any:
    if isinstance(p, ChoiceParameter):
        return p.values[0]
    lo, hi = p.bounds
    mid = math.sqrt(lo * hi) if p.scale == "log" else (lo + hi) / 2
    return round(mid) if p.value_type == "int" else mid


def _ends(p: RangeParameter | ChoiceParameter) -> tuple[Any, Any]:
    if isinstance(p, ChoiceParameter):
        return p.values[0], p.values[1]
    return p.bounds


def _config(space: SpaceConfig, key: str, value: Any) -> dict[str, Any]:
    """The space's fixed settings, every other searched key at a middle value (with the
    parents of ``key`` set to activate it), and ``key`` at ``value``."""
    ps = space.parameters
    chosen: dict[str, Any] = {p.name: _middle(p) for p in ps.searched}
    p = ps.get(key)
    while getattr(p, "when", None) is not None:  # activate key's branch
        chosen[p.when.parent] = p.when.values[0]
        p = ps.get(p.when.parent)
        if isinstance(p, FixedParameter):
            break
    chosen[key] = value
    active = {
        q.name: chosen[q.name]
        for q in ps.searched
        if q.when is None or chosen.get(q.when.parent, ps.fixed.get(q.when.parent)) in q.when.values
    }
    return {**space.trial_base(), **active}


def _train(config: dict[str, Any], key: str, steps: int, tmp_path: Path) -> dict[str, torch.Tensor]:
    keys = set(TrainConfig.keys())
    train = {k: v for k, v in config.items() if k in keys}
    train.update(FAST, steps_per_epoch=steps, epochs=min(int(train.get("epochs", 2)), 2))
    if key != "backbone":
        train["backbone"] = FAST_BACKBONE
    data = toy_train_data(n_labeled=32, n_unlabeled=64, n_val=16, size=16, seed=3)
    result = fit(TrainConfig.from_dict(train), data, cache_root=tmp_path / "stages")
    return result.model.state_dict()


def _crops(config: dict[str, Any], phantom_dir: Path) -> np.ndarray:
    from pipeline.dicom import read_radiograph

    pre = TrialConfig.from_dict(config).preprocess
    radiograph = read_radiograph(next(iter(sorted((phantom_dir / "dicom").glob("*.dcm")))))
    return np.stack([c.image for c in preprocess(radiograph, PreprocessConfig.from_trial(pre))])


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    if a.keys() != b.keys():
        return True
    return any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a.values(), b.values()))


@pytest.mark.parametrize(("path", "key"), _cases(), ids=lambda v: getattr(v, "stem", v))
def test_every_searched_key_changes_the_trial(path, key, phantom_dir, tmp_path):
    space = load_space(path)
    lo, hi = _ends(space.parameters.get(key))
    a, b = _config(space, key, lo), _config(space, key, hi)
    steps = int(space.trial_base().get("steps_per_epoch") or 4)
    if key in set(TrainConfig.keys()):
        changed = _differ(
            _train(a, key, steps, tmp_path / "a"), _train(b, key, steps, tmp_path / "b")
        )
    elif key in TRIAL_DEFAULTS:
        x, y = _crops(a, phantom_dir), _crops(b, phantom_dir)
        changed = x.shape != y.shape or not np.array_equal(x, y)
    else:
        pytest.fail(f"{path.name}: no effect check for the searched key {key!r}: add one")
    assert changed, f"{path.name}: {key} = {lo!r} and {key} = {hi!r} train the same model"
