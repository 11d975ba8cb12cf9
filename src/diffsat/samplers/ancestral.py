"""Ancestral DDPM sampling over any noise-level grid (Ho et al. 2020, Algorithm 2, with respacing).

For consecutive grid levels with ``ab_t`` and ``ab_s`` (s before t), the effective
``beta = 1 - ab_t / ab_s`` and the posterior ``q(x_s | x_t, x_0)`` has (Ho et al., eq. 6-7)
``mean = sqrt(ab_s) beta / (1 - ab_t) x_0 + sqrt(1 - beta) (1 - ab_s) / (1 - ab_t) x_t`` and
``variance = beta (1 - ab_s) / (1 - ab_t)``; ``x_0`` is the (clipped) denoiser estimate.
"""

from __future__ import annotations

import torch

from .common import Callback, Denoise, StackedRandomGenerator, StepInfo, steps_of


@torch.inference_mode()
def sample(
    model: Denoise,
    x: torch.Tensor,
    abar: torch.Tensor,
    *,
    noise: StackedRandomGenerator,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run one ancestral step per grid interval from ``x`` = x_T ((B, C, H, W), standard normal) to x_0.

    ``abar``: the noise-level grid ``(K + 1,)`` (see :mod:`diffsat.samplers.common`); ``noise``: the
    per-sample source of the noise added at each step but the last.
    """
    total = len(abar) - 1
    for i, ab_t, ab_s in steps_of(abar):
        level = torch.full((x.shape[0],), ab_t**0.5, device=x.device)
        x0_hat, _ = model(x, level)
        beta = 1.0 - ab_t / ab_s
        mean = (ab_s**0.5 * beta / (1 - ab_t)) * x0_hat + ((1 - beta) ** 0.5 * (1 - ab_s) / (1 - ab_t)) * x
        if i > 1:
            var = beta * (1 - ab_s) / (1 - ab_t)
            x = mean + var**0.5 * noise.randn_like(x)
        else:
            x = mean
        if callback is not None:
            callback(StepInfo(total - i + 1, total, x, x0_hat, ab_t**0.5))
    return x
