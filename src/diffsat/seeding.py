"""Seeds of a training step: every random draw of step ``s`` comes from generators seeded by ``(seed, s)``
alone, so the step after a resume is the step an uninterrupted run would take."""

from __future__ import annotations

import math

import torch


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for the randomness of one training step."""
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator of step ``step``'s draws; ``stream`` tells apart independent draws of the same step."""
    return torch.Generator().manual_seed(step_seed(seed, step) ^ stream)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the items of ``step``: epochs are seeded permutations, batches consecutive slices.

    With ``n < batch_size`` items are repeated within a batch. Returns ``(batch_size,)`` int64.
    """
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    if n < batch_size:
        perm = perm.repeat(math.ceil(batch_size / n))
    return perm[pos * batch_size : (pos + 1) * batch_size]
