"""DDIM sampling over any noise-level grid (Song et al. 2021, "Denoising Diffusion Implicit Models").

For consecutive grid levels with ``ab_t`` and ``ab_s`` (s before t) the update is eq. 12:
``x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z`` with eq. 16's
``sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)``. ``eta = 0`` is deterministic (a
first-order solver of the probability-flow ODE); ``eta = 1`` is the ancestral DDPM step.
"""

from __future__ import annotations

import torch

from .common import Callback, Denoise, StackedRandomGenerator, StepInfo, steps_of


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
    model: Denoise,
    x: torch.Tensor,
    abar: torch.Tensor,
    *,
    noise: StackedRandomGenerator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Run one DDIM step per grid interval from ``x`` = x_T ((B, C, H, W), standard normal) to x_0 (the last
    step lands on ``ab_0 = 1`` and returns ``x0_hat``; in [-1, 1] when the denoiser clips).

    ``abar``: the noise-level grid ``(K + 1,)`` (see :mod:`diffsat.samplers.common`); ``eta`` >= 0 scales
    the injected noise (0: deterministic DDIM, 1: DDPM); ``noise``: the per-sample source of that noise,
    needed only when ``eta > 0``.
    """
    if eta > 0 and noise is None:
        raise ValueError("DDIM with eta > 0 draws noise: pass a noise source")
    total = len(abar) - 1
    for i, ab_t, ab_s in steps_of(abar):
        level = torch.full((x.shape[0],), ab_t**0.5, device=x.device)
        x0_hat, eps_hat = model(x, level)
        z = noise.randn_like(x) if eta > 0 and i > 1 else None
        x = ddim_step(x0_hat, eps_hat, ab_t, ab_s, eta, z)
        if callback is not None:
            callback(StepInfo(total - i + 1, total, x, x0_hat, ab_t**0.5))
    return x
