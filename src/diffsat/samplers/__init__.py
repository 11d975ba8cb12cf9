"""Samplers: functions ``sample(model, x, schedule, steps, *, generator, callback=None, spacing=...) -> x0``.

- ``ancestral``: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), stochastic;
- ``ddim``: DDIM (Song et al. 2021, eq. 12), deterministic at the default ``eta = 0``;
- ``dpm++``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), deterministic, log-SNR spacing by default;
- ``dpm++sde``: SDE-DPM-Solver++(2M) (the same solver for the reverse SDE): ancestral sampling with the 2M
  second-order correction, stochastic, log-SNR spacing by default.

Every sampler takes ``spacing`` (one of :data:`SPACINGS`); DDIM also takes ``eta``. How x0 is clipped is
the denoiser's business (:class:`~diffsat.diffusion.objective.Denoiser`), not the sampler's.
"""

from __future__ import annotations

from collections.abc import Callable

from ..diffusion import schedules
from . import ancestral, ddim, dpm_solver

SAMPLERS: dict[str, Callable] = {
    "ancestral": ancestral.sample,
    "ddim": ddim.sample,
    "dpm++": dpm_solver.sample,
    "dpm++sde": dpm_solver.sample_sde,
}

SPACINGS: tuple[str, ...] = (*schedules.SPACINGS, *schedules.SCHEDULE_SPACINGS)
"""Every timestep spacing a sampler's ``spacing`` accepts: uniform, quadratic, trailing, logsnr."""


def get_sampler(name: str) -> Callable:
    """The sampling function registered as ``name`` in :data:`SAMPLERS`; ``ValueError`` naming the
    choices otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}': one of {', '.join(SAMPLERS)}") from None
