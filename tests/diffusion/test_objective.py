"""Forward process moments, parameterisation round trips, training noise levels and the loss."""

import math

import pytest
import torch

from diffsat.diffusion.objective import (
    DiffusionLoss,
    min_snr_weight,
    q_sample,
    sample_lognormal_levels,
    sample_training_levels,
    split_prediction,
    target_for,
)
from diffsat.diffusion.schedules import NoiseSchedule


def test_q_sample_moments() -> None:
    """x_t = a x0 + sqrt(1 - a^2) eps: for fixed x0, mean a*x0 and variance 1 - a^2 (Ho et al., eq. 4)."""
    g = torch.Generator().manual_seed(0)
    n, level = 200_000, torch.tensor([0.6])
    x0 = torch.full((n, 1, 1, 1), 0.5)
    xt = q_sample(x0, level.expand(n), torch.randn(x0.shape, generator=g))
    assert float(xt.mean()) == pytest.approx(0.6 * 0.5, abs=5e-3)
    assert float(xt.var()) == pytest.approx(1 - 0.36, rel=1e-2)


def test_q_sample_endpoints() -> None:
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(q_sample(x0, torch.ones(2), eps), x0)
    torch.testing.assert_close(q_sample(x0, torch.zeros(2), eps), eps)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_exact_prediction_recovers_x0_and_eps(objective: str) -> None:
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(4, 1, 5, 5, generator=g) * 2 - 1, torch.randn(4, 1, 5, 5, generator=g)
    level = torch.tensor([0.05, 0.3, 0.7, 0.99])
    xt = q_sample(x0, level, eps)
    x0_hat, eps_hat = split_prediction(objective, target_for(objective, x0, eps, level), xt, level)
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=2e-4, rtol=0)


def test_v_target_closed_form() -> None:
    """v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
    x0, eps, level = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([0.6])
    assert float(target_for("v", x0, eps, level)) == pytest.approx(0.6 * 2.0 - 0.8 * 1.0)


def test_clipping_keeps_x0_in_range_and_pair_consistent() -> None:
    xt, level = torch.full((1, 1, 2, 2), 3.0), torch.tensor([0.5])
    x0, eps = split_prediction("eps", torch.zeros(1, 1, 2, 2), xt, level, clip_x0=True)
    assert float(x0.max()) == 1.0
    torch.testing.assert_close(q_sample(x0, level, eps), xt)


def test_sr3_levels_lie_between_adjacent_schedule_levels() -> None:
    s = NoiseSchedule.named("linear", 10)
    levels = sample_training_levels(s, 10_000, torch.Generator().manual_seed(0)).double()
    grid = s.levels_with_zero
    assert float(levels.min()) >= float(grid[-1]) - 1e-7 and float(levels.max()) <= 1.0
    # uniform in t: each of the 10 intervals receives about a tenth of the draws
    counts = torch.histc(torch.bucketize(-levels, -grid).double(), bins=10, min=0.5, max=10.5)
    assert float(counts.min()) > 850 and float(counts.max()) < 1150


def test_lognormal_levels_follow_edm() -> None:
    levels = sample_lognormal_levels(100_000, torch.Generator().manual_seed(0), -1.2, 1.2).double()
    log_sigma = 0.5 * torch.log((1 - levels**2) / levels**2)
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.02)


def test_min_snr_weights() -> None:
    """At SNR below gamma every target is weighted as plain eps-MSE would be (Hang et al. 2023)."""
    level = torch.tensor([0.5])  # snr = 1/3
    snr = 0.25 / 0.75
    assert float(min_snr_weight("eps", level, 5.0)) == pytest.approx(1.0)
    assert float(min_snr_weight("x0", level, 5.0)) == pytest.approx(snr)
    assert float(min_snr_weight("v", level, 5.0)) == pytest.approx(snr / (snr + 1))
    high = torch.tensor([0.99])  # snr ~ 49 > gamma
    assert float(min_snr_weight("eps", high, 5.0)) == pytest.approx(5.0 / (0.9801 / 0.0199), rel=1e-4)


def test_loss_of_the_perfect_eps_network_is_zero_and_shards_match() -> None:
    """A network that knows the noise scores 0; and two shards of a batch see the draws of the whole batch."""
    s = NoiseSchedule.named("linear", 100)
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    seen = {}

    def oracle(xt, level):
        a = level.view(-1, 1, 1, 1)
        seen["level"] = level
        return (xt - a * x0_current) / (1 - a**2).sqrt()

    loss = DiffusionLoss(s)
    x0_current = x0
    out = loss(oracle, x0, torch.Generator().manual_seed(3))
    assert float(out["loss"]) < 1e-8
    full = seen["level"].clone()
    for rank in range(2):
        x0_current = x0[rank * 4 : (rank + 1) * 4]
        loss(oracle, x0_current, torch.Generator().manual_seed(3), shard=(rank, 2))
        torch.testing.assert_close(seen["level"], full[rank * 4 : (rank + 1) * 4])


def test_l1_loss_value() -> None:
    loss = DiffusionLoss(NoiseSchedule.named("linear", 10), objective="x0", loss="l1")
    x0 = torch.zeros(2, 1, 3, 3)
    out = loss(lambda xt, level: torch.ones_like(xt), x0, torch.Generator().manual_seed(0))
    assert float(out["loss"]) == pytest.approx(1.0)
    assert math.isfinite(float(out["level_mean"]))
