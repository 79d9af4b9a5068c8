"""The 16-bit preprocessing cache: hits without decoding, errors recorded, concurrent builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import pipeline.preprocess.cache as cache_mod
from pipeline.preprocess import PreprocessConfig, build_cache

CONFIG = PreprocessConfig.from_trial({"image_size": 32, "localize": False})

# A stand-in reader for radiographs stored as .npy files: importable by worker
# processes (this module is on their sys.path) and by the subprocesses below.
READER_SOURCE = """
import json, os, time
from pathlib import Path
from types import SimpleNamespace
import numpy as np

def read_npy(path, *, salt=None):
    log = os.environ.get("FAKE_READER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(Path(path).name + "\\n")
    delay = float(os.environ.get("FAKE_READER_DELAY", "0"))
    if delay:
        time.sleep(delay)
    image = np.load(path)
    if image.ndim != 2:
        raise ValueError(f"{path}: not a 2-D image")
    return SimpleNamespace(image=image, meta={"laterality": "R", "pixel_spacing_mm": (0.5, 0.5), "patient_key": "P-" + Path(path).stem})
"""


@pytest.fixture
def fake_reader(tmp_path, monkeypatch):
    folder = tmp_path / "readermod"
    folder.mkdir()
    (folder / "fake_npy_reader.py").write_text(READER_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    import fake_npy_reader

    importlib.reload(fake_npy_reader)
    return fake_npy_reader.read_npy


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = rng.integers(60, 120, size=2)
        img = np.zeros((h, w), np.float32)
        img[5:-5, w // 4 : 3 * w // 4] = rng.uniform(0.3, 0.9, (h - 10, 3 * w // 4 - w // 4))
        p = folder / f"img{i:03d}.npy"
        np.save(p, img)
        paths.append(p)
    return paths


def entries_as_dicts(index):
    return [
        {k: v for k, v in vars(e).items() if k != "meta"}
        | {"meta": json.dumps(e.meta, sort_keys=True)}
        for e in index.entries
    ]


def test_cold_then_warm_build_does_not_decode_or_rehash(tmp_path, fake_reader, monkeypatch):
    files = make_images(tmp_path / "data", 5)
    cold = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=fake_reader)
    assert cold.stats["built"] == 5 and not cold.errors
    assert len(cold.entries) == 5
    for e in cold.entries:
        arr = cold.load(e)
        assert arr.dtype == np.uint16 and arr.shape == (32, 32)
        assert e.laterality == "R" and e.meta["patient_key"].startswith("P-")
        assert Path(e.array_path).is_relative_to(tmp_path / "cache" / CONFIG.key())

    def boom(*args, **kwargs):
        raise AssertionError("a cache hit must not decode or hash")

    monkeypatch.setattr(cache_mod, "content_hash", boom)
    warm = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=boom)
    assert warm.stats["stat_hits"] == 5 and warm.stats["built"] == 0
    assert entries_as_dicts(warm) == entries_as_dicts(cold)


def test_content_hash_hit_for_a_copied_file_and_miss_for_an_edited_one(tmp_path, fake_reader):
    files = make_images(tmp_path / "data", 2)
    build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=fake_reader)

    copy = tmp_path / "data" / "copy.npy"
    copy.write_bytes(files[0].read_bytes())

    def no_decode(*args, **kwargs):
        raise AssertionError("same content: must not decode")

    index = build_cache([copy], CONFIG, tmp_path / "cache", progress=False, reader=no_decode)
    assert index.stats["hash_hits"] == 1 and not index.errors

    img = np.load(files[1])
    img[10:20, 10:20] = 1.0
    np.save(files[1], img)
    os.utime(files[1], ns=(1, 1))  # a new mtime, whatever the clock's resolution
    index = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=fake_reader)
    assert index.stats == {"files": 2, "stat_hits": 1, "hash_hits": 0, "built": 1, "errors": 0}


def test_unreadable_files_are_recorded_and_do_not_stop_the_build(tmp_path, fake_reader):
    files = make_images(tmp_path / "data", 3)
    bad = tmp_path / "data" / "bad.npy"
    np.save(bad, np.zeros((2, 3, 4), np.float32))  # 3-D: the reader refuses it
    missing = tmp_path / "data" / "missing.npy"
    index = build_cache(
        [files[0], bad, files[1], missing, files[2]],
        CONFIG,
        tmp_path / "cache",
        progress=False,
        reader=fake_reader,
    )
    assert [e.file for e in index.entries] == [str(f) for f in files]  # as named, in order
    assert {Path(err.file).name for err in index.errors} == {"bad.npy", "missing.npy"}
    bad_err = next(err for err in index.errors if err.file.endswith("bad.npy"))
    assert bad_err.error == "ValueError" and "not a 2-D image" in bad_err.reason


def test_entries_name_files_relative_to_the_data_folder_in_input_order(tmp_path, fake_reader):
    files = make_images(tmp_path / "data" / "sub", 3)
    rel = [f.relative_to(tmp_path / "data").as_posix() for f in reversed(files)]
    index = build_cache(
        rel,
        CONFIG,
        tmp_path / "cache",
        progress=False,
        data_dir=tmp_path / "data",
        reader=fake_reader,
    )
    assert [e.file for e in index.entries] == rel


def test_outputs_are_deterministic_across_builds_and_process_counts(tmp_path, fake_reader):
    files = make_images(tmp_path / "data", 6)
    a = build_cache(files, CONFIG, tmp_path / "a", progress=False, reader=fake_reader)
    b = build_cache(files, CONFIG, tmp_path / "b", workers=2, progress=False, reader=fake_reader)
    assert b.stats["built"] == 6
    for ea, eb in zip(a.entries, b.entries, strict=True):
        assert (ea.file, ea.content_hash, ea.box) == (eb.file, eb.content_hash, eb.box)
        np.testing.assert_array_equal(a.load(ea), b.load(eb))
        assert Path(ea.array_path).read_bytes() == Path(eb.array_path).read_bytes()


def test_another_configuration_gets_another_folder(tmp_path, fake_reader):
    files = make_images(tmp_path / "data", 1)
    other = PreprocessConfig.from_trial({"image_size": 32, "localize": False, "clahe_clip": 3.0})
    a = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=fake_reader)
    b = build_cache(files, other, tmp_path / "cache", progress=False, reader=fake_reader)
    assert a.root != b.root and b.stats["built"] == 1
    assert json.loads((b.root / "config.json").read_text())["steps"][2]["clip"] == 3.0


def test_two_processes_building_at_once_give_one_valid_cache(tmp_path, fake_reader):
    files = make_images(tmp_path / "data", 8)
    log = tmp_path / "decodes.log"
    script = tmp_path / "build.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(tmp_path / "readermod")!r})
            from fake_npy_reader import read_npy
            from pipeline.preprocess import PreprocessConfig, build_cache
            cfg = PreprocessConfig.from_trial({{"image_size": 32, "localize": False}})
            files = sorted(__import__("glob").glob({str(tmp_path / "data" / "*.npy")!r}))
            index = build_cache(files, cfg, {str(tmp_path / "cache")!r}, progress=False, reader=read_npy)
            print(json.dumps({{"n": len(index.entries), "errors": len(index.errors),
                              "shas": [e.content_hash for e in index.entries]}}))
            """
        )
    )
    env = dict(os.environ, FAKE_READER_LOG=str(log), FAKE_READER_DELAY="0.05")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert results[0] == results[1] and results[0]["n"] == 8 and results[0]["errors"] == 0
    # each file decoded once in all, by whichever process got its lock first
    decoded = log.read_text().split()
    assert sorted(decoded) == sorted(f.name for f in files)
    # the cache is complete and clean: every entry loads, no temporary files are left
    root = tmp_path / "cache" / CONFIG.key()
    assert not list(root.rglob("*.tmp"))
    stat_index = json.loads((root / "stat_index.json").read_text())
    assert sorted(stat_index) == sorted(str(f.absolute()) for f in files)
    warm = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=None)
    assert warm.stats["stat_hits"] == 8
    for e in warm.entries:
        assert warm.load(e).shape == (32, 32)


def test_a_damaged_sidecar_is_rebuilt(tmp_path, fake_reader):
    files = make_images(tmp_path / "data", 1)
    index = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=fake_reader)
    sidecar = Path(index.entries[0].array_path).with_name(index.entries[0].content_hash + ".json")
    sidecar.write_text("{not json")
    again = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=fake_reader)
    assert again.stats["built"] == 1 and entries_as_dicts(again) == entries_as_dicts(index)


def test_summary_and_fake_radiograph_meta(tmp_path, fake_reader):
    files = make_images(tmp_path / "data", 2)
    index = build_cache(files, CONFIG, tmp_path / "cache", progress=False, reader=fake_reader)
    assert "2 crops from 2 files" in index.summary()
    assert isinstance(fake_reader(files[0]), SimpleNamespace)
