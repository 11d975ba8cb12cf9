"""What every sampler shares: per-sample random streams and the per-step callback record.

Sample ``i`` of a run with seed ``s`` draws all its randomness from ``torch.Generator().manual_seed(s + i)``,
so a sample depends only on its own seed, never on the batch it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Generators = Sequence[torch.Generator]


@dataclass(frozen=True)
class StepInfo:
    """Passed to a sampler's callback after each step. Tensors are (B, C, H, W) float32."""

    index: int  # 1-based step number, 1..total
    total: int
    x: torch.Tensor  # the state after this step
    x0_hat: torch.Tensor  # the denoiser's estimate of the clean image at this step
    level: float  # the noise level sqrt(alpha_bar) the network was evaluated at


Callback = Callable[[StepInfo], None]


def make_generators(seed: int, n: int, offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample: sample ``offset + i`` gets seed ``seed + offset + i``."""
    return [torch.Generator().manual_seed(seed + offset + i) for i in range(n)]


def randn_per_sample(shape: Sequence[int], generators: Generators, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal ``(len(generators), *shape)`` float32, row i drawn from generator i."""
    rows = [torch.randn(tuple(shape), generator=g) for g in generators]
    return torch.stack(rows).to(device)
