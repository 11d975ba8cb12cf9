"""Timestep respacing: the fraction grids of ``SPACINGS`` and the schedule-aware ``logsnr`` grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsat.diffusion.schedules import (
    NoiseSchedule,
    log_snr,
    respace,
    respace_logsnr,
    respaced_alphas_cumprod,
)

SPACING_NAMES = ["uniform", "quadratic", "trailing", "logsnr"]


def chosen_steps(schedule: NoiseSchedule, steps: int, spacing: str) -> torch.Tensor:
    if spacing == "logsnr":
        return respace_logsnr(schedule, steps)
    return respace(schedule.timesteps, steps, spacing)


@pytest.mark.parametrize("spacing", SPACING_NAMES)
@pytest.mark.parametrize(("name", "timesteps"), [("linear", 10), ("linear", 100), ("linear", 1000), ("cosine", 1000)])
def test_grid_is_increasing_unique_and_ends_at_T(spacing: str, name: str, timesteps: int) -> None:
    schedule = NoiseSchedule.named(name, timesteps)
    for steps in sorted({1, 2, 3, 5, 10, 50, timesteps // 2, timesteps - 1, timesteps} & set(range(1, timesteps + 1))):
        chosen = chosen_steps(schedule, steps, spacing)
        assert chosen.dtype == torch.int64 and chosen.shape == (steps,)
        assert (chosen.diff() > 0).all() and chosen[0] >= 1 and chosen[-1] == timesteps, (steps, chosen)
        abar = respaced_alphas_cumprod(schedule, steps, spacing)
        assert abar.shape == (steps + 1,) and abar[0] == 1 and (abar.diff() < 0).all()


def test_existing_grids_keep_their_numbers() -> None:
    assert respace(1000, 10, "uniform").tolist() == list(range(100, 1001, 100))
    assert respace(1000, 5, "quadratic").tolist() == [40, 160, 360, 640, 1000]
    assert respace(10, 10, "quadratic").tolist() == list(range(1, 11))


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 8, 10, 20, 25, 50, 100, 250, 1000])
def test_trailing_matches_diffusers(steps: int) -> None:
    """diffusers: ``round(arange(T, 0, -T / steps)) - 1`` (0-based) is steps ``j T / steps`` in 1-based terms."""
    theirs = np.round(np.arange(1000, 0, -1000 / steps)).astype(np.int64)[::-1].copy()
    assert respace(1000, steps, "trailing").tolist() == theirs.tolist()
    assert respace(1000, steps, "trailing").tolist() == respace(1000, steps, "uniform").tolist()


@pytest.mark.parametrize(("timesteps", "steps", "tolerance"), [(1000, 5, 0.01), (1000, 10, 0.05), (4000, 20, 0.01)])
def test_logsnr_gaps_are_nearly_uniform(timesteps: int, steps: int, tolerance: float) -> None:
    """Gaps in log-SNR deviate from their mean only by the rounding to whole steps (measured: 0.2 %,
    2.3 %, 0.6 %); with many steps on T = 1000 the first steps collide at t = 1, 2, ... instead."""
    schedule = NoiseSchedule.named("linear", timesteps)
    lam = log_snr(schedule.alphas_cumprod)
    chosen = respace_logsnr(schedule, steps)
    assert chosen[0] == 1  # both extremes of the schedule are used
    gaps = lam[chosen - 1].diff()
    assert (gaps / gaps.mean() - 1).abs().max() < tolerance, gaps


def test_logsnr_picks_the_nearest_step() -> None:
    schedule = NoiseSchedule.named("linear", 1000)
    lam = log_snr(schedule.alphas_cumprod)
    chosen = respace_logsnr(schedule, 10)
    targets = torch.linspace(float(lam[0]), float(lam[-1]), 10, dtype=torch.float64)
    for t, target in zip(chosen.tolist(), targets):
        error = (lam[t - 1] - target).abs()
        neighbours = [lam[n - 1] for n in (t - 1, t + 1) if 1 <= n <= 1000]
        assert all(error <= (n - target).abs() for n in neighbours)


def test_log_snr_values() -> None:
    ab = torch.tensor([0.5, 0.9, 1e-4], dtype=torch.float64)
    torch.testing.assert_close(log_snr(ab), torch.log(ab / (1 - ab)))


def test_spacing_errors() -> None:
    schedule = NoiseSchedule.named("linear", 100)
    with pytest.raises(ValueError, match="unknown spacing 'cubic': one of uniform, quadratic, trailing, logsnr"):
        respaced_alphas_cumprod(schedule, 10, "cubic")
    with pytest.raises(ValueError, match="steps must be between 1"):
        respaced_alphas_cumprod(schedule, 101, "logsnr")
    with pytest.raises(ValueError, match="steps must be between 1"):
        respace_logsnr(schedule, 0)
