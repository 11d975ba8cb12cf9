"""Generating images from a trained network: batching, per-sample seeds, chains.

The samplers in :mod:`diffsat.samplers` are pure functions over one batch; this module builds their
noise-level grid once and runs them over ``n`` samples in batches with a progress bar that advances once per sampler step (one network evaluation),
so a large network shows progress long before its first image is done. Sample ``i`` of a call with ``seed``
always uses the generator seeded ``seed + i`` for its starting noise and every later draw (a
:class:`~diffsat.samplers.common.StackedRandomGenerator` per batch), so the images do not depend on
``batch_size``. Everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from .config import Config
from .diffusion.guidance import LabelError, guided_prediction, sample_labels
from .diffusion.objective import DYNAMIC_QUANTILE, X0_CLIPS, Denoiser, X0Clip
from .diffusion.schedules import NoiseSchedule, respaced_alphas_cumprod
from .errors import DiffsatError
from .models.encoders import PIXELS, Encoder
from .precision import PRECISIONS, Precision, resolve_precision
from .runtime import resolve_device
from .samplers import SPACINGS, get_sampler
from .samplers.common import Callback, StackedRandomGenerator, StepInfo
from .diffusion.conditioning import conditioned


DEFAULT_SAMPLER = "dpm++sde"
DEFAULT_STEPS = 10
"""The default of the library and of ``diffsat sample`` / ``diffsat chain``: SDE-DPM-Solver++(2M), 10 steps
(as good as 1,000 ancestral steps within the noise on the digit model: benchmarks/RESULTS.md)."""


class SampleSettingsError(DiffsatError):
    """Sampling options that do not fit together (one line naming the option and the fix)."""


@dataclass
class SampleSettings:
    """How to sample: which sampler, how many steps, its options, precision, batching and device.

    ``spacing``: which of the schedule's steps the sampler visits (:data:`SPACINGS`); ``None`` = the
    sampler's usual one (ancestral and ddim: uniform, dpm++ and dpm++sde: logsnr).
    ``eta``: DDIM's noise scale (0 = deterministic DDIM, 1 = DDPM-like); a sampler whose record
    (:class:`~diffsat.samplers.Sampler`) lists no ``eta`` option refuses a non-zero one.
    ``x0_clip``: how the denoiser's x0 estimate is kept in [-1, 1] at every step: ``static`` clamps it,
    ``dynamic`` is Imagen's dynamic thresholding with percentile ``x0_quantile``, ``none`` leaves it alone
    (see :func:`diffsat.diffusion.objective.split_prediction`). The final images are clamped to [-1, 1] in
    every case.
    ``precision``: ``fp32``, ``bf16`` autocast, or ``auto``: decided by
    :func:`diffsat.precision.resolve_precision` for the network at the batch it will run (on a CPU with native
    bf16 by a cached measurement, since bf16 doubles the speed on some such CPUs and halves it on others), and
    for a latent run's decoder separately.
    ``compile``: run the network through ``torch.compile`` (inductor, with weight freezing: the weights are
    baked into the compiled graph, so compile a network only for sampling, not between training steps).
    ``guidance``: classifier-free guidance scale for a class-conditional model (see
    :mod:`diffsat.diffusion.guidance`); ``None`` = the model config's ``train.guidance``. A scale other than 1
    costs two network evaluations per step (one call on a doubled batch).

    Invalid combinations raise :class:`SampleSettingsError` when the settings are made.
    """

    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    batch_size: int = 100
    precision: Precision = "auto"
    channels_last: bool = True
    x0_clip: X0Clip = "static"
    device: str = "auto"
    compile: bool = False
    spacing: str | None = None
    eta: float = 0.0
    x0_quantile: float = DYNAMIC_QUANTILE
    guidance: float | None = None

    def __post_init__(self) -> None:
        try:
            record = get_sampler(self.sampler)
        except ValueError as err:
            raise SampleSettingsError(str(err)) from None
        if self.precision not in PRECISIONS:
            raise SampleSettingsError(f"unknown precision '{self.precision}': one of {', '.join(PRECISIONS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise SampleSettingsError(f"steps and batch size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise SampleSettingsError(f"unknown spacing '{self.spacing}': one of {', '.join(SPACINGS)}")
        if not self.eta >= 0:  # also refuses NaN
            raise SampleSettingsError(f"eta must be >= 0 (0 = deterministic DDIM), got {self.eta}")
        if self.eta != 0 and "eta" not in record.options:
            raise SampleSettingsError(
                f"eta (--eta {self.eta:g}) is a DDIM option and sampler '{self.sampler}' has none: "
                "use the ddim sampler (--sampler ddim) or leave eta at 0"
            )
        if self.guidance is not None and not self.guidance >= 0:
            raise SampleSettingsError(f"guidance must be >= 0 (1 = the conditional model alone), got {self.guidance}")
        if not 0 < self.x0_quantile <= 1:
            raise SampleSettingsError(f"x0_quantile must be in (0, 1], got {self.x0_quantile}")
        if self.x0_clip not in X0_CLIPS:
            raise SampleSettingsError(f"unknown x0 clip '{self.x0_clip}': one of {', '.join(X0_CLIPS)}")

    def for_model(self, config: Config) -> "SampleSettings":
        """These settings with ``guidance`` filled from ``config.train.guidance`` for a class-conditional
        model when left at ``None`` (so :meth:`describe` names the scale actually used)."""
        if self.guidance is None and config.model.num_classes is not None:
            return replace(self, guidance=config.train.guidance)
        return self

    def grid(self, schedule: NoiseSchedule) -> torch.Tensor:
        """The noise-level grid the sampler visits: alpha_bar ``(steps + 1,)`` float64 of ``schedule`` at
        ``spacing`` (or the sampler's usual spacing), ``[0] = 1``."""
        return respaced_alphas_cumprod(schedule, self.steps, self.spacing or get_sampler(self.sampler).spacing)

    def sampler_options(self) -> dict[str, object]:
        """Keyword arguments of the sampler beyond grid, noise and callback: the options its record lists
        (DDIM's ``eta``)."""
        return {name: getattr(self, name) for name in get_sampler(self.sampler).options}

    def describe(self) -> str:
        """A short label, e.g. ``"ddim (eta 0.5), 20 steps, trailing spacing, dynamic x0"``; options left at
        their defaults are not named."""
        parts = [f"{self.sampler} (eta {self.eta:g})" if self.eta else self.sampler, f"{self.steps} steps"]
        if self.spacing is not None:
            parts.append(f"{self.spacing} spacing")
        if self.x0_clip != "static":
            parts.append("dynamic x0" if self.x0_clip == "dynamic" else "unclipped x0")
        if self.guidance is not None and self.guidance != 1.0:
            parts.append(f"guidance {self.guidance:g}")
        return ", ".join(parts)


def prepare_net(net: torch.nn.Module, settings: SampleSettings, device: torch.device) -> torch.nn.Module:
    """The network in eval mode on ``device`` (channels_last, compiled, as ``settings`` ask)."""
    net = net.eval().to(device)
    if settings.channels_last:
        net = net.to(memory_format=torch.channels_last)
    # Freezing lets inductor pre-pack the convolution weights (benchmarks/RESULTS.md). Static shapes: a last,
    # smaller batch (or a second network in the process) recompiles instead of turning on automatic dynamic
    # shapes, which fail inside inductor on this U-Net (ValueRangeError in the lowering).
    return torch.compile(net, dynamic=False, options={"freezing": True}) if settings.compile else net


def _with_progress(bar: tqdm, callback: Callback | None) -> Callback:
    """A step callback that calls ``callback`` (if any) then advances ``bar`` by one step."""

    def step(info: StepInfo) -> None:
        if callback is not None:
            callback(info)
        bar.update(1)

    return step


def class_labels(config: Config, n: int, settings: SampleSettings,
                 labels: Sequence[int] | None = None) -> tuple[torch.Tensor | None, float]:
    """The labels ``(n,)`` of ``n`` samples and the guidance scale, for ``config``'s model.

    A class-conditional model gets ``labels`` cycled (default: every class in turn) and ``settings.guidance``
    (default: ``config.train.guidance``); an unconditional one gets ``(None, 1.0)``, and a
    :class:`~diffsat.diffusion.guidance.LabelError` when labels or a guidance scale other than 1 are asked of it.
    """
    num_classes = config.model.num_classes
    if num_classes is None:
        if labels:
            raise LabelError("--label needs a class-conditional model (model.num_classes); this one has no classes")
        if settings.guidance not in (None, 1.0):
            raise LabelError(
                f"--guidance {settings.guidance:g} needs a class-conditional model (model.num_classes); "
                "leave it at 1 for this unconditional one"
            )
        return None, 1.0
    return sample_labels(n, num_classes, labels), settings.for_model(config).guidance


def check_condition(config: Config, condition: torch.Tensor | None, n: int) -> None:
    """A super-resolution model needs ``n`` condition images of its channels; any other model takes none."""
    if config.condition is None:
        if condition is not None:
            raise SampleSettingsError("condition images given to a model without a condition section")
        return
    if config.condition.method != "diffusion":
        raise SampleSettingsError("a regression super-resolution network is evaluated once, not sampled: "
                                  "use diffsat.superres.upscale")
    channels = config.model.in_channels - config.model.out_channels
    if condition is None or condition.dim() != 4 or condition.shape[0] != n or condition.shape[1] != channels:
        got = "none" if condition is None else str(tuple(condition.shape))
        raise SampleSettingsError(f"this x{config.condition.scale} super-resolution model needs condition images "
                                  f"({n}, {channels}, H, W), got {got}: use `diffsat upscale`")


def generate(
    net: torch.nn.Module,
    config: Config,
    n: int,
    seed: int,
    settings: SampleSettings,
    *,
    encoder: Encoder = PIXELS,
    labels: Sequence[int] | None = None,
    schedule: NoiseSchedule | None = None,
    callback_factory: Callable[[int], Callback | None] | None = None,
    progress: bool = True,
    decode: bool = True,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``n`` images: (n, C, H, W) float32 in [-1, 1].

    ``net``: the denoising network; ``encoder``: what it draws (:mod:`diffsat.models.encoders`; a
    :class:`~diffsat.rundir.LoadedModel` carries its run's): each batch of samples is decoded to images, or
    with ``decode=False`` returned as drawn ``(n, L, h, w)``.

    ``labels``: class labels for a class-conditional model, cycled over the samples (sample ``i`` gets
    ``labels[i % len(labels)]``; default: class ``i % num_classes``), see :func:`class_labels`.
    ``condition``: a super-resolution model's condition images ``(n, C, H, W)`` in [-1, 1] (the low-resolution
    inputs brought to the output size, :func:`diffsat.superres.degradation.condition_input`), one per sample.
    ``callback_factory(first_index)`` may return a per-batch step callback (used for chains). The progress
    bar counts sampler steps over all batches (``ceil(n / batch_size) * steps``) and shows images done.
    The network is prepared outside inference mode (its parameters stay ordinary tensors, e.g. for EMA
    updates) and the returned tensor is an ordinary tensor.
    """
    settings = settings.for_model(config)
    device = resolve_device(settings.device)
    schedule = schedule or NoiseSchedule.from_config(config.diffusion)
    if settings.steps > schedule.timesteps:
        raise SampleSettingsError(
            f"{settings.steps} steps asked of a schedule of {schedule.timesteps} timesteps: use at most "
            f"{schedule.timesteps} (--steps)"
        )
    sample_classes, scale = class_labels(config, n, settings, labels)
    check_condition(config, condition, n)
    size = config.model.image_size if condition is None else condition.shape[-1]
    shape = (config.model.out_channels, size, size)
    announce = print if progress else None
    calls = min(n, settings.batch_size) * (1 if sample_classes is None or scale == 1 else 2)
    eager = prepare_net(net, replace(settings, compile=False), device)  # what the precision timing runs
    net_shape = (config.model.in_channels, *shape[1:])
    bf16 = resolve_precision(settings.precision, eager, (calls, *net_shape), device,
                             channels_last=settings.channels_last, announce=announce)
    decode_bf16 = decode and encoder.to(device).decode_precision(settings.precision, shape, n, device, announce)
    net = prepare_net(net, settings, device) if settings.compile else eager
    sampler, options, grid = get_sampler(settings.sampler), settings.sampler_options(), settings.grid(schedule)
    batches = -(-n // settings.batch_size)
    desc = f"sampling {n} image{'s' if n != 1 else ''} ({settings.describe()})"
    out = []
    bar = tqdm(total=batches * settings.steps, desc=desc, unit="step", disable=not progress)
    with bar, torch.inference_mode():
        bar.set_postfix(images=f"0/{n}")
        for start in range(0, n, settings.batch_size):
            count = min(settings.batch_size, n - start)
            noise = StackedRandomGenerator(seed, count, offset=start)
            x = noise.randn(shape, device)
            if settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            callback = _with_progress(bar, callback_factory(start) if callback_factory else None)
            prediction = net if sample_classes is None else guided_prediction(
                net, sample_classes[start : start + count], scale, config.model.num_classes)
            if condition is not None:
                part = condition[start : start + count].to(device)
                prediction = conditioned(net, part.contiguous(memory_format=torch.channels_last)
                                         if settings.channels_last else part)
            denoiser = Denoiser(prediction, config.diffusion.objective, settings.x0_clip, bf16, settings.x0_quantile)
            if sampler.draws_noise:
                options["noise"] = noise
            x0 = sampler.sample(denoiser, x, grid, callback=callback, **options).float()
            out.append(encoder.decode(x0, bf16=decode_bf16) if decode else x0.clamp(-1, 1).cpu().contiguous())
            bar.set_postfix(images=f"{start + count}/{n}")
    return torch.cat(out)  # outside inference mode: an ordinary tensor


def chain_frames(
    net: torch.nn.Module,
    config: Config,
    n: int,
    seed: int,
    settings: SampleSettings,
    frames: int = 11,
    schedule: NoiseSchedule | None = None,
    progress: bool = False,
    labels: Sequence[int] | None = None,
    encoder: Encoder = PIXELS,
    condition: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """The denoising chain at ``frames`` evenly spaced steps (x_T first, x_0 last).

    Returns ``(frames, n, C, H, W)`` in [-1, 1] (x_T clamped for display) and the step fraction of each
    frame (1.0 = pure noise, 0.0 = final image). ``labels``, ``encoder``: as in :func:`generate`; every frame
    is decoded by ``encoder`` (for a latent run the first one is the decoded starting noise).
    """
    steps = settings.steps
    wanted = {round(k * steps / (frames - 1)) for k in range(frames)}
    captured: dict[int, torch.Tensor] = {}

    def factory(first: int):
        def callback(info: StepInfo) -> None:
            if info.index in wanted:
                captured.setdefault(info.index, []).append(info.x.float().cpu().clone())

        return callback

    size = config.model.image_size if condition is None else condition.shape[-1]
    start_noise = StackedRandomGenerator(seed, n).randn((config.model.out_channels, size, size))
    generate(net, config, n, seed, settings, labels=labels, schedule=schedule, callback_factory=factory,
             progress=progress, decode=False, condition=condition)
    indices = sorted(wanted)
    stack = [start_noise if i == 0 else torch.cat(captured[i]) for i in indices]
    return torch.stack([encoder.decode(frame) for frame in stack]).clamp(-1, 1), [1 - i / steps for i in indices]
