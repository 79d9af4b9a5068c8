"""Heat maps of a classifier's evidence: GradCAM (grad-cam library) and LRP (captum).

Both methods are registered in :data:`EXPLAINERS` and share one signature::

    maps = EXPLAINERS.get("gradcam")(model, x, classes, options)   # (B, H, W) in [0, 1]

where ``model`` is a :class:`pipeline.train.Classifier`, ``x`` its input batch
(B, C, H, W) and ``classes`` the class index to explain for each image.
:func:`heatmaps` wraps them: it runs the model, picks the classes (``target``) and
returns the maps with the probabilities.

**GradCAM** (Selvaraju et al., ICCV 2017) weighs a convolutional stage's activations by
their pooled gradients. The stage comes from the timm backbone's ``feature_info``, so
any timm backbone works without a table of layer names: ``layer="last"`` is the last
stage; ``"auto"`` (the default) is the last stage too unless its map is smaller than
:data:`MIN_CAM_CELLS` cells a side at the model's input size (a 64 px input gives a
2 x 2 map at stride 32, which can only point at a quadrant), in which case it is the
deepest stage that is at least that fine (stride 8 at 64 px, stride 32 from 224 px). Any other value names a backbone module
(``"layer3"``, ``"stages.2"``). Token outputs of vision transformers (B, N, C) and
channels-last stage outputs (B, H, W, C) are reshaped to (B, C, H, W) first.

**LRP** (Bach et al., PLoS ONE 2015) runs captum's ``LRP`` on a copy of the model,
with the epsilon rule on every layer. captum has rules for ``Conv2d``, ``Linear``,
``BatchNorm2d``, pooling and ``ReLU``/``Dropout``/``Tanh`` only; timm layer types it
does not know (``Identity``, ``Flatten``, ``SiLU``, ``GELU``, ``LayerNorm``, the
squeeze-excitation gate, ...) get captum's ``EpsilonRule`` as well, which treats
them as locally linear (relevance passes through an identity or a reshape
unchanged; through a smooth activation it is scaled by its local slope). This is an
approximation of LRP for those layers, not one of the published rules for them, and
additions (residual connections) split relevance as the gradient does. Backbones
built on attention (products of two activations, for which no such rule is
meaningful) raise :class:`ExplainError` naming the backbone: use GradCAM for them.
The map is the positive relevance of the frontal (first) channel.

Every map is scaled to [0, 1] by its maximum (GradCAM's own min-max scaling); a map
with no positive evidence is all zeros.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.registry import Registry, UnknownNameError, check_choice

log = logging.getLogger(__name__)

#: ``layer="auto"``: the deepest stage whose GradCAM grid has at least this many cells
#: a side (7: the grid of a stride-32 network at 224 px, where GradCAM was designed).
MIN_CAM_CELLS = 7

#: Class-name fragments of layers that LRP cannot handle (see the module docstring).
LRP_UNSUPPORTED = ("Attention", "Attn", "Mamba", "MultiheadAttention")

TARGETS = ("fracture", "predicted")


class ExplainError(ValueError):
    """A heat map that cannot be made for this model; the message says why and what to use."""


@dataclass(frozen=True, kw_only=True)
class ExplainOptions:
    """Method settings: GradCAM's layer, LRP's epsilon."""

    layer: str = "auto"
    epsilon: float = 1e-6


Explainer = Callable[[nn.Module, torch.Tensor, Sequence[int], ExplainOptions], np.ndarray]

#: name -> explainer; the names ``--method`` accepts.
EXPLAINERS: Registry[Explainer] = Registry("explanation method")


def list_methods() -> list[str]:
    return EXPLAINERS.names()


# ----------------------------------------------------------------------------- targets


def target_classes(
    probs: torch.Tensor | np.ndarray, num_classes: int, target: str | int
) -> np.ndarray:
    """The class to explain for each image (N,).

    ``"fracture"``: the fracture class (binary task: class 1; Schatzker tasks: the most
    probable fracture type), so every map shows the evidence for a fracture, whatever
    the prediction. ``"predicted"``: the predicted class. An int: that class.
    """
    p = torch.as_tensor(probs)
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < num_classes:
            raise ExplainError(f"target class {target} is not in 0..{num_classes - 1}")
        return np.full(len(p), target, dtype=np.int64)
    check_choice("explanation target", target, TARGETS)
    if target == "predicted":
        return p.argmax(1).numpy().astype(np.int64)
    if num_classes == 2:
        return np.ones(len(p), dtype=np.int64)
    return (p[:, 1:].argmax(1) + 1).numpy().astype(np.int64)


# ----------------------------------------------------------------------------- GradCAM


def _stages(backbone: nn.Module) -> list[str]:
    info = getattr(backbone, "feature_info", None) or []
    names = [str(i["module"]) for i in info if isinstance(i, dict) and i.get("module")]
    if names:
        return names
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)][-1:]


@contextlib.contextmanager
def _capture(modules: dict[str, nn.Module]) -> Iterator[dict[str, Any]]:
    """Record the output shape of each module during one forward pass."""
    seen: dict[str, Any] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: seen.setdefault(n, out))
        for n, m in modules.items()
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _to_nchw(
    backbone: nn.Module, shape: Sequence[int], input_hw: tuple[int, int]
) -> Callable | None:
    """A reshape transform taking a stage's output to (B, C, H, W), or None if it already is."""
    if len(shape) == 4:
        _, d1, _, d3 = shape
        channels = {int(i.get("num_chs", -1)) for i in getattr(backbone, "feature_info", []) or []}
        if d3 in channels and d1 not in channels:  # (B, H, W, C): channels last
            return lambda t: t.permute(0, 3, 1, 2)
        return None
    if len(shape) == 3:  # (B, N, C) tokens
        n = int(shape[1])
        prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
        cells = n - prefix
        patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
        if patch is not None:
            ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
            gh, gw = input_hw[0] // ph, input_hw[1] // pw
        else:
            gh = gw = round(cells**0.5)
        if gh * gw != cells:
            raise ExplainError(
                f"cannot arrange {cells} tokens of backbone {type(backbone).__name__} in a grid"
            )

        def tokens(t: torch.Tensor) -> torch.Tensor:
            t = t[:, prefix:, :]  # (B, gh*gw, C)
            return t.reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)  # (B, C, gh, gw)

        return tokens
    raise ExplainError(f"stage output of shape {tuple(shape)} is not an image or a token map")


def cam_layer(
    model: nn.Module, layer: str = "auto", *, input_shape: Sequence[int]
) -> tuple[str, nn.Module, Callable | None]:
    """The GradCAM layer of a classifier: (name in the backbone, module, reshape transform).

    ``input_shape``: (C, H, W) of one input, for the ``"auto"`` rule and token grids.
    """
    backbone = model.backbone
    stages = _stages(backbone)
    if not stages:
        raise ExplainError(f"backbone {type(backbone).__name__} has no convolutional stage")
    modules = dict(backbone.named_modules())
    if layer in ("auto", "last"):
        candidates = stages if layer == "auto" else stages[-1:]
    elif layer and layer in modules:
        candidates = [layer]
    else:
        names = [n for n in modules if n and n not in stages]
        raise UnknownNameError("backbone layer", layer, stages + names)
    chosen = {n: modules[n] for n in candidates}
    c, h, w = (int(v) for v in input_shape[-3:])
    was_training = model.training
    model.eval()
    with _capture(chosen) as seen, torch.no_grad():
        model(torch.zeros(1, c, h, w, device=next(model.parameters()).device))
    model.train(was_training)
    grids: dict[str, tuple[int, int]] = {}
    transforms: dict[str, Callable | None] = {}
    for name in candidates:
        out = seen.get(name)
        if not isinstance(out, torch.Tensor):
            raise ExplainError(f"layer {name!r} of the backbone did not produce one tensor")
        transforms[name] = _to_nchw(backbone, out.shape, (h, w))
        t = transforms[name](out) if transforms[name] else out
        grids[name] = (int(t.shape[-2]), int(t.shape[-1]))
    name = candidates[-1]
    if layer == "auto" and min(grids[name]) < MIN_CAM_CELLS:
        fine = [n for n in candidates if min(grids[n]) >= MIN_CAM_CELLS]
        if fine:
            name = fine[-1]
    if (
        layer in ("auto", "last")
        and seen[name].ndim == 3
        and getattr(backbone, "global_pool", None) == "token"
        and f"{name}.norm1" in modules
    ):
        # a class-token model reads only the class token after its last block, so the
        # patch tokens' gradients there are zero: take the block's input norm instead
        # (same token layout as the block's output)
        return f"{name}.norm1", modules[f"{name}.norm1"], transforms[name]
    return name, modules[name], transforms[name]


@EXPLAINERS.register("gradcam", doc="GradCAM on the backbone's last convolutional stage")
def gradcam(
    model: nn.Module, x: torch.Tensor, classes: Sequence[int], options: ExplainOptions
) -> np.ndarray:
    """GradCAM maps (B, H, W) in [0, 1] for ``classes`` (B,), with the grad-cam library."""
    # grad-cam takes ~2 s to import on top of torch (it pulls in sklearn, scipy and
    # matplotlib): only drawing GradCAM maps needs it, not loading this module
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, module, transform = cam_layer(model, options.layer, input_shape=tuple(x.shape[1:]))
    cam = GradCAM(model=model, target_layers=[module], reshape_transform=transform)
    try:
        with torch.enable_grad():
            maps = cam(
                input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes]
            )  # (B, H, W) float32 in [0, 1]
    finally:
        cam.activations_and_grads.release()
    return np.asarray(maps, dtype=np.float32)


# ----------------------------------------------------------------------------- LRP


def lrp_model(
    model: nn.Module, *, epsilon: float = 1e-6, name: str | None = None
) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` ready for captum's LRP, and the layer types given the
    epsilon-rule approximation (see the module docstring)."""
    # captum: ~0.6 s to import on top of torch, for the lrp method only
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
    from captum.attr._utils.lrp_rules import EpsilonRule

    backbone = name or getattr(model, "backbone_name", type(model).__name__)
    for module in model.modules():
        kind = type(module).__name__
        if isinstance(module, nn.MultiheadAttention) or any(f in kind for f in LRP_UNSUPPORTED):
            raise ExplainError(
                f"LRP is not available for backbone {backbone!r}: its {kind} layers multiply "
                "two activations, which has no LRP rule in captum; use --method gradcam"
            )
    copied = copy.deepcopy(model).eval()
    approximated: set[str] = set()
    for module in copied.modules():
        if hasattr(module, "inplace"):
            module.inplace = False  # captum's hooks need the activations they saw
        if any(True for _ in module.children()):
            continue
        kind = type(module)
        if kind not in SUPPORTED_NON_LINEAR_LAYERS:
            module.rule = EpsilonRule(epsilon)
            if kind not in SUPPORTED_LAYERS_WITH_RULES:
                approximated.add(kind.__name__)
    return copied, sorted(approximated)


@EXPLAINERS.register("lrp", doc="layer-wise relevance propagation (captum, epsilon rule)")
def lrp(
    model: nn.Module, x: torch.Tensor, classes: Sequence[int], options: ExplainOptions
) -> np.ndarray:
    """LRP maps (B, H, W) in [0, 1]: positive relevance of the first input channel."""
    from captum.attr import LRP  # ~0.6 s to import: the lrp method only (see lrp_model)

    copied, approximated = lrp_model(model, epsilon=options.epsilon)
    if approximated:
        log.debug("LRP: epsilon-rule approximation for %s", ", ".join(approximated))
    inputs = x.detach().clone().requires_grad_(True)
    target = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    try:
        with torch.enable_grad():
            relevance = LRP(copied).attribute(inputs, target=target)  # (B, C, H, W)
    except (RuntimeError, TypeError) as e:
        name = getattr(model, "backbone_name", type(model).__name__)
        raise ExplainError(f"LRP failed for backbone {name!r}: {e}; use --method gradcam") from e
    maps = relevance.detach()[:, 0].clamp(min=0).cpu().numpy().astype(np.float32)  # (B, H, W)
    top = maps.reshape(len(maps), -1).max(axis=1)
    return maps / np.where(top > 0, top, 1.0)[:, None, None]


# ----------------------------------------------------------------------------- entry point


@dataclass(frozen=True, kw_only=True)
class Heatmaps:
    """Maps of a batch and what they explain."""

    maps: np.ndarray  # (N, H, W) float32 in [0, 1]
    classes: np.ndarray  # (N,) class explained
    probs: np.ndarray  # (N, C) class probabilities
    method: str
    layer: str | None  # GradCAM's layer (backbone module name)


def heatmaps(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "gradcam",
    target: str | int = "fracture",
    options: ExplainOptions | None = None,
    batch_size: int = 32,
) -> Heatmaps:
    """Heat maps of ``model`` (a Classifier) on ``x`` (N, C, H, W), in batches."""
    explainer = EXPLAINERS.get(method)
    options = options or ExplainOptions()
    model = model.eval()
    device = next(model.parameters()).device
    x = x.float().to(device)
    with torch.no_grad():
        probs = torch.cat(
            [
                torch.softmax(model(x[i : i + batch_size]).float(), 1).cpu()
                for i in range(0, len(x), batch_size)
            ]
        )  # (N, C)
    classes = target_classes(probs, probs.shape[1], target)
    maps = [
        explainer(model, x[i : i + batch_size], classes[i : i + batch_size], options)
        for i in range(0, len(x), batch_size)
    ]
    layer = None
    if method == "gradcam":
        layer = cam_layer(model, options.layer, input_shape=tuple(x.shape[1:]))[0]
    out = np.concatenate(maps) if maps else np.zeros((0, *x.shape[-2:]), np.float32)
    return Heatmaps(maps=out, classes=classes, probs=probs.numpy(), method=method, layer=layer)
