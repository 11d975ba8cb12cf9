"""Noise schedules (float64 maths) and timestep respacing.

Index convention (SR3 / DDPM): steps ``t = 1..T``; ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``; the clean
image is ``t = 0`` with ``alpha_bar_0 = 1``. The network sees ``level_t = sqrt(alpha_bar_t)``, never ``t``.
The named beta schedules reproduce DDPM-CD's ``make_beta_schedule`` number for number; a released schedule
never changes (tests pin values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import DiffusionConfig

F64 = torch.float64


def _linear(start: float, end: float, n: int) -> torch.Tensor:
    return torch.linspace(start, end, n, dtype=F64)


def _warmup(start: float, end: float, n: int, frac: float) -> torch.Tensor:
    betas = torch.full((n,), end, dtype=F64)
    warm = int(n * frac)
    betas[:warm] = torch.linspace(start, end, warm, dtype=F64)
    return betas


def _cosine(n: int, s: float = 8e-3) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas clipped at 0.999."""
    steps = torch.arange(n + 1, dtype=F64) / n + s
    alphas = torch.cos(steps / (1 + s) * math.pi / 2).pow(2)
    alphas = alphas / alphas[0]
    return (1 - alphas[1:] / alphas[:-1]).clamp(max=0.999)


BETA_SCHEDULES: dict[str, Callable[[int, float, float], torch.Tensor]] = {
    "linear": lambda n, a, b: _linear(a, b, n),
    "quad": lambda n, a, b: _linear(a**0.5, b**0.5, n) ** 2,
    "warmup10": lambda n, a, b: _warmup(a, b, n, 0.1),
    "warmup50": lambda n, a, b: _warmup(a, b, n, 0.5),
    "const": lambda n, a, b: torch.full((n,), b, dtype=F64),
    "jsd": lambda n, a, b: 1.0 / torch.linspace(n, 1, n, dtype=F64),
    "cosine": lambda n, a, b: _cosine(n),
}


def make_betas(name: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Betas ``(timesteps,)`` float64 of a named schedule (DDPM-CD ``make_beta_schedule``)."""
    try:
        fn = BETA_SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule '{name}': one of {', '.join(BETA_SCHEDULES)}") from None
    return fn(timesteps, beta_start, beta_end)


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete schedule: ``alphas_cumprod[i]`` is alpha_bar at step ``i + 1`` (float64, (T,))."""

    alphas_cumprod: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "NoiseSchedule":
        return cls(torch.cumprod(1.0 - betas.to(F64), dim=0))

    @classmethod
    def named(cls, name: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> "NoiseSchedule":
        return cls.from_betas(make_betas(name, timesteps, beta_start, beta_end))

    @classmethod
    def from_config(cls, diffusion: "DiffusionConfig") -> "NoiseSchedule":
        """The schedule a config's ``diffusion`` section describes."""
        d = diffusion
        return cls.named(d.schedule, d.timesteps, d.beta_start, d.beta_end)

    @property
    def timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def betas(self) -> torch.Tensor:
        prev = torch.cat([torch.ones(1, dtype=F64), self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / prev

    @property
    def levels(self) -> torch.Tensor:
        """sqrt(alpha_bar_t) for t = 1..T, (T,) float64, decreasing."""
        return self.alphas_cumprod.sqrt()

    @property
    def levels_with_zero(self) -> torch.Tensor:
        """sqrt(alpha_bar_t) for t = 0..T (SR3's ``sqrt_alphas_cumprod_prev``), (T + 1,), first entry 1."""
        return torch.cat([torch.ones(1, dtype=F64), self.levels])


SPACINGS: dict[str, Callable[[int], torch.Tensor]] = {
    # Fractions of T in (0, 1], increasing, last = 1.
    "uniform": lambda k: torch.linspace(0, 1, k + 1, dtype=F64)[1:],
    "quadratic": lambda k: torch.linspace(0, 1, k + 1, dtype=F64)[1:] ** 2,
    # diffusers' "trailing" (round(T - arange(0, T, T/k)), reversed) in 1-based steps: j/k for j = 1..k.
    # The same grid as "uniform" except where float rounding of an exact .5 tie differs.
    "trailing": lambda k: torch.arange(1, k + 1, dtype=F64) / k,
}


def respace(timesteps: int, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """Choose ``steps`` of the training steps ``1..timesteps`` to sample with (improved-diffusion respacing).

    Returns an increasing int64 tensor ``(steps,)`` whose last entry is ``timesteps`` (sampling starts from
    the noisiest level). ``uniform``: evenly spaced; ``quadratic``: denser near t = 0.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and the schedule's {timesteps} timesteps, got {steps}")
    try:
        grid = SPACINGS[spacing](steps)
    except KeyError:
        raise ValueError(f"unknown spacing '{spacing}': one of {', '.join(SPACINGS)}") from None
    chosen = torch.round(grid * timesteps).long().clamp(1, timesteps)
    return _strictly_increasing(chosen, timesteps)


def _strictly_increasing(chosen: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Push colliding steps apart where rounding collides (small T / many steps).

    ``chosen``: int64 ``(k,)``, non-decreasing, in 1..T, last = T. Returns a strictly increasing copy with
    the same last entry: capped at ``T - (k - 1 - i)`` then raised to ``previous + 1``.
    """
    steps = chosen.shape[0]
    chosen = torch.minimum(chosen, timesteps - torch.arange(steps - 1, -1, -1))
    for i in range(1, steps):
        chosen[i] = max(int(chosen[i]), int(chosen[i - 1]) + 1)
    return chosen


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha^2 / sigma^2) = log(ab / (1 - ab)) (Kingma et al. 2021, eq. 3), same shape, float64."""
    ab = alphas_cumprod.to(F64)
    return torch.log(ab) - torch.log1p(-ab)


def respace_logsnr(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """``steps`` training steps whose log-SNR is evenly spaced between the schedule's extremes.

    Targets ``linspace(lambda_1, lambda_T, steps)`` (the "logSNR" time grid of DPM-Solver, Lu et al. 2022,
    sec. 3.3, over the discrete steps 1..T); each target takes the step of nearest log-SNR. Returns an
    increasing int64 ``(steps,)`` in 1..T whose last entry is T (first is 1 when ``steps > 1``).
    """
    timesteps = schedule.timesteps
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and the schedule's {timesteps} timesteps, got {steps}")
    lam = log_snr(schedule.alphas_cumprod)  # (T,), decreasing in t
    targets = torch.linspace(float(lam[0]), float(lam[-1]), steps, dtype=F64) if steps > 1 else lam[-1:]
    chosen = (lam[None, :] - targets[:, None]).abs().argmin(dim=1) + 1
    chosen[-1] = timesteps
    return _strictly_increasing(chosen, timesteps)


SCHEDULE_SPACINGS: dict[str, Callable[[NoiseSchedule, int], torch.Tensor]] = {
    # Spacings that depend on the schedule itself, not only on the fraction of T.
    "logsnr": respace_logsnr,
}


def respaced_alphas_cumprod(schedule: NoiseSchedule, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """alpha_bar at the respaced steps, with alpha_bar_0 = 1 prepended: ``(steps + 1,)`` float64, decreasing.

    ``spacing``: a fraction grid of :data:`SPACINGS` or a schedule-aware one of :data:`SCHEDULE_SPACINGS`.
    """
    if spacing in SCHEDULE_SPACINGS:
        chosen = SCHEDULE_SPACINGS[spacing](schedule, steps)
    elif spacing in SPACINGS:
        chosen = respace(schedule.timesteps, steps, spacing)
    else:
        raise ValueError(f"unknown spacing '{spacing}': one of {', '.join([*SPACINGS, *SCHEDULE_SPACINGS])}")
    return torch.cat([torch.ones(1, dtype=F64), schedule.alphas_cumprod[chosen - 1]])
