"""The noise schedule a checkpoint stores in its buffers, and how it compares with a config's."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..config import SCHEDULE_NAMES, DiffusionConfig
from ..diffusion.schedules import F64, NoiseSchedule, make_betas
from ..errors import CheckpointError


def schedule_from_buffers(buffers: Mapping[str, torch.Tensor]) -> NoiseSchedule:
    """The schedule stored in a checkpoint: ``alphas_cumprod`` (T,) as float64 (else derived from ``betas``)."""
    if "alphas_cumprod" in buffers:
        return NoiseSchedule(buffers["alphas_cumprod"].detach().to(F64).reshape(-1).clone())
    if "betas" in buffers:
        return NoiseSchedule.from_betas(buffers["betas"].detach().reshape(-1))
    raise CheckpointError("the checkpoint holds no schedule buffers (alphas_cumprod / betas)")


def _guess_schedule(betas: torch.Tensor) -> str:
    n, start, end = betas.shape[0], float(betas[0]), float(betas[-1])
    for name in SCHEDULE_NAMES:
        candidate = make_betas(name, n, start, end)
        if torch.allclose(candidate, betas, rtol=1e-5, atol=0.0):
            return name
    return "custom"


def _describe(name: str, betas: torch.Tensor) -> str:
    return f"{name} (T={betas.shape[0]}, beta {float(betas[0]):.3g}..{float(betas[-1]):.3g})"


def _vector(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(F64).reshape(-1)


def _max_difference(theirs: torch.Tensor, ours: torch.Tensor, what: str) -> str | None:
    """``None`` when equal length and within 1e-6 relative, else a ``, max |... difference| x`` fragment."""
    if theirs.shape != ours.shape:
        return ""
    if bool(((theirs - ours).abs() <= 1e-6 * ours.abs()).all()):
        return None
    return f", max |{what} difference| {float((theirs - ours).abs().max()):.3g}"


def compare_schedule(buffers: Mapping[str, torch.Tensor], diffusion: DiffusionConfig) -> str | None:
    """One-line warning when the checkpoint's schedule differs from the config's; ``None`` if they agree.

    Compares ``betas`` (T,) with ``make_betas`` of the config to 1e-6 relative; a file with only
    ``alphas_cumprod`` is compared on alpha_bar (betas derived from float32 alpha_bar are too noisy).
    """
    ours = make_betas(diffusion.schedule, diffusion.timesteps, diffusion.beta_start, diffusion.beta_end)
    if "betas" in buffers:
        theirs = _vector(buffers["betas"])
        diff, held = _max_difference(theirs, ours, "beta"), _describe(_guess_schedule(theirs), theirs)
    else:
        theirs = schedule_from_buffers(buffers).alphas_cumprod
        diff = _max_difference(theirs, torch.cumprod(1.0 - ours, 0), "alpha_bar")
        held = f"a schedule of T={theirs.shape[0]} (alphas_cumprod only)"
    if diff is None:
        return None
    return (f"noise schedule mismatch: the checkpoint holds {held} but the config's diffusion section gives "
            f"{_describe(diffusion.schedule, ours)}{diff}; the checkpoint's schedule is used")
