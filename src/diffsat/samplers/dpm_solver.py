"""DPM-Solver++(2M): second-order multistep solver of the probability-flow ODE in data-prediction form
(Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models",
Algorithm 2).

With ``alpha = sqrt(ab)``, ``sigma = sqrt(1 - ab)`` and ``lambda = log(alpha / sigma)``, a step from t to
s (``h = lambda_s - lambda_t > 0``) is the exponential-integrator update
``x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D``, where ``D = x0_hat`` on the first step
(DPM-Solver++(1) = DDIM) and afterwards ``D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev`` with
``r = h_prev / h`` (Algorithm 2).

The final step lands on ``ab_0 = 1`` (``sigma = 0``, ``lambda = +inf``): there ``exp(-h) = 0`` and the
first-order update is exactly ``x_0 = x0_hat``, while the second-order correction degenerates
(``r = h_prev / h -> 0``). The final step is therefore always first order — the reference
implementation's ``lower_order_final`` (used there for fewer than 15 steps), which for a 2M solver
lowers only the last step; here it applies at every step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..diffusion.schedules import NoiseSchedule, respaced_alphas_cumprod
from .common import Callback, Generators, StepInfo


def half_log_snr(ab: float) -> float:
    """lambda = log(alpha / sigma) = 0.5 log(ab / (1 - ab)) for ``ab`` in (0, 1) (Lu et al. 2022, sec. 2)."""
    return 0.5 * (math.log(ab) - math.log1p(-ab))


def dpm_step(x: torch.Tensor, data: torch.Tensor, ab_t: float, ab_s: float) -> torch.Tensor:
    """Data-prediction exponential-integrator step from ``ab_t`` to ``ab_s`` in (ab_t, 1) (Lu et al. 2022,
    sec. 4: the first-order DPM-Solver++ update, equal to DDIM, with ``data`` = x0_hat; 2M passes its
    extrapolated D): ``x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) data``. ``x``, ``data``: (B, C, H, W)."""
    h = half_log_snr(ab_s) - half_log_snr(ab_t)
    ratio = ((1 - ab_s) / (1 - ab_t)) ** 0.5
    return ratio * x - ab_s**0.5 * math.expm1(-h) * data


@torch.inference_mode()
def sample(
    model: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    generator: Generators,
    callback: Callback | None = None,
    spacing: str = "logsnr",
) -> torch.Tensor:
    """Run ``steps`` DPM-Solver++(2M) steps (one network call each) from ``x`` = x_T ((B, C, H, W), standard
    normal) to x_0 (the final step returns ``x0_hat``; in [-1, 1] when the denoiser clips).

    ``model(x_t, level) -> (x0_hat, eps_hat)`` (a :class:`~diffsat.diffusion.objective.Denoiser`). The
    solver is deterministic: ``generator`` is accepted for a common sampler signature but never drawn
    from. ``spacing`` defaults to ``"logsnr"`` (uniform steps in lambda, as in the paper).
    """
    abar = respaced_alphas_cumprod(schedule, steps, spacing)
    x0_prev, h_prev = None, 0.0
    for i in range(steps, 0, -1):
        ab_t, ab_s = float(abar[i]), float(abar[i - 1])
        level = torch.full((x.shape[0],), ab_t**0.5, device=x.device)
        x0_hat, _ = model(x, level)
        if i == 1:  # ab_s = 1: lambda_s = +inf, the (first-order) step returns the data prediction
            x = x0_hat
        else:
            h = half_log_snr(ab_s) - half_log_snr(ab_t)
            data = x0_hat
            if x0_prev is not None:
                r = h_prev / h
                data = (1 + 0.5 / r) * x0_hat - (0.5 / r) * x0_prev
            x = dpm_step(x, data, ab_t, ab_s)
            x0_prev, h_prev = x0_hat, h
        if callback is not None:
            callback(StepInfo(steps - i + 1, steps, x, x0_hat, ab_t**0.5))
    return x
