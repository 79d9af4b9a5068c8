"""A trained classifier on disk: ``model.pt`` (and optionally ``model.pt2``), and back.

Every model the platform keeps goes through here: each trial's model of record (in
its checkpoint folder, so ``promote`` can compare against it), the final model, and
what ``explain`` and ``rank-unlabeled`` load::

    save_model(model, folder, model_info(model, in_chans=1, ...), example=x)
    model, info = load_model(folder)

``model.pt`` holds the state dict and ``info``: the model spec, the class order, the
decision threshold and 7-class rule, the preprocessing and the views, enough to
rebuild the classifier and its inputs without the configuration that trained it.
``model.pt2`` is a ``torch.export`` program with a dynamic batch size, loadable with
``torch.export.load`` without this package.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.io import atomic_write_bytes, atomic_write_text
from pipeline.train.models import Classifier, ModelSpec, build_model

MODEL_FILE = "model.pt"
EXPORT_FILE = "model.pt2"
FORMAT_VERSION = 1


def model_info(
    model: Classifier,
    *,
    in_chans: int,
    drop_rate: float,
    threshold: float,
    threshold_source: str,
    preprocess: Mapping[str, Any],
    views: str,
    missing_view: str,
) -> dict[str, Any]:
    """What ``model.pt`` records beside the weights (see the module docstring)."""
    prior = getattr(model, "type_prior", None)
    return {
        "format": FORMAT_VERSION,
        "spec": {
            "backbone": model.backbone_name,
            "task": model.task.name,
            "in_chans": int(in_chans),
            "drop_rate": float(drop_rate),
        },
        "classes": list(model.task.classes),
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        "type_decision": getattr(model, "type_decision", "argmax"),
        "type_prior": None if prior is None else [float(v) for v in prior],
        "preprocess": dict(preprocess),
        "views": views,
        "missing_view": missing_view,
    }


def save_model(
    model: Classifier,
    out: Path,
    info: Mapping[str, Any],
    *,
    example: torch.Tensor | None = None,
) -> list[Path]:
    """Write ``model.pt`` and, given an ``example`` input (1, C, H, W), ``model.pt2``.

    The export is a convenience (a few seconds): the state dict is the model of record,
    and a failed export leaves ``model.pt2.error.txt`` saying why.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    buf = io.BytesIO()
    torch.save({"info": dict(info), "state_dict": model.state_dict()}, buf)
    paths = [atomic_write_bytes(out / MODEL_FILE, buf.getvalue())]
    if example is None:
        return paths
    x = example.float().cpu()
    x = x.expand(2, *x.shape[1:]).contiguous()  # (2, C, H, W): batch 1 would be specialised
    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        for node in program.graph.nodes:  # source paths of this installation: not shared
            node.meta.pop("stack_trace", None)
        buf = io.BytesIO()
        torch.export.save(program, buf)
        paths.append(atomic_write_bytes(out / EXPORT_FILE, buf.getvalue()))
    except Exception as e:  # export is a convenience; the state dict is the model of record
        atomic_write_text(out / f"{EXPORT_FILE}.error.txt", f"torch.export failed: {e}\n")
    return paths


def load_model(model_dir: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """The classifier saved in ``model_dir`` (eval mode, CPU, gradients on for heat
    maps) and its info dict."""
    path = Path(model_dir) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model here (train one with python -m search promote)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    info = saved["info"]
    spec = ModelSpec(**info["spec"], pretrained="none")
    model = build_model(spec)
    model.load_state_dict(saved["state_dict"])
    # the decision rule travels with the model, as fit() leaves it (evaluate reads it)
    model.type_decision = info.get("type_decision", "argmax")
    prior = info.get("type_prior")
    model.type_prior = None if prior is None else torch.tensor(prior, dtype=torch.float32)
    return model.eval(), info
