"""What a saved model sees: its data splits, loose files, and its outputs on them.

A model folder written by ``pipeline.final.run_final`` holds ``model.pt`` (weights,
class order, threshold, preprocessing, views) and ``config.yaml`` (the resolved trial
configuration). :func:`model_data` rebuilds the model's splits from that
configuration (the same data folder, preprocessing and split seed, so "test" is the
test set the model was evaluated on); ``data_dir`` points it at another copy of the
data. :func:`files_dataset` preprocesses loose DICOM files with the model's own
preprocessing. :func:`infer` returns class probabilities and pooled features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from pipeline.data import CachedRadiographs, collate
from pipeline.dicom import candidate_files
from pipeline.io import cache_home
from pipeline.preprocess import PreprocessConfig, build_cache
from pipeline.registry import check_choice
from pipeline.train import load_model
from pipeline.train.runtime import using_threads
from pipeline.trial import LOCAL_PATH, TrialConfig, prepare_data

SPLITS = ("test", "val", "train", "unlabeled")


class ModelFolderError(ValueError):
    """A model folder that lacks what a command needs; the message says what to do."""


@dataclass
class ModelData:
    """A saved model with the data it was trained and tested on."""

    model: Any  # pipeline.train.Classifier, eval mode, CPU
    info: dict[str, Any]  # spec, classes, threshold, preprocess, views (pipeline.final)
    config: Any  # pipeline.trial.TrialConfig
    prepared: Any  # pipeline.trial.PreparedData

    def split(self, name: str) -> Any:
        """The ``test``, ``val``, ``train`` or ``unlabeled`` dataset."""
        check_choice("split", name, SPLITS)
        return getattr(self.prepared, name)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The flat trial configuration saved beside the model (``config.yaml``)."""
    path = Path(model_dir) / "config.yaml"
    if not path.is_file():
        raise ModelFolderError(
            f"{path}: no configuration here; a model folder from `python -m search promote` "
            "(pipeline.run_final) has one"
        )
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path}: expected a mapping of trial keys")
    return config


def model_data(
    model_dir: str | Path, *, data_dir: str | Path | None = None, threads: int | None = None
) -> ModelData:
    """Load the model of ``model_dir`` and rebuild its data splits (module docstring).

    ``data_dir``: use this data folder (with its ``labels.csv``) instead of the one the
    model was trained on. ``threads``: CPU threads for preprocessing and inference.
    """
    model, info = load_model(model_dir)
    config = read_config(model_dir)
    config["checkpoint_dir"] = None
    if data_dir is None and config.get("data_dir") == LOCAL_PATH:
        raise ModelFolderError(
            f"{model_dir}: this model folder does not record where its data is (it may be "
            "shared): give the data folder with --data DIR"
        )
    if config.get("cache_dir") == LOCAL_PATH:
        config["cache_dir"] = None  # $RADSEARCH_CACHE
    if data_dir is not None:
        config["data_dir"] = str(Path(data_dir).expanduser().resolve())
        config["labels"] = None
    if threads is not None:
        config["threads"] = threads
    cfg = TrialConfig.from_dict(config)
    with using_threads(cfg.train.threads):
        prepared = prepare_data(cfg)
    return ModelData(model=model, info=info, config=cfg, prepared=prepared)


def expand_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named on the command line; folders give every file under them that may be
    DICOM (:func:`pipeline.dicom.candidate_files`)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += candidate_files(p)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def files_dataset(
    files: Sequence[str | os.PathLike[str]], info: dict[str, Any], *, workers: int = 1
) -> Any:
    """Loose files, preprocessed as the model's data was, as an unlabeled dataset.

    Two-view models get a zero second channel (a loose file has no known partner).
    Files that cannot be read are left out (``dataset.errors`` lists them).
    """
    config = PreprocessConfig.from_trial(info.get("preprocess") or {})
    paths = [Path(f).absolute() for f in files]
    index = build_cache(paths, config, cache_home() / "preprocess", workers=workers, progress=False)
    dataset = CachedRadiographs(
        index.entries, index, views=info.get("views", "ap"), missing_view="zero"
    )
    dataset.errors = list(index.errors)
    return dataset


@torch.no_grad()
def infer(
    model: Any, dataset: Any, *, batch_size: int = 64, features: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (N, C) and, with ``features``, pooled features (N, F)."""
    model = model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    probs: list[torch.Tensor] = []
    feats: list[torch.Tensor] = []
    for batch in loader:
        x = batch["image"].float().to(device)  # (B, C, H, W)
        f = model.features(x)  # (B, F)
        probs.append(torch.softmax(model.head(f).float(), dim=1).cpu())  # (B, K)
        if features:
            feats.append(f.float().cpu())
    k = len(model.task.classes)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, k), np.float32)
    if not features:
        return p, None
    f = torch.cat(feats).numpy() if feats else np.zeros((0, model.num_features), np.float32)
    return p, f


def images(dataset: Any, indices: Sequence[int]) -> torch.Tensor:
    """The model inputs of ``indices`` stacked: (N, C, H, W)."""
    if not len(indices):
        c = getattr(dataset, "channels", 1)
        return torch.zeros(0, c, 1, 1)
    return torch.stack([dataset[int(i)]["image"] for i in indices])
