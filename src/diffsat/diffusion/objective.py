"""Forward process, parameterisations and the training loss.

With ``alpha = level = sqrt(alpha_bar)`` and ``sigma = sqrt(1 - alpha^2)`` (variance-preserving):

- forward process (Ho et al. 2020, eq. 4): ``x_t = alpha * x_0 + sigma * eps``;
- v-parameterisation (Salimans & Ho 2022, sec. 4): ``v = alpha * eps - sigma * x_0``, hence
  ``x_0 = alpha * x_t - sigma * v`` and ``eps = sigma * x_t + alpha * v``;
- eps-parameterisation: ``x_0 = (x_t - sigma * eps) / alpha``.

Tensors: images ``(B, C, H, W)``; levels ``(B,)`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ..precision import autocast
from .schedules import NoiseSchedule

if TYPE_CHECKING:
    from ..config import DiffusionConfig

Objective = Literal["eps", "x0", "v"]


def _bc(level: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast levels (B,) to (B, 1, 1, 1) in ``like``'s dtype."""
    return level.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def sigma_of(level: torch.Tensor) -> torch.Tensor:
    return (1.0 - level * level).clamp_min(0.0).sqrt()


def q_sample(x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw ``x_t = alpha x_0 + sigma eps`` for levels ``alpha`` (B,); same shape as ``x0``."""
    a = _bc(level, x0)
    return a * x0 + sigma_of(a) * noise


def target_for(objective: Objective, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output for ``objective``."""
    a = _bc(level, x0)
    targets = {"eps": lambda: noise, "x0": lambda: x0, "v": lambda: a * noise - sigma_of(a) * x0}
    return targets[objective]()


X0_CLIPS = ("static", "dynamic", "none")
"""How a sampler's x0 estimate is kept in the data range [-1, 1] (``X0Clip``): ``static`` clamps it,
``dynamic`` is Imagen's dynamic thresholding (:func:`dynamic_threshold`), ``none`` leaves it alone."""

X0Clip = Literal["static", "dynamic", "none"]

DYNAMIC_QUANTILE = 0.995
"""The default percentile p of |x0| for dynamic thresholding (diffusers' ``dynamic_thresholding_ratio``
default; Saharia et al. 2022 leave p as a hyperparameter)."""


def x0_clip_mode(clip: X0Clip) -> X0Clip:
    """``clip`` when it names one of :data:`X0_CLIPS`; ``ValueError`` naming the choices otherwise."""
    if clip not in X0_CLIPS:
        raise ValueError(f"unknown x0 clip '{clip}': one of {', '.join(X0_CLIPS)}")
    return clip


def quantile_per_sample(x: torch.Tensor, p: float) -> torch.Tensor:
    """The ``p``-quantile of each sample's values, linearly interpolated between order statistics (as
    ``torch.quantile`` and ``numpy.quantile`` do): ``x`` (B, ...) -> (B,). Uses ``kthvalue``, so it has no
    ``torch.quantile`` size limit (16M elements) and runs in linear time."""
    flat = x.reshape(x.shape[0], -1)
    pos = p * (flat.shape[1] - 1)  # 0-based fractional rank
    k = int(pos)
    low = flat.kthvalue(k + 1, dim=1).values
    if k + 1 >= flat.shape[1] or pos == k:
        return low
    high = flat.kthvalue(k + 2, dim=1).values
    return low + (pos - k) * (high - low)


def dynamic_threshold(x0: torch.Tensor, p: float = DYNAMIC_QUANTILE) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): per sample
    ``s = max(1, quantile(|x0|, p))`` and ``x0 <- clamp(x0, -s, s) / s``. A sample whose values mostly lie
    in [-1, 1] (``s = 1``) is only clamped, as by static clipping; a saturated one is pulled back
    inwards rather than flattened at +-1. ``x0``: (B, C, H, W) -> same shape, in [-1, 1]."""
    s = _bc(quantile_per_sample(x0.abs(), p).clamp_min(1.0), x0)
    return x0.clamp(-s, s) / s


def split_prediction(
    objective: Objective,
    pred: torch.Tensor,
    x_t: torch.Tensor,
    level: torch.Tensor,
    clip_x0: X0Clip = "none",
    quantile: float = DYNAMIC_QUANTILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output into ``(x0_hat, eps_hat)``.

    ``clip_x0`` (see :data:`X0_CLIPS`): ``static`` clamps the x0
    estimate to [-1, 1], ``dynamic`` applies :func:`dynamic_threshold` with percentile ``quantile``; in both
    cases eps is recomputed from the new x0 (``eps = (x_t - alpha x0) / sigma``) so the pair stays
    consistent with ``x_t``.
    """
    mode = x0_clip_mode(clip_x0)
    a = _bc(level, x_t)
    s = sigma_of(a)
    if objective == "eps":
        x0 = (x_t - s * pred) / a.clamp_min(1e-6)
    elif objective == "x0":
        x0 = pred
    elif objective == "v":
        x0 = a * x_t - s * pred
    else:
        raise ValueError(f"unknown objective '{objective}': eps, x0 or v")
    if mode == "static":
        x0 = x0.clamp(-1.0, 1.0)
    elif mode == "dynamic":
        x0 = dynamic_threshold(x0, quantile)
    if objective == "eps" and mode == "none":
        return x0, pred
    eps = (x_t - a * x0) / s.clamp_min(1e-6)
    return x0, eps


@dataclass
class Denoiser:
    """A trained network seen by samplers: ``denoiser(x_t, level) -> (x0_hat, eps_hat)``.

    Wraps the raw U-Net output according to ``objective``, keeps x0 in range as ``clip_x0`` says (a name
    of :data:`X0_CLIPS`, see :func:`split_prediction`; ``quantile`` is the dynamic
    percentile), runs the network under bf16 autocast when asked, and returns float32 tensors of the
    input's shape.
    """

    net: nn.Module
    objective: Objective = "eps"
    clip_x0: X0Clip = "static"
    autocast_bf16: bool = False
    quantile: float = DYNAMIC_QUANTILE

    def __post_init__(self) -> None:
        self.clip_x0 = x0_clip_mode(self.clip_x0)
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"dynamic thresholding quantile must be in (0, 1], got {self.quantile}")

    def __call__(self, x_t: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        level = level.to(torch.float32).expand(x_t.shape[0]) if level.dim() == 0 else level.float()
        with autocast(x_t.device, self.autocast_bf16):
            pred = self.net(x_t, level)
        return split_prediction(self.objective, pred.float(), x_t, level, self.clip_x0, self.quantile)


def sample_training_levels(schedule: NoiseSchedule, batch: int, generator: torch.Generator) -> torch.Tensor:
    """SR3 training noise levels: draw ``t ~ U{1..T}`` then ``level ~ U(sqrt(ab_t), sqrt(ab_{t-1}))``.

    Returns ``(batch,)`` float32 in [0, 1]. Continuous levels let one network serve any step count.
    """
    levels = schedule.levels_with_zero
    t = torch.randint(1, schedule.timesteps + 1, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    low, high = levels[t], levels[t - 1]
    return (low + u * (high - low)).float()


def sample_lognormal_levels(batch: int, generator: torch.Generator, mean: float, std: float) -> torch.Tensor:
    """EDM's training noise distribution (Karras et al. 2022, sec. 5: ``ln sigma ~ N(P_mean, P_std^2)``) in
    variance-preserving form: ``sigma^2 = (1 - ab) / ab``, so ``level = sqrt(ab) = 1 / sqrt(1 + sigma^2)``.

    Returns ``(batch,)`` float32 in (0, 1). It concentrates training on the mid noise levels where image
    structure is decided, instead of spending most steps near pure noise as uniform-t on a linear schedule does.
    """
    log_sigma = mean + std * torch.randn(batch, generator=generator, dtype=torch.float64)
    return torch.rsqrt(1.0 + torch.exp(2.0 * log_sigma)).float()


def min_snr_weight(objective: Objective, level: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023, eq. 9) expressed for each target: (B,)."""
    snr = level**2 / (1 - level**2).clamp_min(1e-8)
    clipped = snr.clamp(max=gamma)
    weights = {"eps": clipped / snr.clamp_min(1e-8), "x0": clipped, "v": clipped / (snr + 1)}
    return weights[objective]


@dataclass
class DiffusionLoss:
    """Training loss: ``loss(net, x0, generator) -> {"loss": scalar, "level_mean": scalar}``.

    Draws SR3 noise levels and Gaussian noise from ``generator``, noises ``x0`` ((B,C,H,W) in [-1, 1]),
    and compares the network output with the objective's target under L1 or L2 (mean over elements),
    optionally min-SNR weighted per sample.
    """

    schedule: NoiseSchedule
    objective: Objective = "eps"
    loss: str = "l2"
    min_snr_gamma: float | None = None
    level_sampling: str = "sr3"
    lognormal: tuple[float, float] = (-1.2, 1.2)

    @classmethod
    def from_config(cls, d: "DiffusionConfig", schedule: NoiseSchedule) -> "DiffusionLoss":
        return cls(schedule, d.objective, d.loss, d.min_snr_gamma, d.level_sampling,
                   (d.lognormal_mean, d.lognormal_std))

    def sample_levels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Training noise levels ``(batch,)`` in [0, 1] (see ``DiffusionConfig.level_sampling``)."""
        if self.level_sampling == "lognormal":
            return sample_lognormal_levels(batch, generator, *self.lognormal)
        return sample_training_levels(self.schedule, batch, generator)

    def __call__(
        self, net: Callable, x0: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)
    ) -> dict[str, torch.Tensor]:
        """``x0``: this rank's images ``(B, C, H, W)``. ``shard = (rank, world_size)``: levels and noise are
        drawn for the global batch of ``B * world_size`` and this rank takes its slice, so data-parallel
        training draws exactly what one process with the global batch would."""
        rank, world = shard
        b = x0.shape[0]
        level = self.sample_levels(b * world, generator)[rank * b : (rank + 1) * b].to(x0.device)
        noise = torch.randn((b * world, *x0.shape[1:]), generator=generator, dtype=x0.dtype)
        noise = noise[rank * b : (rank + 1) * b].to(x0.device)
        pred = net(q_sample(x0, level, noise), level).float()
        diff = pred - target_for(self.objective, x0, noise, level)
        per_sample = (diff.abs() if self.loss == "l1" else diff.square()).flatten(1).mean(1)
        if self.min_snr_gamma is not None:
            per_sample = per_sample * min_snr_weight(self.objective, level, self.min_snr_gamma)
        return {"loss": per_sample.mean(), "level_mean": level.mean()}


def bf16_difference(net: torch.nn.Module, x: torch.Tensor, level: float, objective: str = "eps") -> dict[str, float]:
    """How far bf16 autocast moves one inference call of ``net`` from fp32, at input ``x`` (B, C, H, W) and
    noise level ``level`` (sqrt(alpha_bar) in (0, 1)).

    Returns ``output_rel_max`` and ``output_rel_rms`` (the raw output's difference relative to its largest
    entry and in rms), and ``x0_max_abs`` / ``x0_mean_abs`` (the clipped x0 estimate's difference in image
    units of [-1, 1]; near the clean image, x0 = (x_t - sigma eps) / alpha amplifies eps errors by 1 / alpha).
    """
    lv = torch.full((x.shape[0],), level, device=x.device)
    outputs = []
    for bf16 in (False, True):
        with torch.inference_mode(), autocast(x.device, bf16):
            outputs.append(net(x, lv).float())
    fp32, bf16_out = outputs
    x0_32, _ = split_prediction(objective, fp32, x, lv, clip_x0="static")
    x0_16, _ = split_prediction(objective, bf16_out, x, lv, clip_x0="static")
    return {"output_rel_max": float((bf16_out - fp32).abs().max() / fp32.abs().max()),
            "output_rel_rms": float((bf16_out - fp32).norm() / fp32.norm()),
            "x0_max_abs": float((x0_16 - x0_32).abs().max()), "x0_mean_abs": float((x0_16 - x0_32).abs().mean())}
