"""Atomic writes: the old file or the new one, never a half-written one."""

from __future__ import annotations

import os

import pytest

from pipeline.io import atomic_write_bytes, atomic_write_json, stable_hash


def test_replaces_content_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}")
    assert '"a": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_last_good_file(tmp_path, monkeypatch):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"good")

    def boom(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"partial")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_new_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = atomic_write_bytes(tmp_path / "w.npz", b"x")
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_content_hash_is_xxh3_128_of_the_bytes(tmp_path):
    import xxhash

    from pipeline.io import content_hash

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    small = tmp_path / "small"
    small.write_bytes(b"DICM" * 10)
    big = tmp_path / "big"  # over one page and over the old 4 MB read chunk
    big.write_bytes(bytes(range(256)) * (5 << 12) + b"tail")
    for f in (empty, small, big):
        assert content_hash(f) == xxhash.xxh3_128(f.read_bytes()).hexdigest()
    before = content_hash(big)
    data = bytearray(big.read_bytes())
    data[-1] ^= 1  # one bit at the very end
    big.write_bytes(bytes(data))
    assert content_hash(big) != before
