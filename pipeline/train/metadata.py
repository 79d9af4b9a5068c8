"""Metadata pretraining: teach the backbone what de-identified DICOM tags say.

Unlabeled radiographs are plentiful and their headers carry free targets: the view,
the laterality, the body part, the patient's sex and an age band. Predicting them
from the pixels is a cheap supervised pretext task on the whole unlabeled pool
(the reference project's "transfer learning in steps"). Targets come from the
``meta`` dict of ``pipeline.dicom`` (see docs/architecture.md); a missing tag is
ignored for that target (-1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.train.augment import weak_augment
from pipeline.train.models import feature_dim
from pipeline.train.runtime import pretrain_loop

AGE_BANDS = (18.0, 40.0, 60.0, 80.0)  # band edges in years: <18, 18-39, 40-59, 60-79, 80+
METADATA_TARGETS: dict[str, tuple[str, ...]] = {
    "view": ("AP", "PA", "LAT", "OTHER"),
    "laterality": ("L", "R"),
    "body_part": ("KNEE", "OTHER"),
    "sex": ("F", "M"),
    "age_band": ("<18", "18-39", "40-59", "60-79", "80+"),
}
_LATERAL_VIEWS = {"LAT", "LATERAL", "LL", "RL", "LLO", "RLO", "XTABLE"}


def metadata_targets(meta: dict[str, Any] | None) -> dict[str, int]:
    """Class index of each metadata target (-1 when the tag is missing or ambiguous)."""
    meta = meta or {}
    out = dict.fromkeys(METADATA_TARGETS, -1)
    view = meta.get("view")
    if isinstance(view, str) and view.strip():
        v = view.strip().upper()
        out["view"] = 0 if v == "AP" else 1 if v == "PA" else 2 if v in _LATERAL_VIEWS else 3
    lat = meta.get("laterality")
    if lat in ("L", "R"):
        out["laterality"] = 0 if lat == "L" else 1
    part = meta.get("body_part")
    if isinstance(part, str) and part.strip():
        out["body_part"] = 0 if part.strip().upper() == "KNEE" else 1
    sex = meta.get("patient_sex")
    if sex is not None and not (isinstance(sex, float) and np.isnan(sex)):
        out["sex"] = int(float(sex) >= 0.5)
    age = meta.get("patient_age")
    if age is not None and not (isinstance(age, float) and np.isnan(age)) and float(age) >= 0:
        out["age_band"] = int(np.searchsorted(AGE_BANDS, float(age), side="right"))
    return out


def dataset_metadata_targets(dataset: Dataset) -> torch.Tensor:
    """(N, n_targets) int64 target matrix of a dataset, columns in ``METADATA_TARGETS`` order."""
    rows = []
    for i in range(len(dataset)):
        t = metadata_targets(dataset[i].get("meta"))
        rows.append([t[k] for k in METADATA_TARGETS])
    return torch.as_tensor(np.asarray(rows, dtype=np.int64).reshape(-1, len(METADATA_TARGETS)))


class MetadataHeads(nn.Module):
    """One linear head per metadata target on top of the backbone's features."""

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(
            {k: nn.Linear(feature_dim, len(v)) for k, v in METADATA_TARGETS.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)  # (B, F)
        return {k: head(f) for k, head in self.heads.items()}  # each (B, n_k)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the targets present in the batch; targets (B, n_targets)."""
        logits = self(x)
        terms = []
        for j, key in enumerate(METADATA_TARGETS):
            t = targets[:, j]
            if bool((t >= 0).any()):
                terms.append(F.cross_entropy(logits[key].float(), t, ignore_index=-1))
        if not terms:
            return sum(p.sum() * 0.0 for p in self.parameters())
        return torch.stack(terms).mean()


def pretrain_metadata(
    backbone: nn.Module,
    dataset: Dataset,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train ``backbone`` to predict the metadata targets of ``dataset``'s items.

    Augmentation is the weak view without flips (a flip would change the laterality).
    Returns the backbone's state dict (on the CPU) and the mean loss of each epoch.
    """
    targets = dataset_metadata_targets(dataset)
    if epochs <= 0 or not bool((targets >= 0).any()):
        return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}, []
    model = MetadataHeads(backbone, feature_dim(backbone))

    def step(x: torch.Tensor, t: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        return model.loss(weak_augment(x, g, flip=False), t)

    history = pretrain_loop(
        model,
        step,
        dataset,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        stream="metadata",
        device=device,
        precision=precision,
        targets=targets,
    )
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    return state, history
