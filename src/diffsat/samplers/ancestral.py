"""Ancestral DDPM sampling over any number of steps (Ho et al. 2020, Algorithm 2, with respacing).

For consecutive respaced steps with ``ab_t`` and ``ab_s`` (s before t), the effective
``beta = 1 - ab_t / ab_s`` and the posterior ``q(x_s | x_t, x_0)`` has (Ho et al., eq. 6-7)
``mean = sqrt(ab_s) beta / (1 - ab_t) x_0 + sqrt(1 - beta) (1 - ab_s) / (1 - ab_t) x_t`` and
``variance = beta (1 - ab_s) / (1 - ab_t)``; ``x_0`` is the (clipped) denoiser estimate.
"""

from __future__ import annotations

import torch

from ..diffusion.schedules import NoiseSchedule, respaced_alphas_cumprod
from .common import Callback, Generators, StepInfo, randn_per_sample


@torch.inference_mode()
def sample(
    model,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    generator: Generators,
    callback: Callback | None = None,
    spacing: str = "uniform",
) -> torch.Tensor:
    """Run ``steps`` ancestral steps from ``x`` = x_T ((B, C, H, W), standard normal) to x_0 in [-1, 1].

    ``model(x_t, level) -> (x0_hat, eps_hat)`` (a :class:`~diffsat.diffusion.objective.Denoiser`);
    ``generator`` holds one generator per sample for the noise added at each step.
    """
    abar = respaced_alphas_cumprod(schedule, steps, spacing)
    for i in range(steps, 0, -1):
        ab_t, ab_s = float(abar[i]), float(abar[i - 1])
        level = torch.full((x.shape[0],), ab_t**0.5, device=x.device)
        x0_hat, _ = model(x, level)
        beta = 1.0 - ab_t / ab_s
        mean = (ab_s**0.5 * beta / (1 - ab_t)) * x0_hat + ((1 - beta) ** 0.5 * (1 - ab_s) / (1 - ab_t)) * x
        if i > 1:
            var = beta * (1 - ab_s) / (1 - ab_t)
            x = mean + var**0.5 * randn_per_sample(x.shape[1:], generator, x.device)
        else:
            x = mean
        if callback is not None:
            callback(StepInfo(steps - i + 1, steps, x, x0_hat, ab_t**0.5))
    return x
