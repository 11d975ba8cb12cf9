"""DDIM sampling over any number of respaced steps (Song et al. 2021, "Denoising Diffusion Implicit Models").

For consecutive respaced steps with ``ab_t`` and ``ab_s`` (s before t) the update is eq. 12:
``x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z`` with eq. 16's
``sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)``. ``eta = 0`` is deterministic (a
first-order solver of the probability-flow ODE); ``eta = 1`` is the ancestral DDPM step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion.schedules import NoiseSchedule, respaced_alphas_cumprod
from .common import Callback, Generators, StepInfo, randn_per_sample


def ddim_step(
    x0_hat: torch.Tensor, eps_hat: torch.Tensor, ab_t: float, ab_s: float, eta: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """One DDIM step from ``ab_t`` to ``ab_s > ab_t`` (Song et al. 2021, eq. 12 and 16).

    ``x0_hat``, ``eps_hat``: the denoiser's estimates at ``x_t``, (B, C, H, W). ``noise``: standard normal
    of the same shape, needed only when ``eta > 0`` and ``ab_s < 1``. Returns x_s, same shape.
    """
    sigma = eta * ((1 - ab_s) / (1 - ab_t)) ** 0.5 * (1 - ab_t / ab_s) ** 0.5
    x = ab_s**0.5 * x0_hat + max(1 - ab_s - sigma**2, 0.0) ** 0.5 * eps_hat
    return x + sigma * noise if sigma > 0 else x


@torch.inference_mode()
def sample(
    model: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    generator: Generators,
    callback: Callback | None = None,
    spacing: str = "uniform",
    eta: float = 0.0,
) -> torch.Tensor:
    """Run ``steps`` DDIM steps from ``x`` = x_T ((B, C, H, W), standard normal) to x_0 (the last step
    lands on ``ab_0 = 1`` and returns ``x0_hat``; in [-1, 1] when the denoiser clips).

    ``model(x_t, level) -> (x0_hat, eps_hat)`` (a :class:`~diffsat.diffusion.objective.Denoiser`);
    ``generator`` holds one generator per sample, drawn from only when ``eta > 0``; ``eta`` >= 0 scales
    the injected noise (0: deterministic DDIM, 1: DDPM).
    """
    abar = respaced_alphas_cumprod(schedule, steps, spacing)
    for i in range(steps, 0, -1):
        ab_t, ab_s = float(abar[i]), float(abar[i - 1])
        level = torch.full((x.shape[0],), ab_t**0.5, device=x.device)
        x0_hat, eps_hat = model(x, level)
        noisy = eta > 0 and i > 1
        noise = randn_per_sample(x.shape[1:], generator, x.device) if noisy else None
        x = ddim_step(x0_hat, eps_hat, ab_t, ab_s, eta, noise)
        if callback is not None:
            callback(StepInfo(steps - i + 1, steps, x, x0_hat, ab_t**0.5))
    return x
