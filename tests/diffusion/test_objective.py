"""Forward process moments, parameterisation round trips, training noise levels and the loss."""

import math

import pytest
import torch

from diffsat.diffusion.objective import (
    Denoiser,
    DiffusionLoss,
    dynamic_threshold,
    min_snr_weight,
    q_sample,
    quantile_per_sample,
    sample_lognormal_levels,
    sample_training_levels,
    split_prediction,
    target_for,
    x0_clip_mode,
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
    x0, eps = split_prediction("eps", torch.zeros(1, 1, 2, 2), xt, level, clip_x0="static")
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


# --- x0 handling: static clipping and dynamic thresholding ------------------------------------------------


def test_quantile_per_sample_matches_torch_quantile() -> None:
    """Linear interpolation between order statistics: [1, 2, 3, 4] at p = 0.5 is 2.5; random rows agree
    with ``torch.quantile`` at several p (including the end points)."""
    assert quantile_per_sample(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 0.5).tolist() == [2.5]
    x = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    for p in (0.0, 0.3, 0.995, 1.0):
        torch.testing.assert_close(quantile_per_sample(x, p), torch.quantile(x.flatten(1), p, dim=1))


def known_quantile_batch() -> torch.Tensor:
    """(3, 1, 1, 201): sample 0 = (-1)^k k / 100 (|x| = 0, 0.01, ..., 2.00, so its 0.995-quantile is the
    order statistic at rank 0.995 * 200 = 199: 1.99); sample 1 = k / 400 - 0.25 (all |x| <= 0.25);
    sample 2 = 0.5 everywhere except one 10.0 (|x| quantile 0.5)."""
    k = torch.arange(201, dtype=torch.float32)
    wide = torch.where(k % 2 == 0, 1.0, -1.0) * k / 100
    narrow = k / 400 - 0.25
    outlier = torch.full((201,), 0.5)
    outlier[17] = 10.0
    return torch.stack([wide, narrow, outlier]).reshape(3, 1, 1, 201)


def test_dynamic_threshold_hand_computed() -> None:
    """Imagen's s = max(1, quantile(|x0|, 0.995)) per sample, x0 -> clamp(x0, -s, s) / s."""
    x0 = known_quantile_batch()
    out = dynamic_threshold(x0)
    wide = out[0].flatten()
    # s = 1.99: 2.00 (k = 200) -> 1, -1.99 (k = 199) -> -1, 1.00 (k = 100) -> 1 / 1.99, 0.5 -> 0.5 / 1.99
    assert wide[200].item() == pytest.approx(1.0)
    assert wide[199].item() == pytest.approx(-1.0)
    assert wide[100].item() == pytest.approx(1 / 1.99)
    assert wide[50].item() == pytest.approx(0.5 / 1.99)
    torch.testing.assert_close(wide, x0[0].flatten().clamp(-1.99, 1.99) / 1.99)
    torch.testing.assert_close(out[1], x0[1])  # s = max(1, 0.25) = 1 and nothing exceeds 1: unchanged
    expected = torch.full((201,), 0.5)
    expected[17] = 1.0  # s = max(1, 0.5) = 1: a lone outlier is clamped exactly as static clipping does
    torch.testing.assert_close(out[2].flatten(), expected)
    # another percentile: p = 0.5 of sample 0 is the median |x| = 1.00, so s = 1 and it is only clamped
    torch.testing.assert_close(dynamic_threshold(x0, 0.5)[0], x0[0].clamp(-1, 1))


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("mode", ["static", "dynamic", "none"])
def test_x0_handling_keeps_the_pair_consistent(objective: str, mode: object) -> None:
    """Each mode turns the raw x0 estimate into the documented one, and eps is recomputed so that
    ``alpha x0 + sigma eps`` is still ``x_t``."""
    g = torch.Generator().manual_seed(4)
    xt, pred = 2 * torch.randn(4, 2, 6, 6, generator=g), 3 * torch.randn(4, 2, 6, 6, generator=g)
    level = torch.tensor([0.2, 0.5, 0.8, 0.95])
    raw, _ = split_prediction(objective, pred, xt, level, clip_x0="none")
    x0, eps = split_prediction(objective, pred, xt, level, clip_x0=mode)
    expected = {"static": raw.clamp(-1, 1), "dynamic": dynamic_threshold(raw), "none": raw}[x0_clip_mode(mode)]
    torch.testing.assert_close(x0, expected)
    torch.testing.assert_close(q_sample(x0, level, eps), xt, atol=1e-5, rtol=1e-5)
    if x0_clip_mode(mode) != "none":
        assert x0.abs().max() <= 1.0
    if x0_clip_mode(mode) == "dynamic":  # it rescaled (s > 1), rather than only clamped, some samples
        assert not torch.allclose(x0, raw.clamp(-1, 1))


def test_denoiser_x0_clip_names_and_errors() -> None:
    net = torch.nn.Identity()
    assert Denoiser(net, clip_x0="static").clip_x0 == "static"
    assert Denoiser(net, clip_x0="none").clip_x0 == "none"
    assert Denoiser(net, clip_x0="dynamic").clip_x0 == "dynamic"
    with pytest.raises(ValueError, match="unknown x0 clip 'soft': one of static, dynamic, none"):
        Denoiser(net, clip_x0="soft")
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\]"):
        Denoiser(net, clip_x0="dynamic", quantile=1.5)


def test_denoiser_dynamic_uses_its_quantile() -> None:
    """The denoiser hands its quantile to dynamic thresholding: an x0 network emitting the known batch."""
    x0 = known_quantile_batch()
    level = torch.full((3,), 0.5)
    out, _ = Denoiser(lambda x, lv: x0, "x0", clip_x0="dynamic", quantile=0.5)(torch.zeros_like(x0), level)
    torch.testing.assert_close(out, dynamic_threshold(x0, 0.5))
    out, _ = Denoiser(lambda x, lv: x0, "x0", clip_x0="dynamic")(torch.zeros_like(x0), level)
    torch.testing.assert_close(out, dynamic_threshold(x0, 0.995))
