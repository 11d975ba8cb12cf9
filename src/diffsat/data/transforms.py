"""Pixel-range conversions and random geometric augmentation.

Model space is float32 in ``[-1, 1]``; file space is uint8 in ``[0, 255]``. The mapping is
``x = v / 127.5 - 1`` (so 0 -> -1.0 and 255 -> 1.0 exactly) and its rounded, clamped inverse.
"""

from __future__ import annotations

import numpy as np
import torch

from diffsat.config import DataConfig


def to_unit_range(array: np.ndarray) -> torch.Tensor:
    """uint8 array in ``[0, 255]``, any shape -> contiguous float32 tensor, same shape, in ``[-1, 1]``."""
    if array.dtype != np.uint8:
        raise TypeError(f"to_unit_range expects a uint8 array, got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float tensor in ``[-1, 1]``, any shape and device -> uint8 numpy array of the same shape.

    Values are mapped by ``(x + 1) * 127.5``, rounded to nearest and clamped to ``[0, 255]``
    (out-of-range samples saturate instead of wrapping around).
    """
    x = tensor.detach().to(device="cpu", dtype=torch.float32)
    return x.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).numpy()


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` in ``[-1, 1]`` -> uint8 ``(N, H, W, C)`` (the layout image files use)."""
    return to_uint8(images).transpose(0, 2, 3, 1)


def _coin(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(n, 1, 1, 1)`` bool tensor, each True with probability 1/2, drawn from ``generator``."""
    draw = torch.rand(n, generator=generator, device=generator.device) < 0.5
    return draw.to(device).view(n, 1, 1, 1)


def augment(batch: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    """Random per-image flips / 90-degree rotations of ``batch`` ``(B, C, H, W)`` (any range, any dtype).

    Enabled by ``cfg.hflip`` (flip the width axis with probability 1/2), ``cfg.vflip`` (flip the height
    axis with probability 1/2) and ``cfg.rot90`` (rotate by ``k * 90`` degrees, ``k`` uniform in 0..3;
    needs ``H == W``), applied in that order. All randomness comes from ``generator`` (which may live
    on another device than ``batch``), so the same generator state gives the same output. Returns a new
    ``(B, C, H, W)`` tensor; the input is not modified. With everything disabled, ``batch`` itself is
    returned and the generator is not advanced.
    """
    if batch.ndim != 4:
        raise ValueError(f"augment expects a (B, C, H, W) batch, got shape {tuple(batch.shape)}")
    n, out = batch.shape[0], batch
    if cfg.hflip:
        out = torch.where(_coin(n, generator, batch.device), out.flip(-1), out)
    if cfg.vflip:
        out = torch.where(_coin(n, generator, batch.device), out.flip(-2), out)
    if cfg.rot90:
        if batch.shape[-1] != batch.shape[-2]:
            raise ValueError(f"rot90 augmentation needs square images, got {tuple(batch.shape[-2:])}")
        k = torch.randint(0, 4, (n,), generator=generator, device=generator.device).to(batch.device)
        rotated = out.clone()
        for quarter in (1, 2, 3):
            sel = k == quarter
            rotated[sel] = torch.rot90(out[sel], quarter, dims=(-2, -1))
        out = rotated
    return out
