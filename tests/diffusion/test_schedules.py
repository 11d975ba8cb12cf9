"""The named beta schedules: pinned numbers, and an independent numpy formulation of DDPM-CD's
``make_beta_schedule`` (linspace-based, float64) that every schedule must equal exactly."""

import math

import numpy as np
import pytest
import torch

from diffsat.config import DiffusionConfig
from diffsat.diffusion.schedules import BETA_SCHEDULES, NoiseSchedule, make_betas

T, START, END = 2000, 1e-6, 1e-2  # DDPM-CD's training schedule


def numpy_reference(name: str, n: int, start: float, end: float) -> np.ndarray:
    if name == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if name == "quad":
        return np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    if name in ("warmup10", "warmup50"):
        betas = end * np.ones(n, dtype=np.float64)
        warm = int(n * (0.1 if name == "warmup10" else 0.5))
        betas[:warm] = np.linspace(start, end, warm, dtype=np.float64)
        return betas
    if name == "const":
        return end * np.ones(n, dtype=np.float64)
    if name == "jsd":  # 1/T, 1/(T-1), ..., 1
        return 1.0 / np.linspace(n, 1, n, dtype=np.float64)
    if name == "cosine":  # Nichol & Dhariwal 2021, eq. 17, s = 0.008, clipped at 0.999
        f = np.cos((np.arange(n + 1, dtype=np.float64) / n + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1 - f[1:] / f[:-1], 0.999)
    raise KeyError(name)


# betas at steps 1, 200, 1000, 2000 (indices 0, 199, 999, 1999) and alpha_bar_T, T=2000, 1e-6..1e-2
PINNED = {
    "linear": ([1e-06, 0.00099639819909955, 0.00499799899949975, 0.01], 4.38597823613321e-05),
    "quad": ([1e-06, 0.00011784031085077308, 0.0025477496126752723, 0.01], 0.0011639357495317837),
    "warmup10": ([1e-06, 0.01, 0.01, 0.01], 5.099805526221097e-09),
    "warmup50": ([1e-06, 0.001992792792792793, 0.01, 0.01], 2.8590779984974817e-07),
    "const": ([0.01, 0.01, 0.01, 0.01], 1.8637566029922327e-09),
    "jsd": ([0.0005, 0.000555247084952804, 0.000999000999000999, 1.0], 0.0),
    "cosine": ([2.0035133368456748e-05, 0.00026411141128313, 0.0015754077935854482, 0.999], 6.071920953835326e-10),
}


def test_every_named_schedule_is_pinned() -> None:
    assert set(PINNED) == set(BETA_SCHEDULES)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_values(name: str) -> None:
    betas = make_betas(name, T, START, END)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    values, abar_T = PINNED[name]
    assert betas[[0, 199, 999, 1999]].tolist() == pytest.approx(values, rel=1e-12, abs=0)
    assert float(torch.cumprod(1 - betas, 0)[-1]) == pytest.approx(abar_T, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("name", sorted(PINNED))
@pytest.mark.parametrize("n, start, end", [(T, START, END), (1000, 1e-4, 2e-2), (7, 0.1, 0.3)])
def test_equals_the_numpy_formulation(name: str, n: int, start: float, end: float) -> None:
    ours = make_betas(name, n, start, end).numpy()
    np.testing.assert_allclose(ours, numpy_reference(name, n, start, end), rtol=1e-10, atol=1e-16)


def test_noise_schedule_quantities() -> None:
    s = NoiseSchedule.named("linear", 1000)
    betas = make_betas("linear", 1000)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=0, atol=0)
    torch.testing.assert_close(s.betas, betas, rtol=1e-10, atol=1e-15)
    assert s.levels_with_zero[0] == 1.0 and s.levels_with_zero.shape == (1001,)
    assert bool((s.levels[1:] < s.levels[:-1]).all())  # strictly decreasing noise level
    assert NoiseSchedule.from_config(DiffusionConfig(timesteps=1000)).alphas_cumprod.equal(s.alphas_cumprod)


def test_unknown_schedule_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*cosine"):
        make_betas("cosin", 10)
