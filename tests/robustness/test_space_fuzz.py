"""Search spaces: YAML is loaded safely, and broken spaces end in SpaceError, nothing else.

A few hundred mutations of the shipped spaces (``space_fuzz.py``) each end in either a
valid space that round-trips through ``space.yaml``, or a :class:`SpaceError` whose
every line names the file (and, for a mutated key, a key path).
"""

from __future__ import annotations

import pytest
import yaml

from robustness.space_fuzz import UNSAFE_YAML, mutations
from search.space import SpaceConfig, SpaceError, load_space

N_MUTATIONS = 300


@pytest.mark.parametrize("template", UNSAFE_YAML, ids=range(len(UNSAFE_YAML)))
def test_python_tags_are_refused_not_constructed(template, tmp_path):
    marker = tmp_path / "constructed"
    path = tmp_path / "space.yaml"
    path.write_text(template.format(marker=marker))
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert not marker.exists(), "a YAML tag ran code"
    assert str(info.value).startswith(f"{path}: ")


def _outcome(path):
    try:
        return load_space(path), None
    except SpaceError as e:
        return None, e


def test_fuzzed_spaces_end_in_a_space_or_a_named_space_error(tmp_path):
    cases = mutations(N_MUTATIONS, seed=0)
    assert len(cases) == N_MUTATIONS
    errors = valid = 0
    for i, (description, data) in enumerate(cases):
        path = tmp_path / f"m{i:03d}.yaml"
        path.write_bytes(data)
        try:
            space, error = _outcome(path)
        except Exception as e:  # the property under test: nothing but SpaceError escapes
            pytest.fail(f"{description}: {type(e).__name__}: {e}")
        if error is not None:
            errors += 1
            assert error.problems, description
            for line in str(error).splitlines():
                assert line.startswith(f"{path}: "), (description, line)
                assert len(line) < 2000, (description, line[:200])
            continue
        valid += 1
        again = SpaceConfig.from_dict(yaml.safe_load(space.to_yaml()), source=str(path))
        assert again == space, description
    assert errors > N_MUTATIONS // 2, "most mutations break the space"
    assert valid > 0, "some mutations are harmless (a deleted description, ...)"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("parameters:\n  lr: {bounds: [0, .inf]}\n", "parameters.lr.bounds"),
        ("parameters:\n  lr: {bounds: [.nan, 1]}\n", "parameters.lr.bounds"),
        ("parameters:\n  lr: {bounds: [1e999, 1]}\n", "parameters.lr.bounds"),
        (
            "parameters:\n  lr: {bounds: [1" + "0" * 400 + ", 1]}\n",
            "parameters.lr.bounds",
        ),
        ("parameters:\n  lr: .inf\n  weight_decay: {bounds: [0, 1]}\n", "parameters.lr"),
        (
            "budget: {time_budget_s: .inf}\nparameters: {lr: {bounds: [0, 1]}}\n",
            "budget.time_budget_s",
        ),
        (
            "budget: {cpus_per_trial: .nan}\nparameters: {lr: {bounds: [0, 1]}}\n",
            "budget.cpus_per_trial",
        ),
    ],
)
def test_non_finite_numbers_are_named_key_errors(text, key, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert f"{path}: {key}: " in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"name: caf\xe9\n", "not UTF-8"),
        (b"[" * 5000, "not valid YAML"),
        (b"seed: " + b"9" * 5000 + b"\n", "not valid YAML"),
        (b"\xff\xfe\x00\x00", "not UTF-8"),
    ],
)
def test_undecodable_or_pathological_files_are_space_errors(data, fragment, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_bytes(data)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)
