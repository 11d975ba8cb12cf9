"""High-resolution outputs of a super-resolution network for a batch of low-resolution tiles.

A diffusion network draws ``draws`` outputs per tile with the sampler of ``settings`` (draw ``k`` of tile
``i`` uses seed ``seed + i * draws + k``, so a tile's outputs never depend on the batch it came in); a
regression network gives its one output. Tensors ``(B, C, h, w)`` in [-1, 1] in, ``(B, draws, C, h s, w s)``
out.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..precision import autocast
from ..runtime import resolve_device
from ..sampling import SampleSettings, generate
from ..diffusion.conditioning import from_target, regress
from .degradation import condition_input


def upscale_tiles(net: nn.Module, config: Config, low: torch.Tensor, seed: int, settings: SampleSettings,
                  draws: int = 1, progress: bool = False) -> torch.Tensor:
    """``draws`` outputs ``(B, draws, C, H, W)`` float32 on the CPU of the low-resolution ``low`` ``(B, C, h, w)``."""
    cond, target = condition_input(low.float(), config.condition.scale), config.condition.target
    if config.condition.method == "regression":
        device = resolve_device(settings.device)
        net = net.eval().to(device)
        with torch.inference_mode(), autocast(device, settings.precision == "bf16"):
            out = torch.cat([regress(net, part.to(device)).float().clamp(-1, 1).cpu()
                             for part in cond.split(settings.batch_size)])
        return from_target(out, cond, target).unsqueeze(1).expand(-1, draws, -1, -1, -1).clone()
    repeated = cond.repeat_interleave(draws, dim=0)
    out = generate(net, config, len(repeated), seed, settings, condition=repeated, progress=progress)
    return from_target(out, repeated, target).view(len(low), draws, *out.shape[1:])
