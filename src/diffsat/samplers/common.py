"""What every sampler shares: the per-sample noise source and the per-step callback record.

A sampler takes the noise-level grid ``abar`` (``(K + 1,)`` float64 alpha_bar at the visited steps, ``abar[0]
= 1`` the clean image, ``abar[K]`` the noisiest; built once by the caller with
:func:`diffsat.diffusion.schedules.respaced_alphas_cumprod`) and, when it draws noise, a
:class:`StackedRandomGenerator`: sample ``i`` of a run with seed ``s`` draws all its randomness from its own
``torch.Generator().manual_seed(s + i)``, so a sample depends only on its own seed, never on the batch it was
drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


class StackedRandomGenerator:
    """One CPU ``torch.Generator`` per sample; every draw is a batch whose row ``i`` comes from generator ``i``
    (as EDM's ``StackedRandomGenerator``). Sample ``offset + i`` gets seed ``seed + offset + i``."""

    def __init__(self, seed: int, n: int, offset: int = 0) -> None:
        self.generators = [torch.Generator().manual_seed(seed + offset + i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Standard normal ``(len(self), *shape)`` float32 on ``device``, row ``i`` drawn on the CPU from generator ``i``."""
        rows = [torch.randn(tuple(shape), generator=g) for g in self.generators]
        return torch.stack(rows).to(device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of ``x``'s shape ``(B, ...)`` (``B = len(self)``) on ``x``'s device."""
        if x.shape[0] != len(self):
            raise ValueError(f"a batch of {x.shape[0]} asked of {len(self)} per-sample generators")
        return self.randn(x.shape[1:], x.device)


@dataclass(frozen=True)
class StepInfo:
    """Passed to a sampler's callback after each step. Tensors are (B, C, H, W) float32."""

    index: int  # 1-based step number, 1..total
    total: int
    x: torch.Tensor  # the state after this step
    x0_hat: torch.Tensor  # the denoiser's estimate of the clean image at this step
    level: float  # the noise level sqrt(alpha_bar) the network was evaluated at


Callback = Callable[[StepInfo], None]
Denoise = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``model(x_t, level) -> (x0_hat, eps_hat)``: a :class:`~diffsat.diffusion.objective.Denoiser`."""


def steps_of(abar: torch.Tensor) -> list[tuple[int, float, float]]:
    """``[(i, ab_t, ab_s), ...]`` for ``i = K .. 1``: each step of the grid from ``ab_t = abar[i]`` to
    ``ab_s = abar[i - 1]``, noisiest first."""
    values = abar.tolist()
    return [(i, values[i], values[i - 1]) for i in range(len(values) - 1, 0, -1)]
