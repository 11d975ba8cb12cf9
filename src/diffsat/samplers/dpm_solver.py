"""DPM-Solver++(2M): second-order multistep solvers in data-prediction form (Lu et al. 2022, "DPM-Solver++:
Fast Solver for Guided Sampling of Diffusion Probabilistic Models"), for the probability-flow ODE
(Algorithm 2) and, with the same exponential integrator applied to the reverse SDE, for the SDE (the
solver that diffusers calls ``sde-dpmsolver++`` and k-diffusion ``dpmpp_2m_sde``, at full noise, eta = 1).

With ``alpha = sqrt(ab)``, ``sigma = sqrt(1 - ab)`` and ``lambda = log(alpha / sigma)``, a step from t to
s (``h = lambda_s - lambda_t > 0``) is the exponential-integrator update

- ODE: ``x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D``;
- SDE: ``x_s = (sigma_s / sigma_t) exp(-h) x_t + alpha_s (1 - exp(-2h)) D + sigma_s sqrt(1 - exp(-2h)) z``,
  ``z ~ N(0, I)``,

where ``D = x0_hat`` on the first step and afterwards ``D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev`` with
``r = h_prev / h`` (the multistep extrapolation, the same for both). With ``D = x0_hat`` the ODE step is
DDIM and the SDE step is exactly the DDPM posterior ``q(x_s | x_t, x0_hat)`` (the ancestral step): its
mean coefficient ``(sigma_s / sigma_t) exp(-h) = alpha_t sigma_s^2 / (alpha_s sigma_t^2)`` and variance
``sigma_s^2 (1 - exp(-2h))`` are Ho et al.'s eq. 7, so the SDE solver is ancestral sampling plus a
second-order correction of the data prediction.

The final step lands on ``ab_0 = 1`` (``sigma = 0``, ``lambda = +inf``): there ``exp(-h) = 0`` and the
first-order update of either form is exactly ``x_0 = x0_hat``, while the second-order correction
degenerates (``r = h_prev / h -> 0``). The final step is therefore always first order — the reference
implementation's ``lower_order_final`` (used there for fewer than 15 steps), which for a 2M solver
lowers only the last step; here it applies at every step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .common import Callback, Denoise, StackedRandomGenerator, StepInfo, steps_of

Step = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


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


def sde_dpm_step(x: torch.Tensor, data: torch.Tensor, ab_t: float, ab_s: float, noise: torch.Tensor) -> torch.Tensor:
    """The SDE counterpart of :func:`dpm_step` from ``ab_t`` to ``ab_s`` in (ab_t, 1): ``x_s = (sigma_s /
    sigma_t) exp(-h) x_t + alpha_s (1 - exp(-2h)) data + sigma_s sqrt(1 - exp(-2h)) noise``; with ``data`` =
    x0_hat this is the DDPM posterior step. ``x``, ``data``, ``noise`` (standard normal): (B, C, H, W)."""
    h = half_log_snr(ab_s) - half_log_snr(ab_t)
    kept = -math.expm1(-2 * h)  # 1 - exp(-2h), in (0, 1)
    ratio = ((1 - ab_s) / (1 - ab_t)) ** 0.5 * math.exp(-h)
    return ratio * x + ab_s**0.5 * kept * data + ((1 - ab_s) * kept) ** 0.5 * noise


def solve_multistep(
    model: Denoise, x: torch.Tensor, abar: torch.Tensor, step: Step, callback: Callback | None
) -> torch.Tensor:
    """The 2M loop shared by both solvers: one network call per level of ``abar`` (``abar[K] -> abar[0] =
    1``), the multistep data extrapolation, ``step(x, D, ab_t, ab_s)`` in between, ``x0_hat`` at the end."""
    total = len(abar) - 1
    x0_prev, h_prev = None, 0.0
    for i, ab_t, ab_s in steps_of(abar):
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
            x = step(x, data, ab_t, ab_s)
            x0_prev, h_prev = x0_hat, h
        if callback is not None:
            callback(StepInfo(total - i + 1, total, x, x0_hat, ab_t**0.5))
    return x


@torch.inference_mode()
def sample(
    model: Denoise,
    x: torch.Tensor,
    abar: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run one DPM-Solver++(2M) step per grid interval (one network call each) from ``x`` = x_T ((B, C, H, W),
    standard normal) to x_0 (the final step returns ``x0_hat``; in [-1, 1] when the denoiser clips).

    ``abar``: the noise-level grid ``(K + 1,)`` (see :mod:`diffsat.samplers.common`; the paper's grid is
    uniform in lambda, diffsat's ``logsnr`` spacing). Deterministic: it draws no noise.
    """
    return solve_multistep(model, x, abar, dpm_step, callback)


@torch.inference_mode()
def sample_sde(
    model: Denoise,
    x: torch.Tensor,
    abar: torch.Tensor,
    *,
    noise: StackedRandomGenerator,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run one SDE-DPM-Solver++(2M) step per grid interval (one network call each) from ``x`` = x_T
    ((B, C, H, W), standard normal) to x_0, as :func:`sample` but stochastic: ``noise`` is drawn once per step
    except the last, in the same order as the ancestral sampler (so that for a denoiser whose x0_hat never
    changes the two samplers agree exactly).
    """

    def noisy_step(x: torch.Tensor, data: torch.Tensor, ab_t: float, ab_s: float) -> torch.Tensor:
        return sde_dpm_step(x, data, ab_t, ab_s, noise.randn_like(x))

    return solve_multistep(model, x, abar, noisy_step, callback)
