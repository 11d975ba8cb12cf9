"""One suite for every registered sampler (plus DDIM with eta = 1).

Two stand-in denoisers, no training:

- ``StandIn``: a fixed random 1x1 conv of x_t plus a function of the level (any objective), for shapes,
  determinism, batch independence, callbacks and clipping;
- ``GaussianNet``: the exact denoiser of 1-D Gaussian data N(MU, S^2) (a (B, 1, 1, 1) tensor is the data),
  ``E[x0 | x_t] = MU + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha MU)``, emitted as the eps, x0 or
  v target so that it runs through ``Denoiser(net, objective, clip_x0="none")`` like a trained network.
  For Gaussian data the probability-flow ODE has a closed form: ``(x_t - alpha_t MU) / sqrt(alpha_t^2 S^2 +
  sigma_t^2)`` is constant along a trajectory, so x_T maps to ``MU + S (x_T - alpha_T MU) / sqrt(...)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffsat.diffusion.objective import Denoiser, sigma_of
from diffsat.diffusion.schedules import NoiseSchedule, respaced_alphas_cumprod
from diffsat.samplers import SAMPLERS, SPACINGS, get_sampler
from diffsat.samplers.common import StackedRandomGenerator, StepInfo

MU, S = 0.3, 0.2
SHAPE = (3, 4, 4)
VARIANTS = {name: (s, {}) for name, s in SAMPLERS.items()} | {"ddim-eta1": (SAMPLERS["ddim"], {"eta": 1.0})}
STOCHASTIC = {"ancestral", "ddim-eta1", "dpm++sde"}


def make_generators(seed: int, n: int, offset: int = 0) -> StackedRandomGenerator:
    return StackedRandomGenerator(seed, n, offset)


def call(name: str, model: Denoiser, x: torch.Tensor, schedule: NoiseSchedule, steps: int,
         gens: StackedRandomGenerator, spacing: str | None = None, **kw: object) -> torch.Tensor:
    """Sampler ``name`` over ``steps`` of ``schedule`` at ``spacing`` (default: the sampler's), with ``gens``
    as its noise source when it draws noise; returns x0 like ``x``."""
    sampler = SAMPLERS[name]
    abar = respaced_alphas_cumprod(schedule, steps, spacing or sampler.spacing)
    noise = {"noise": gens} if sampler.draws_noise else {}
    return sampler.sample(model, x, abar, **noise, **kw)


def run(
    variant: str, model: Denoiser, x: torch.Tensor, schedule: NoiseSchedule, steps: int, gens: StackedRandomGenerator,
    **kw: object
) -> torch.Tensor:
    """Call a variant of :data:`VARIANTS` with its fixed keyword arguments; returns x0 like ``x``."""
    name = "ddim" if variant == "ddim-eta1" else variant
    return call(name, model, x, schedule, steps, gens, **VARIANTS[variant][1], **kw)


class StandIn(nn.Module):
    """``net(x, level) = scale (conv1x1(x) + sin(4 level))``: deterministic, per-sample, (B, C, H, W)."""

    def __init__(self, channels: int = SHAPE[0], scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.conv = nn.Conv2d(channels, channels, 1)
        with torch.no_grad():
            self.conv.weight.copy_(0.3 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(0.1 * torch.randn(channels, generator=g))
        self.scale = scale

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.conv(x) + torch.sin(4 * level).reshape(-1, 1, 1, 1))


class GaussianNet(nn.Module):
    """The exact denoiser of N(MU, S^2) data written as an ``objective`` network output, (B, 1, 1, 1).

    The posterior mean is computed in float64 from the float32 level the network sees; eps and v are
    derived from it with the same float32 ``sigma_of(level)`` that ``split_prediction`` uses.
    """

    def __init__(self, objective: str) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        a = level.reshape(-1, 1, 1, 1)
        a64 = a.double()
        x0 = (MU + a64 * S**2 / (a64**2 * S**2 + 1 - a64**2) * (x_t.double() - a64 * MU)).float()
        if self.objective == "x0":
            return x0
        s = sigma_of(a)
        eps = (x_t - a * x0) / s
        return eps if self.objective == "eps" else a * eps - s * x0


def exact_ode(x_T: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Closed-form probability-flow ODE solution x_0 for Gaussian data, float64, shape of ``x_T``."""
    ab = float(schedule.alphas_cumprod[-1])
    return MU + S * (x_T.double() - ab**0.5 * MU) / math.sqrt(ab * S**2 + 1 - ab)


def normal_quantiles(n: int) -> torch.Tensor:
    """Stratified standard-normal x_T, (n, 1, 1, 1): the (i + 1/2)/n quantiles (no sampling noise at t = T)."""
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.special.ndtri(u).float().reshape(n, 1, 1, 1)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.named("linear", 1000)


@pytest.fixture(scope="module")
def standin() -> Denoiser:
    return Denoiser(StandIn(), "v", clip_x0="static")


def draw(seed: int, n: int, offset: int = 0) -> tuple[torch.Tensor, StackedRandomGenerator]:
    """x_T and the per-sample noise source, as ``diffsat.sampling.generate`` draws them."""
    gens = make_generators(seed, n, offset)
    return gens.randn(SHAPE), gens


# --- generic contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_shape_dtype_and_finite(variant: str, steps: int, schedule: NoiseSchedule, standin: Denoiser) -> None:
    x, gens = draw(0, 3)
    out = run(variant, standin, x, schedule, steps, gens)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seeds_same_output(variant: str, schedule: NoiseSchedule, standin: Denoiser) -> None:
    x, gens = draw(5, 4)
    a = run(variant, standin, x, schedule, 6, gens)
    x, gens = draw(5, 4)
    b = run(variant, standin, x, schedule, 6, gens)
    assert torch.equal(a, b)
    # Deterministic samplers never draw from the generators: other seeds, same start -> same output.
    c = run(variant, standin, x, schedule, 6, make_generators(99, 4))
    if variant in STOCHASTIC:
        assert not torch.equal(a, c)
    else:
        assert torch.equal(a, c)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_size_independence(variant: str, schedule: NoiseSchedule, standin: Denoiser) -> None:
    x, gens = draw(11, 6)
    whole = run(variant, standin, x, schedule, 5, gens)
    parts = []
    for offset, n in [(0, 2), (2, 4)]:
        x, gens = draw(11, n, offset)
        parts.append(run(variant, standin, x, schedule, 5, gens))
    torch.testing.assert_close(torch.cat(parts), whole)


@pytest.mark.parametrize("variant", VARIANTS)
def test_callback_every_step(variant: str, schedule: NoiseSchedule, standin: Denoiser) -> None:
    infos: list[StepInfo] = []
    x, gens = draw(2, 2)
    out = run(variant, standin, x, schedule, 5, gens, callback=infos.append)
    assert [i.index for i in infos] == [1, 2, 3, 4, 5] and all(i.total == 5 for i in infos)
    levels = [i.level for i in infos]
    assert levels == sorted(levels) and len(set(levels)) == 5  # from noisiest to cleanest
    assert torch.equal(infos[-1].x, out) and infos[-1].x0_hat.shape == x.shape


@pytest.mark.parametrize("clip", ["static", "dynamic"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_clipped_x0_keeps_output_in_range(variant: str, clip: str, schedule: NoiseSchedule) -> None:
    loud = Denoiser(StandIn(scale=5.0), "eps", clip_x0=clip)  # eps/alpha blows x0 far past [-1, 1]
    x, gens = draw(3, 4)
    out = run(variant, loud, x, schedule, 8, gens)
    assert out.abs().max() <= 1.0
    unclipped = run(variant, Denoiser(StandIn(scale=5.0), "eps", clip_x0="none"), x, schedule, 8, draw(3, 4)[1])
    assert unclipped.abs().max() > 1.0  # the clip is what keeps it in range


def test_unknown_sampler_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown sampler 'euler': one of ancestral, ddim, dpm\+\+"):
        get_sampler("euler")
    assert get_sampler("dpm++") is SAMPLERS["dpm++"]


def test_ddim_eta1_is_ancestral(schedule: NoiseSchedule, standin: Denoiser) -> None:
    """With eta = 1, DDIM's sigma is the DDPM posterior std and its mean the posterior mean (Song et al., sec. 4.1)."""
    x, gens = draw(7, 3)
    ddpm = call("ancestral", standin, x, schedule, 9, gens)
    x, gens = draw(7, 3)
    torch.testing.assert_close(call("ddim", standin, x, schedule, 9, gens, eta=1.0), ddpm)


class ConstantX0(nn.Module):
    """A denoiser whose estimate never changes: ``x0_hat`` = a fixed (C, H, W) image for every x_t and level,
    so the 2M extrapolation ``D`` is that image too."""

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.linspace(-0.8, 0.9, math.prod(SHAPE)).reshape(SHAPE)

    def forward(self, x_t: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.image.expand_as(x_t)
        return x0, (x_t - level.reshape(-1, 1, 1, 1) * x0) / sigma_of(level).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_sde_dpm_solver_first_order_is_the_ancestral_step(spacing: str, schedule: NoiseSchedule) -> None:
    """With D = x0_hat the SDE step is the DDPM posterior step (module docstring of dpm_solver), drawing
    the same noise in the same order: for a denoiser whose x0_hat is constant the two samplers agree."""
    states: dict[str, list[StepInfo]] = {"ancestral": [], "dpm++sde": []}
    for name, infos in states.items():
        x, gens = draw(4, 3)
        call(name, ConstantX0(), x, schedule, 8, gens, spacing=spacing, callback=infos.append)
    for a, s in zip(states["ancestral"], states["dpm++sde"], strict=True):  # every state, x_0 included
        torch.testing.assert_close(s.x, a.x, atol=1e-5, rtol=1e-5)


# --- exact Gaussian data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_objectives_agree_on_the_same_denoiser(variant: str, objective: str, schedule: NoiseSchedule) -> None:
    """The same exact denoiser emitted as eps, x0 or v gives the same samples (up to float32 rounding)."""
    x = normal_quantiles(64)
    ref = run(variant, Denoiser(GaussianNet("eps"), "eps", clip_x0="none"), x, schedule, 6, make_generators(0, 64))
    model = Denoiser(GaussianNet(objective), objective, clip_x0="none")
    out = run(variant, model, x, schedule, 6, make_generators(0, 64))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("timesteps", [100, 250, 1000])
def test_ddim_with_every_step_solves_the_probability_flow_ode(timesteps: int) -> None:
    """DDIM (eta = 0) over all T steps vs the closed-form ODE solution; a linear schedule scaled to keep
    the continuous-time process (betas * 1000 / T). First order: measured max error 3.7e-2 (T = 100),
    1.6e-2 (250), 4.5e-3 (1000), i.e. about 4.5 / T."""
    sch = NoiseSchedule.named("linear", timesteps, 1e-4 * 1000 / timesteps, 2e-2 * 1000 / timesteps)
    x = torch.linspace(-3, 3, 41).reshape(-1, 1, 1, 1)
    model = Denoiser(GaussianNet("eps"), "eps", clip_x0="none")
    out = call("ddim", model, x, sch, timesteps, make_generators(0, 41))
    err = (out.double() - exact_ode(x, sch)).abs().max().item()
    assert err < 6.0 / timesteps


# Measured by this test with the defaults (ancestral / ddim: uniform spacing, dpm++: logsnr), linear
# T = 1000, MU = 0.3, S = 0.2; (mean - MU, std - S) at 5 / 10 / 20 / 50 steps:
#   ancestral = ddim-eta1 (identical draws; 4,000 samples):
#       (-0.0010, -0.149)  (+0.0004, -0.105)  (-0.0032, -0.072)  (-0.0034, -0.041)
#   ddim (20,000 samples; eps, x0 and v alike):
#       (-0.0001, -0.147)  (-0.0002, -0.103)  (-0.0003, -0.060)  (-0.0003, -0.026)
#   dpm++ (20,000 samples; eps, x0 and v alike):
#       (-0.0003, -0.041)  (-0.0004, +0.0037) (-0.0004, +0.0028) (-0.0004, +0.0002)
#   dpm++sde (4,000 samples):
#       (-0.0008, -0.067)  (-0.0014, -0.0039) (+0.0006, +0.0046) (+0.0014, +0.0005)
# Ancestral and DDIM converge at first order in 1/steps and under-disperse (the final x0_hat at
# t = T / steps shrinks towards MU); the ODE samplers' mean floor (-0.0004) is the prior mismatch
# (x_T ~ N(0, 1), not N(alpha_T MU, ...)). dpm++ at 50 steps with uniform spacing: std -0.011; with
# quadratic: +0.0011, but +0.0067 at 20 steps; logsnr is the most accurate and monotone: its default.
STEP_COUNTS = (5, 10, 20, 50)
TOLERANCE = {  # variant: (samples, |mean - MU| at every count, |std - S| at 50 steps, noise slack)
    "ancestral": (4000, 0.01, 0.05, 0.005),
    "ddim-eta1": (4000, 0.01, 0.05, 0.005),
    "ddim": (20000, 0.002, 0.035, 0.0),
    "dpm++": (20000, 0.002, 0.002, 0.0),
    "dpm++sde": (4000, 0.01, 0.01, 0.005),
}
GAUSSIAN_CASES = [(v, o) for v in VARIANTS for o in (["eps"] if v in STOCHASTIC else ["eps", "x0", "v"])]


@pytest.mark.parametrize(("variant", "objective"), GAUSSIAN_CASES)
def test_gaussian_statistics_converge(variant: str, objective: str, schedule: NoiseSchedule) -> None:
    """Sample mean and std approach (MU, S) as steps grow. x_T are normal quantiles (no sampling noise at
    the start); the stochastic samplers use fewer samples (one generator each draws its own noise)."""
    n, mean_tol, std_tol, slack = TOLERANCE[variant]
    model = Denoiser(GaussianNet(objective), objective, clip_x0="none")
    x, gens = normal_quantiles(n), make_generators(0, n)  # built once: 20,000 generators take ~0.2 s
    std_errors = []
    for steps in STEP_COUNTS:
        out = run(variant, model, x, schedule, steps, gens).double()
        assert abs(out.mean().item() - MU) < mean_tol, (steps, out.mean().item())
        std_errors.append(abs(out.std().item() - S))
    assert std_errors[-1] < std_tol, std_errors
    assert all(b <= a + slack for a, b in zip(std_errors, std_errors[1:])), std_errors


def test_dpm_solver_beats_ddim_at_equal_steps(schedule: NoiseSchedule) -> None:
    """Per-sample error against the exact ODE map at 20 steps (defaults): dpm++ 1.1e-2, ddim 2.4e-1."""
    model = Denoiser(GaussianNet("eps"), "eps", clip_x0="none")
    x = normal_quantiles(1000)
    exact = exact_ode(x, schedule)
    gens = make_generators(0, 1000)
    errors = {
        name: (call(name, model, x, schedule, 20, gens).double() - exact).abs().max().item()
        for name in ("ddim", "dpm++")
    }
    assert errors["dpm++"] < 0.02 and errors["dpm++"] < errors["ddim"] / 10, errors


def test_sde_dpm_solver_beats_ancestral_at_equal_steps(schedule: NoiseSchedule) -> None:
    """The 2M correction on top of the ancestral step: at 10 log-SNR steps the Gaussian data's std comes out
    -0.0033 off with dpm++sde against -0.073 with ancestral sampling (:data:`GRID_STD_ERROR`)."""
    model = Denoiser(GaussianNet("eps"), "eps", clip_x0="none")
    x = normal_quantiles(GRID_SAMPLES)
    error = {name: abs(call(name, model, x, schedule, 10, make_generators(0, GRID_SAMPLES),
                            spacing="logsnr").double().std().item() - S)
             for name in ("ancestral", "dpm++sde")}
    assert error["dpm++sde"] < 0.01 and error["dpm++sde"] < error["ancestral"] / 5, error


# --- every sampler x every objective x every spacing ------------------------------------------------------

GRID_STEPS = 10
# std - S of each variant at 10 steps under each spacing (exact Gaussian denoiser, eps objective; x0 and v
# agree to 1e-5; linear T = 1000; 4,000 samples), measured with this suite's stand-ins. The stochastic
# samplers moved by < 0.001 with other seeds. trailing = uniform on this grid. Every sampler under-disperses
# at 10 uniform steps (the last step returns x0_hat from t = 100, where the posterior mean keeps only
# ~half of the data's std); the spacings denser near t = 0 (quadratic, logsnr) cut that error 1.5-100x.
GRID_STD_ERROR = {
    "ancestral": {"uniform": -0.1089, "quadratic": -0.0662, "trailing": -0.1089, "logsnr": -0.0727},
    "ddim": {"uniform": -0.1027, "quadratic": -0.0397, "trailing": -0.1027, "logsnr": -0.0471},
    "dpm++": {"uniform": -0.1001, "quadratic": 0.0007, "trailing": -0.1001, "logsnr": 0.0037},
    "dpm++sde": {"uniform": -0.1060, "quadratic": -0.0035, "trailing": -0.1060, "logsnr": -0.0033},
}
GRID_STD_ERROR["ddim-eta1"] = GRID_STD_ERROR["ancestral"]  # identical draws (test_ddim_eta1_is_ancestral)
GRID_SLACK = {"ancestral": 0.006, "ddim-eta1": 0.006, "ddim": 0.003, "dpm++": 0.003, "dpm++sde": 0.006}
GRID_MEAN_TOL = {"ancestral": 0.01, "ddim-eta1": 0.01, "ddim": 0.002, "dpm++": 0.002, "dpm++sde": 0.01}
GRID_SAMPLES = 4000


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_sampler_objective_and_spacing(variant: str, objective: str, spacing: str,
                                             schedule: NoiseSchedule) -> None:
    """Each sampler under each objective and spacing: it visits exactly the spacing's noise levels
    (noisiest first), the three objectives give the same samples, and the Gaussian data's mean and
    standard deviation come out as measured for that sampler and spacing (:data:`GRID_STD_ERROR`)."""
    n = GRID_SAMPLES
    x = normal_quantiles(n)
    infos: list[StepInfo] = []
    model = Denoiser(GaussianNet(objective), objective, clip_x0="none")
    out = run(variant, model, x, schedule, GRID_STEPS, make_generators(0, n), spacing=spacing,
              callback=infos.append)
    visited = respaced_alphas_cumprod(schedule, GRID_STEPS, spacing)[1:].sqrt().flip(0).tolist()
    assert [i.level for i in infos] == pytest.approx(visited, rel=1e-12)
    if objective != "eps":
        ref = run(variant, Denoiser(GaussianNet("eps"), "eps", clip_x0="none"), x, schedule, GRID_STEPS,
                  make_generators(0, n), spacing=spacing)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    out = out.double()
    assert abs(out.mean().item() - MU) < GRID_MEAN_TOL[variant], out.mean().item()
    expected = GRID_STD_ERROR[variant][spacing]
    assert abs(out.std().item() - S - expected) < GRID_SLACK[variant], (out.std().item() - S, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_spacings_denser_near_the_data_beat_uniform_at_few_steps(variant: str, schedule: NoiseSchedule) -> None:
    """At 10 steps quadratic and logsnr spacing reproduce the data's spread better than uniform (the
    numbers of :data:`GRID_STD_ERROR`, recomputed here)."""
    x, model = normal_quantiles(GRID_SAMPLES), Denoiser(GaussianNet("eps"), "eps", clip_x0="none")
    error = {sp: abs(run(variant, model, x, schedule, GRID_STEPS, make_generators(0, GRID_SAMPLES),
                         spacing=sp).double().std().item() - S) for sp in ("uniform", "quadratic", "logsnr")}
    assert error["quadratic"] < error["uniform"] / 1.5 and error["logsnr"] < error["uniform"] / 1.4, error


def test_spacings_differ_where_they_should(schedule: NoiseSchedule) -> None:
    """quadratic and logsnr visit other levels than uniform; trailing is uniform's grid up to rounding
    (identical at T = 1000 and 10 steps)."""
    grids = {sp: respaced_alphas_cumprod(schedule, GRID_STEPS, sp) for sp in SPACINGS}
    assert torch.equal(grids["trailing"], grids["uniform"])
    assert not torch.equal(grids["quadratic"], grids["uniform"])
    assert not torch.equal(grids["logsnr"], grids["uniform"])


def test_one_dpm_solver_step_is_the_posterior_mean_with_half_a_draws_squared_error(schedule: NoiseSchedule) -> None:
    """``dpm++`` at one step returns the denoiser's x0 estimate at the noisiest level, E[x0 | x_T] (what
    ``diffsat upscale --sampler dpm++ --steps 1`` writes). Against data drawn independently of x_T its squared
    error is the posterior variance, S^2 here (x_T carries almost no signal); a draw of the exact ODE map
    has twice that, E(x' - x)^2 = 2 Var(x | x_T): a single draw is 3 dB below the mean in PSNR."""
    model = Denoiser(GaussianNet("eps"), "eps", clip_x0="none")
    x_T, gens = normal_quantiles(4000), make_generators(0, 4000)
    mean = call("dpm++", model, x_T, schedule, 1, gens)
    top = respaced_alphas_cumprod(schedule, 1, SAMPLERS["dpm++"].spacing)[-1].sqrt()
    torch.testing.assert_close(mean, model(x_T, top.expand(4000).float())[0])
    data = MU + S * normal_quantiles(4000)[torch.randperm(4000, generator=torch.Generator().manual_seed(1))]
    draw_error = ((exact_ode(x_T, schedule) - data.double()) ** 2).mean().item()
    mean_error = ((mean.double() - data.double()) ** 2).mean().item()
    assert mean_error == pytest.approx(S**2, rel=0.01) and draw_error == pytest.approx(2 * S**2, rel=0.05)
