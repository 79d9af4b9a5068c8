"""Batch augmentations for greyscale radiographs, on whatever device the batch lives.

Every random parameter is drawn on the CPU from an explicit ``torch.Generator``
(never the global RNG), then applied to the whole batch with tensor ops (kornia
functionals where they help), so a seed reproduces a run on the CPU and the
augmentation runs on the GPU when the batch is there.

- ``weak_augment``: horizontal flip and a small translation (FixMatch's weak view).
- ``strong_augment``: RandAugment for greyscale (two random ops with random
  magnitudes, no colour ops, no solarize: inverting bone brightness has no meaning
  for a radiograph) followed by Cutout.
- ``ssl_augment``: a SimCLR/BYOL view: random resized crop, flip, small rotation,
  brightness, contrast, gamma, blur and noise; no colour jitter.

Images are float (B, C, H, W) in [0, 1]; outputs stay in [0, 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F


def full_precision(fn: Callable) -> Callable:
    """Run an augmentation outside autocast: under bf16/fp16 mixed precision the conv
    and sampling ops would otherwise come back in half precision."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return fn(x.float(), *args, **kwargs)

    return wrapper


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _signs(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=g).float() * 2.0 - 1.0


def _bernoulli(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def affine_matrices(
    *,
    angle: torch.Tensor,
    scale: torch.Tensor | None = None,
    aspect: torch.Tensor | None = None,
    shear_x: torch.Tensor | None = None,
    shear_y: torch.Tensor | None = None,
    tx: torch.Tensor | None = None,
    ty: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampling matrices (B, 2, 3) for ``F.affine_grid`` (output -> input, normalised coords).

    ``angle`` in radians; ``scale`` < 1 zooms in; ``tx``/``ty`` are fractions of the
    image side; ``flip`` (bool) mirrors left-right.
    """
    n = angle.shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n)
    scale = ones if scale is None else scale
    aspect = ones if aspect is None else aspect
    shear_x = zeros if shear_x is None else shear_x
    shear_y = zeros if shear_y is None else shear_y
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (B, 2, 2)
    shear = torch.stack([torch.stack([ones, shear_x], 1), torch.stack([shear_y, ones], 1)], 1)
    sx = scale * aspect.sqrt()
    sy = scale / aspect.sqrt()
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    zoom = torch.diag_embed(torch.stack([sx, sy], 1))  # (B, 2, 2)
    linear = rot @ shear @ zoom
    shift = torch.stack(
        [2.0 * (zeros if tx is None else tx), 2.0 * (zeros if ty is None else ty)], 1
    )  # (B, 2)
    return torch.cat([linear, shift[:, :, None]], dim=2)


def warp(x: torch.Tensor, theta: torch.Tensor, *, padding: str = "zeros") -> torch.Tensor:
    """Apply sampling matrices (B, 2, 3) to images (B, C, H, W)."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3), keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur; ``sigma`` (B,) in pixels."""
    k = 2 * math.ceil(3.0 * float(sigma.max())) + 1
    k = max(3, min(k, 2 * (min(x.shape[-2:]) // 2) - 1))
    s = sigma.to(device=x.device, dtype=x.dtype).clamp_min(1e-3)
    return kornia.filters.gaussian_blur2d(x, (k, k), torch.stack([s, s], 1))


@full_precision
def weak_augment(
    x: torch.Tensor, g: torch.Generator, *, translate: float = 0.125, flip: bool = True
) -> torch.Tensor:
    """Horizontal flip (p = 0.5) and a translation up to ``translate`` of the side. (B, C, H, W)"""
    n = x.shape[0]
    theta = affine_matrices(
        angle=torch.zeros(n),
        tx=_uniform(g, n, -translate, translate),
        ty=_uniform(g, n, -translate, translate),
        flip=_bernoulli(g, n, 0.5) if flip else None,
    )
    return warp(x, theta, padding="reflection").clamp(0.0, 1.0)


# --- RandAugment for greyscale: op(x, m, sign, g) with magnitudes m (n,) in [0, 1] ---

Op = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _identity(x, m, s, noise):
    return x


def _autocontrast(x, m, s, noise):
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def _equalize(x, m, s, noise):
    return kornia.enhance.equalize(x)


def _geometric(**which: float) -> Op:
    def op(x, m, s, noise):
        n = x.shape[0]
        kwargs = {"angle": torch.zeros(n)}
        for key, limit in which.items():
            kwargs[key] = s * m * limit
        return warp(x, affine_matrices(**kwargs), padding="zeros")

    return op


def _brightness(x, m, s, noise):
    return x * _per_sample(1.0 + 0.5 * s * m, x)


def _contrast(x, m, s, noise):
    mu = _mean(x)
    return mu + (x - mu) * _per_sample(1.0 + 0.5 * s * m, x)


def _sharpness(x, m, s, noise):
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    smooth = kornia.filters.filter2d(x, kernel[None].to(x), border_type="replicate")
    return smooth + (x - smooth) * _per_sample(1.0 + 0.9 * s * m, x)


def _gamma(x, m, s, noise):
    return x.clamp_min(0.0).pow(_per_sample(torch.pow(2.0, 0.7 * s * m), x))


def _blur(x, m, s, noise):
    return gaussian_blur(x, (0.1 + 1.4 * m) * x.shape[-1] / 64.0)


def _noise(x, m, s, noise):
    return x + noise.to(x) * _per_sample(0.05 * m, x)


def _posterize(x, m, s, noise):
    levels = _per_sample(torch.pow(2.0, 8.0 - torch.round(4.0 * m)), x)
    return torch.floor(x * (levels - 1) + 0.5) / (levels - 1)


RANDAUGMENT_OPS: dict[str, Op] = {
    "identity": _identity,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotate": _geometric(angle=math.radians(30.0)),
    "shear_x": _geometric(shear_x=0.3),
    "shear_y": _geometric(shear_y=0.3),
    "translate_x": _geometric(tx=0.3),
    "translate_y": _geometric(ty=0.3),
    "brightness": _brightness,
    "contrast": _contrast,
    "sharpness": _sharpness,
    "gamma": _gamma,
    "blur": _blur,
    "noise": _noise,
    "posterize": _posterize,
}


@full_precision
def cutout(
    x: torch.Tensor, g: torch.Generator, *, size: tuple[float, float] = (0.25, 0.5)
) -> torch.Tensor:
    """Fill one random square per image (side a random fraction of the image) with its mean."""
    n, _, h, w = x.shape
    side = _uniform(g, n, *size)
    cy, cx = torch.rand(n, generator=g), torch.rand(n, generator=g)
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    inside_y = (ys[None, :] - cy[:, None]).abs() <= side[:, None] / 2  # (B, H)
    inside_x = (xs[None, :] - cx[:, None]).abs() <= side[:, None] / 2  # (B, W)
    mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None].to(x.device)  # (B, 1, H, W)
    return torch.where(mask, _mean(x), x)


@full_precision
def strong_augment(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    n_ops: int = 2,
    cutout_size: tuple[float, float] = (0.25, 0.5),
) -> torch.Tensor:
    """RandAugment (``n_ops`` ops, random magnitudes) + Cutout, after the weak view. (B, C, H, W)"""
    x = weak_augment(x, g)
    n = x.shape[0]
    names = list(RANDAUGMENT_OPS)
    choice = torch.randint(0, len(names), (n_ops, n), generator=g)
    magnitude = torch.rand(n_ops, n, generator=g)
    sign = _signs(g, n_ops * n).view(n_ops, n)
    for r in range(n_ops):
        out = x.clone()
        for k, name in enumerate(names):
            rows = torch.nonzero(choice[r] == k).flatten()
            if len(rows) == 0 or name == "identity":
                continue
            # Gaussian noise only for the rows that draw it: (rows, C, H, W)
            noise = torch.randn((len(rows), *x.shape[1:]), generator=g) if name == "noise" else None
            at = rows.to(x.device)
            out[at] = RANDAUGMENT_OPS[name](x[at], magnitude[r, rows], sign[r, rows], noise).clamp(
                0.0, 1.0
            )
        x = out
    if cutout_size[1] > 0:
        x = cutout(x, g, size=cutout_size)
    return x


@full_precision
def ssl_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One self-supervised view of each image (random resized crop + radiograph intensity ops)."""
    n = x.shape[0]
    area = _uniform(g, n, 0.4, 1.0)
    aspect = torch.exp(_uniform(g, n, math.log(3 / 4), math.log(4 / 3)))
    scale = area.sqrt()
    tx = (1.0 - scale) / 2 * _uniform(g, n, -1.0, 1.0)
    ty = (1.0 - scale) / 2 * _uniform(g, n, -1.0, 1.0)
    theta = affine_matrices(
        angle=_uniform(g, n, -1.0, 1.0) * math.radians(10.0),
        scale=scale,
        aspect=aspect,
        tx=tx,
        ty=ty,
        flip=_bernoulli(g, n, 0.5),
    )
    x = warp(x, theta, padding="reflection")
    bright = torch.where(_bernoulli(g, n, 0.8), _uniform(g, n, 0.7, 1.3), torch.ones(n))
    contrast = torch.where(_bernoulli(g, n, 0.8), _uniform(g, n, 0.7, 1.3), torch.ones(n))
    gamma = torch.where(
        _bernoulli(g, n, 0.5), torch.exp(_uniform(g, n, -0.35, 0.35)), torch.ones(n)
    )
    sigma = torch.where(_bernoulli(g, n, 0.5), _uniform(g, n, 0.1, 1.5), torch.zeros(n))
    noise_std = torch.where(_bernoulli(g, n, 0.3), _uniform(g, n, 0.0, 0.03), torch.zeros(n))
    noise = torch.randn(x.shape, generator=g)
    x = x * _per_sample(bright, x)
    mu = _mean(x)
    x = (mu + (x - mu) * _per_sample(contrast, x)).clamp(0.0, 1.0)
    x = x.pow(_per_sample(gamma, x))
    blurred = gaussian_blur(x, sigma.clamp_min(0.1) * x.shape[-1] / 64.0)
    x = torch.where(_per_sample(sigma > 0, x).bool(), blurred, x)
    x = x + noise.to(x) * _per_sample(noise_std, x)
    return x.clamp(0.0, 1.0)
