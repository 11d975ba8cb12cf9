"""Non-digit images for training the digit classifier to be unsure of them (outlier exposure).

A classifier trained on clean digits alone calls pure noise an "8" with confidence 1.0, so the recognisable
fraction of a diffusion model's early, noisy samples would read 100 %. Training also on non-digits with the
uniform distribution as target (Hendrycks, Mazeika & Dietterich 2019, "Deep Anomaly Detection with Outlier
Exposure", loss weight 0.5) keeps their maximum probability low. The non-digits imitate how diffusion samples
fail: noise, noise left on a digit, smooth blobs, scattered dots and flat images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("uniform noise", "gaussian noise", "noisy digit", "blobs", "dots", "flat")


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """``(n, 1, 1, 1)`` values uniform in ``[lo, hi)``."""
    return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)


def _smooth_noise(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Noise low-passed by two 5x5 box filters, rescaled per image to zero mean and unit deviation."""
    x = torch.randn(shape, generator=gen)
    x = F.avg_pool2d(F.avg_pool2d(x, 5, 1, 2, count_include_pad=False), 5, 1, 2, count_include_pad=False)
    return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def outlier_batch(digits: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` non-digit images ``(n, 1, H, W)`` in ``[-1, 1]``, each of a random kind from :data:`KINDS`.

    ``digits``: ``(B, 1, H, W)`` real digits in ``[-1, 1]`` (B >= 1), the base of the "noisy digit" kind
    (``(1 - a) x + a eps``, ``a`` in ``[0.6, 1]``: more noise than digit). All randomness from ``generator``.
    """
    _, c, h, w = digits.shape
    shape, gen = (n, c, h, w), generator
    base = digits[torch.randint(0, len(digits), (n,), generator=gen)]
    a = _uniform(n, 0.6, 1.0, gen)
    candidates = torch.stack([
        torch.rand(shape, generator=gen) * 2 - 1,
        _uniform(n, -1.0, 0.5, gen) + _uniform(n, 0.2, 1.0, gen) * torch.randn(shape, generator=gen),
        (1 - a) * base + a * torch.randn(shape, generator=gen),
        torch.tanh(4.0 * (_smooth_noise(shape, gen) - _uniform(n, 0.0, 1.5, gen))),
        torch.where(torch.rand(shape, generator=gen) < _uniform(n, 0.03, 0.3, gen), 1.0, -1.0),
        _uniform(n, -1.0, 1.0, gen).expand(shape),
    ])  # (kinds, n, C, H, W)
    kind = torch.randint(0, len(KINDS), (n,), generator=gen)
    return candidates[kind, torch.arange(n)].clamp(-1.0, 1.0)
