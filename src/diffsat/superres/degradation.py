"""The degradation that makes a low-resolution image from a high-resolution one, and SR3's input convention.

``degrade``: optional Gaussian blur (``blur_sigma`` high-resolution pixels), down-sampling by ``scale``
(``bicubic`` with antialiasing, or ``area``: the mean of each ``scale x scale`` block), optional Gaussian
noise (``noise_std`` in model-range units, drawn from a generator), clamped to [-1, 1]. ``condition_input``:
the low-resolution image brought back to the high-resolution size by bicubic interpolation (SR3 upsamples its
low-resolution input bicubically and concatenates it before x_t). ``consistency_psnr`` brings an output back
down by the deterministic part of the degradation (blur and down-sampling) and scores it against the input.

Images: ``(B, C, H, W)`` float32 in [-1, 1]; ``H`` and ``W`` multiples of ``scale`` for down-sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import ConditionConfig
from ..data.transforms import Shard
from ..evaluation.fidelity import psnr


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian ``(2r + 1,)`` float32 of standard deviation ``sigma``, ``r = ceil(3 sigma)``."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` blurred by a separable Gaussian of ``sigma`` pixels (reflected borders); ``sigma
    = 0`` returns ``x``."""
    if sigma == 0:
        return x
    k = gaussian_kernel(sigma).to(x.device, x.dtype)
    r, c = len(k) // 2, x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect" if min(x.shape[-2:]) > r else "replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def downsample(x: torch.Tensor, scale: int, method: str = "bicubic") -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` -> ``(B, C, H / scale, W / scale)``: antialiased bicubic, or ``area`` (block means)."""
    if x.shape[-2] % scale or x.shape[-1] % scale:
        raise ValueError(f"a {x.shape[-2]}x{x.shape[-1]} image cannot be down-sampled by {scale} exactly")
    if method == "area":
        return F.avg_pool2d(x, scale)
    return F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``x`` ``(B, C, h, w)`` -> ``(B, C, h * scale, w * scale)`` by bicubic interpolation, clamped to [-1, 1]."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def bring_down(x: torch.Tensor, cond: ConditionConfig) -> torch.Tensor:
    """The deterministic part of the degradation: blur then down-sample, ``(B, C, H, W)`` -> ``(B, C, H/s, W/s)``."""
    return downsample(gaussian_blur(x, cond.blur_sigma), cond.scale, cond.downsample)


def degrade(hr: torch.Tensor, cond: ConditionConfig, generator: torch.Generator | None = None,
            shard: Shard = (0, 1)) -> torch.Tensor:
    """The low-resolution image ``(B, C, H/s, W/s)`` in [-1, 1] of ``hr`` ``(B, C, H, W)``: :func:`bring_down`, then
    ``noise_std`` Gaussian noise drawn for the global batch of ``B * world_size`` from ``generator`` (on the
    CPU; this rank's slice kept), clamped. Noise needs a generator."""
    low = bring_down(hr, cond)
    if cond.noise_std > 0:
        if generator is None:
            raise ValueError("condition.noise_std > 0 needs a generator for the noise")
        rank, world = shard
        b = low.shape[0]
        noise = torch.randn((b * world, *low.shape[1:]), generator=generator)[rank * b : (rank + 1) * b]
        low = low + cond.noise_std * noise.to(low.device, low.dtype)
    return low.clamp(-1, 1)


def condition_input(low: torch.Tensor, scale: int) -> torch.Tensor:
    """SR3's condition image: the low-resolution ``(B, C, h, w)`` bicubically brought to ``(B, C, h s, w s)``."""
    return upsample(low, scale)


def consistency_psnr(output: torch.Tensor, low: torch.Tensor, cond: ConditionConfig) -> torch.Tensor:
    """PSNR ``(B,)`` of ``output`` ``(B, C, H, W)`` brought down by :func:`bring_down` against the low-resolution
    input ``low`` ``(B, C, H/s, W/s)``: how well the output explains its input."""
    return psnr(bring_down(output, cond).clamp(-1, 1), low)
