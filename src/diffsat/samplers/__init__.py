"""Samplers: functions ``sample(model, x, abar, *, noise, callback=None) -> x0`` over a noise-level grid.

- ``ancestral``: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), stochastic;
- ``ddim``: DDIM (Song et al. 2021, eq. 12), deterministic at the default ``eta = 0``;
- ``dpm++``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), deterministic (no ``noise`` argument);
- ``dpm++sde``: SDE-DPM-Solver++(2M) (the same solver for the reverse SDE): ancestral sampling with the 2M
  second-order correction, stochastic.

The caller builds the grid once (:func:`diffsat.diffusion.schedules.respaced_alphas_cumprod` with a spacing
of :data:`SPACINGS`; each sampler's usual one is :attr:`Sampler.spacing`) and the per-sample noise source
(:class:`~diffsat.samplers.common.StackedRandomGenerator`). DDIM also takes ``eta``. How x0 is clipped is
the denoiser's business (:class:`~diffsat.diffusion.objective.Denoiser`), not the sampler's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..diffusion import schedules
from . import ancestral, ddim, dpm_solver


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its function, its default spacing, whether it takes a ``noise`` source, and the
    names of its further keyword options (settings of :class:`diffsat.sampling.SampleSettings`)."""

    sample: Callable
    spacing: str
    draws_noise: bool
    options: tuple[str, ...] = ()


SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(ancestral.sample, "uniform", True),
    "ddim": Sampler(ddim.sample, "uniform", True, options=("eta",)),
    "dpm++": Sampler(dpm_solver.sample, "logsnr", False),
    "dpm++sde": Sampler(dpm_solver.sample_sde, "logsnr", True),
}

SPACINGS: tuple[str, ...] = (*schedules.SPACINGS, *schedules.SCHEDULE_SPACINGS)
"""Every timestep spacing of a grid: uniform, quadratic, trailing, logsnr."""


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name`` in :data:`SAMPLERS`; ``ValueError`` naming the choices otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}': one of {', '.join(SAMPLERS)}") from None
