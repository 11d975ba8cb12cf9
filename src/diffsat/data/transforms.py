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


def displayable(images: torch.Tensor, rgb: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 1 or 3, H, W)``: grey and RGB images as they are; multispectral images as
    the bands ``rgb`` (default the first three; a 2-band image: its first band, grey)."""
    c = images.shape[1]
    if c in (1, 3):
        return images
    if c == 2:
        return images[:, :1]
    return images[:, list(rgb or (0, 1, 2))]


def to_uint8_hwc(images: torch.Tensor, rgb: tuple[int, int, int] | None = None) -> np.ndarray:
    """Images ``(N, C, H, W)`` in ``[-1, 1]`` -> uint8 ``(N, H, W, C')`` (the layout image files use; C' = C
    for grey and RGB, else the 3 bands of :func:`displayable`)."""
    return to_uint8(displayable(images, rgb)).transpose(0, 2, 3, 1)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]`` (same shape and device); float32 passes through unchanged."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(127.5).sub_(1.0)
    if images.dtype != torch.float32:
        raise TypeError(f"expected uint8 or float32 images, got {images.dtype}")
    return images


Shard = tuple[int, int]
"""``(rank, world_size)``: draw for the global batch of ``B * world_size`` images, keep this rank's slice."""


def randint_sharded(high: int, n: int, generator: torch.Generator, shard: Shard) -> torch.Tensor:
    """``n`` integers uniform in ``[0, high)``: this rank's slice of a global draw (on the generator's device)."""
    rank, world = shard
    draw = torch.randint(0, high, (n * world,), generator=generator, device=generator.device)
    return draw[rank * n : (rank + 1) * n]


def crop(batch: torch.Tensor, size: int, generator: torch.Generator | None, shard: Shard = (0, 1)) -> torch.Tensor:
    """Crops ``(B, C, size, size)`` of ``batch`` ``(B, C, H, W)`` (any dtype, ``H, W >= size``).

    With a ``generator``, each image gets its own window, top-left corner uniform over the
    ``(H - size + 1) x (W - size + 1)`` positions (so every crop lies inside its image), drawn from
    ``generator`` (which may live on another device than ``batch``); without one, the centre window
    (offsets ``(H - size) // 2``, ``(W - size) // 2``). A batch already ``size x size`` is returned as is and
    the generator is not advanced.
    """
    n, _, h, w = batch.shape
    if h < size or w < size:
        raise ValueError(
            f"cannot crop {h}x{w} images to {size}x{size}: data.load_size must be at least data.image_size"
        )
    if h == w == size:
        return batch
    if generator is None:
        top, left = (h - size) // 2, (w - size) // 2
        return batch[:, :, top : top + size, left : left + size]
    tops = randint_sharded(h - size + 1, n, generator, shard).tolist()
    lefts = randint_sharded(w - size + 1, n, generator, shard).tolist()
    out = batch.new_empty((n, batch.shape[1], size, size))
    for i, (top, left) in enumerate(zip(tops, lefts)):
        out[i] = batch[i, :, top : top + size, left : left + size]
    return out


def _coin(n: int, generator: torch.Generator, device: torch.device, shard: Shard) -> torch.Tensor:
    """``(n, 1, 1, 1)`` bool tensor, each True with probability 1/2, drawn from ``generator``."""
    return randint_sharded(2, n, generator, shard).to(device).bool().view(n, 1, 1, 1)


def augment(batch: torch.Tensor, cfg: DataConfig, generator: torch.Generator, shard: Shard = (0, 1)) -> torch.Tensor:
    """One training batch: crop to ``cfg.image_size``, random flips / quarter turns, float32 ``[-1, 1]``.

    ``batch``: ``(B, C, H, W)`` held tiles (``H, W >= cfg.image_size``), uint8 in ``[0, 255]`` or float32 in
    ``[-1, 1]``. Steps, in this order, all randomness drawn from ``generator`` (which may live on another
    device than ``batch``; the same generator state gives the same output):

    1. crop to ``cfg.image_size``: a random window per image with ``cfg.random_crop``, else the centre
       (nothing when the tiles already have that size);
    2. ``cfg.hflip``: flip the width axis with probability 1/2; ``cfg.vflip``: the height axis;
    3. ``cfg.rot90``: rotate by ``k * 90`` degrees, ``k`` uniform in 0..3;
    4. uint8 to float32 ``[-1, 1]``.

    Returns ``(B, C, cfg.image_size, cfg.image_size)`` float32; the input is not modified. With float32
    tiles already at ``image_size`` and every option off, ``batch`` itself is returned and the generator is
    not advanced. ``shard = (rank, world_size)``: every draw is made for ``B * world_size`` images and this
    rank keeps its slice, so data-parallel ranks together augment exactly as one process would.
    """
    if batch.ndim != 4:
        raise ValueError(f"augment expects a (B, C, H, W) batch, got shape {tuple(batch.shape)}")
    out = crop(batch, cfg.image_size, generator if cfg.random_crop else None, shard)
    n = batch.shape[0]
    if cfg.hflip:
        out = torch.where(_coin(n, generator, batch.device, shard), out.flip(-1), out)
    if cfg.vflip:
        out = torch.where(_coin(n, generator, batch.device, shard), out.flip(-2), out)
    if cfg.rot90:
        k = randint_sharded(4, n, generator, shard).to(batch.device)
        rotated = out.clone()
        for quarter in (1, 2, 3):
            sel = k == quarter
            rotated[sel] = torch.rot90(out[sel], quarter, dims=(-2, -1))
        out = rotated
    return to_model_range(out).contiguous()
