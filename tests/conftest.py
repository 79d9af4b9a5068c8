"""Shared fixtures: an isolated environment and small generated inputs."""

from __future__ import annotations

import os

import pytest

# No network, no accidental uploads, a fixed pseudonym salt: set before any import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RADSEARCH_SALT", "tests-salt")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Keep every cache the code writes inside pytest's temporary folder."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("RADSEARCH_CACHE", str(root / "radsearch-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "xdg-config"))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """A small synthetic phantom set (real DICOM files, labels CSV, truth sidecar)."""
    from pipeline.synth import generate

    out = tmp_path_factory.mktemp("phantom")
    generate(out, n=60, seed=7, size=256)
    return out
