"""Typed, validated run configuration.

A config is four sections (``model``, ``diffusion``, ``data``, ``train``) read from JSON, plus ``latent``
for latent diffusion; an autoencoder run's config has ``autoencoder``, ``loss``, ``data`` and ``train``. Every key is
typed; an unknown or mistyped key is a :class:`ConfigError` whose one-line message names the key and the
file. ``--set section.key=value`` overrides go through :func:`apply_overrides` before validation, so they
are checked the same way. The resolved config is written into every run directory (``config.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .ddpmcd import foreign_keys, is_ddpmcd_config, map_ddpmcd_config
from .errors import ConfigError
from .fileio import atomic_write_text
from .precision import Precision

SCHEDULE_NAMES = ("linear", "quad", "warmup10", "warmup50", "const", "jsd", "cosine")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The SR3-type U-Net (names follow DDPM-CD's ``model.unet`` block)."""

    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(1, ge=1)
    base_channels: int = Field(64, ge=1)
    channel_mults: tuple[int, ...] = Field((1, 2, 4), min_length=1)
    res_blocks: int = Field(2, ge=1)
    attn_resolutions: tuple[int, ...] = (7,)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm_groups: int = Field(32, ge=1)
    image_size: int = Field(28, ge=1)
    num_classes: int | None = Field(None, ge=1)
    """Class-conditional network: a learned class embedding (``label_emb``, one row per class plus a "no
    class" row for classifier-free guidance) is added to the noise-level embedding. The training data must
    carry labels (MNIST digits, an image folder's class sub-folders). ``None``: unconditional, as SR3."""


class DiffusionConfig(_Section):
    """Noise schedule and training objective."""

    schedule: Literal["linear", "quad", "warmup10", "warmup50", "const", "jsd", "cosine"] = "linear"
    timesteps: int = Field(1000, ge=1)
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0)
    beta_end: float = Field(0.02, gt=0.0, le=1.0)
    objective: Literal["eps", "x0", "v"] = "eps"
    loss: Literal["l1", "l2"] = "l2"
    min_snr_gamma: float | None = Field(None, gt=0.0)
    """Min-SNR-gamma loss weighting (Hang et al. 2023); ``None`` weights every noise level alike."""
    level_sampling: Literal["sr3", "lognormal"] = "sr3"
    """Training noise levels: ``sr3`` = uniform between adjacent sqrt(alpha_bar) of the schedule (SR3);
    ``lognormal`` = ln(sigma) ~ N(lognormal_mean, lognormal_std^2) with sigma^2 = (1 - ab) / ab (EDM)."""
    lognormal_mean: float = -1.2
    lognormal_std: float = Field(1.2, gt=0.0)


class NormalisationConfig(_Section):
    """How raster values become the model range [-1, 1], per band (:mod:`diffsat.geo.normalise`); the map is
    computed once from the training data, stored in the run (``normalisation.json``) and applied again at
    prediction."""

    method: Literal["auto", "percentile", "meanstd", "fixed"] = "auto"
    """``auto``: 8-bit inputs ``v / 127.5 - 1``, others ``percentile``; ``percentile``: the ``percentiles``
    of each band's training pixels to -1 and 1 (robust to clouds and saturated pixels); ``meanstd``: mean
    -/+ ``std_range`` standard deviations to -1 and 1; ``fixed``: ``(v - offset) * scale``."""
    percentiles: tuple[float, float] = (2.0, 98.0)
    std_range: float = Field(3.0, gt=0.0)
    scale: float | tuple[float, ...] | None = None
    """``fixed``: one factor, or one per band (Sentinel-2 L1C reflectance to [-1, 1]: ``scale 0.0002``,
    ``offset 5000``)."""
    offset: float | tuple[float, ...] = 0.0

    @model_validator(mode="after")
    def _fixed(self) -> "NormalisationConfig":
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError("normalisation.percentiles must be two increasing values in [0, 100]")
        if (self.method == "fixed") != (self.scale is not None):
            raise ValueError("normalisation.scale is given with method 'fixed' and only then")
        return self


class DataConfig(_Section):
    """Where images come from, how they are held in memory, and how each batch is cropped and augmented.

    Tiles are decoded once and held in memory at ``load_size`` (default: ``image_size``, or the stored
    tile size when ``random_crop`` is on); every training batch is then cut to ``image_size``: a random
    crop per image with ``random_crop``, else the centre. A 64 px crop of a 128 px tile keeps the ground
    resolution (m/px) and shows a quarter of the tile; resizing to 64 px shows all of it at half the detail.
    """

    path: str | None = None
    """MNIST idx folder / PNG class folder / image folder / LEVIR-CD root (with A/, B/, list/).
    ``None`` for kind ``mnist``: the default source."""
    kind: Literal["mnist", "folder", "levir", "rasters"] = "mnist"
    """``rasters``: GeoTIFFs (any band count and dtype) cut into tiles (:mod:`diffsat.data.rasters`)."""
    split: Literal["train", "test"] = "train"
    """MNIST: the training or test digits. Image folders and LEVIR-CD with ``holdout``: the images kept for
    training, or the held-out ones."""
    holdout: int | None = Field(None, ge=2)
    """Image folders / LEVIR-CD: hold out every ``holdout``-th image in file order (10: one in ten of each
    class of a class-sorted folder) as the ``test`` split. ``None``: no held-out split (``test`` is an error)."""
    limit: int | None = Field(None, ge=1)
    """Take the first N readable images (in file order, after the split) so runs are comparable."""
    image_size: int = Field(28, ge=1)
    """Side of the training images (the model's input); must equal ``model.image_size``."""
    channels: int = Field(1, ge=1)
    load_size: int | None = Field(None, ge=1)
    """Side the decoded tiles are held at (``>= image_size``). ``None``: ``image_size``, or with
    ``random_crop`` the stored size of the tiles (the most common size in the selection)."""
    random_crop: bool = False
    """Train on a random ``image_size`` crop of each held tile (per image, per step) instead of its centre."""
    on_size_mismatch: Literal["resize", "crop", "skip"] = "resize"
    """Images whose size differs from the most common one: ``resize`` (centre square, resampled like the
    others), ``crop`` their centre to that size (keeps the m/px scale of satellite tiles; smaller images
    are skipped) or ``skip``. Each such image is named in a warning."""
    levir_images: Literal["A", "B", "both"] = "both"
    """LEVIR-CD: the ``A/`` (before) images, the ``B/`` (after) images, or both (labels 0 = A, 1 = B)."""
    levir_list: str | None = None
    """LEVIR-CD: a list file in ``list/`` (``train``, ``val``, ``test``, ``demo``; ``.txt`` optional) naming
    the images to take; ``None`` takes every image in ``A/`` / ``B/``."""
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    """Random 90-degree rotations: valid for nadir (satellite) imagery, never for digits."""
    bands: tuple[str | int, ...] | None = None
    """``rasters``: the bands to use, by name (``B04``, a band description) or 1-based position; ``None``:
    every band. ``channels`` must equal their number."""
    scenes: tuple[str, ...] | None = None
    """``rasters``: only these scenes: OSCD cities (both dates of each), or raster files by name without
    suffix; ``None``: every scene."""
    normalisation: NormalisationConfig = NormalisationConfig()
    """``rasters``: how band values become [-1, 1] (made from the training split, stored in the run)."""

    @model_validator(mode="after")
    def _sizes(self) -> "DataConfig":
        if self.load_size is not None and self.load_size < self.image_size:
            raise ValueError(
                f"data.load_size ({self.load_size}) must be at least data.image_size ({self.image_size})"
            )
        return self


class TrainConfig(_Section):
    """Optimisation, logging and checkpointing."""

    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0.0)
    lr_schedule: Literal["constant", "cosine", "wsd"] = "constant"
    """After the linear warm-up: constant; cosine decay to 0 at the end of the budget; or ``wsd``
    (warm-up, stable, decay): constant, then a cosine decay to 0 over the last ``lr_decay_fraction`` of the
    budget (see ``lr_over`` for what the budget is)."""
    lr_decay_fraction: float = Field(0.2, gt=0.0, le=1.0)
    """``wsd``: the final fraction of the budget over which the learning rate decays to 0."""
    lr_over: Literal["steps", "budget"] = "steps"
    """What the schedule runs over: ``steps`` (``step / max_steps``: a run that its time limit stops ends
    part-way down the curve, at a higher rate) or ``budget`` (the fraction of the budget spent, steps or
    ``time_limit_minutes``, whichever is further: a run that its time limit stops ends annealed). ``steps`` by
    measurement: on ``mnist_cpu`` stopped at two thirds of its steps, annealing within the budget scored far
    worse (benchmarks/RESULTS.md, issue 25)."""
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    max_steps: int = Field(10_000, ge=1)
    time_limit_minutes: float | None = Field(None, gt=0.0)
    """Stop once training steps (of every session of the run), with a latent run's encoding of its
    training set (and a TAESD-family run's latent statistics), took this long; ``None``: only ``max_steps``
    stops training."""
    time_limit_clock: Literal["wall", "cpu"] = "wall"
    """What ``time_limit_minutes`` counts: wall-clock seconds, or this process's CPU seconds (all threads:
    robust to other load on the machine)."""
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    precision: Precision = "fp32"
    """``bf16``: bfloat16 autocast for the forward pass (weights, optimiser and EMA stay float32); ``auto``:
    bf16 when a cached measurement of this network's training step on this machine finds it faster
    (:mod:`diffsat.precision`)."""
    channels_last: bool = False
    compile: bool = False
    """Run the training forward pass through ``torch.compile`` (inductor; needs a C++ compiler on the CPU).
    Opt-in: whether it pays depends on the machine (benchmarks/RESULTS.md)."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch (``None``: torch's default, one per core)."""
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(1000, ge=1)
    sample_steps: int = Field(100, ge=1)
    """Ancestral steps used for the periodic sample grids."""
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Class-conditional models (``model.num_classes``): the fraction of training images shown with the
    "no class" label, so that one network also learns the unconditional model that classifier-free
    guidance needs (Ho & Salimans 2022, sec. 3.2)."""
    guidance: float = Field(1.0, ge=0.0)
    """Class-conditional models: classifier-free guidance scale of the periodic grids and evaluation samples,
    and the default of ``diffsat sample --guidance`` (1 = the conditional model alone, 0 = unconditional,
    > 1 = guided). Must be 1 for an unconditional model."""
    save_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints the run directory keeps (an unreadable newest one falls back to the
    one before it)."""
    eval_every: int | None = Field(None, ge=1)
    """Log sample-quality numbers (digit classifier or SWD) every N steps; ``None`` = off."""
    tensorboard: bool = False
    """Also log to TensorBoard under RUN_DIR/tensorboard (needs ``pip install "diffsat[tensorboard]"``)."""
    eval_samples: int = Field(200, ge=2)
    """EMA samples drawn (``sample_steps`` ancestral steps) for each evaluation."""
    init_from: str | None = None
    """Start from these weights instead of random ones (shapes checked against ``model``): a diffsat run
    directory (its EMA weights), a ``.safetensors`` weights file or a DDPM-CD / SR3 ``*_gen.pth`` (both with
    ``init_from_config``). Recorded in the run's config; ``--resume`` continues from the run's own checkpoint."""
    init_from_config: str | None = None
    """The config of an ``init_from`` weights file (ours, or the DDPM-CD / SR3 JSON it came with)."""
    freeze: tuple[str, ...] = ()
    """U-Net parts kept as they are (no gradient, no update): ``noise_embedding`` (the noise-level MLP and
    class embedding), ``encoder`` (the first convolution and the down path), ``middle``, ``decoder`` (the up
    path and the last block), or parameter-name prefixes (``downs.0``)."""
    seed: int = 0


class AutoencoderModelConfig(_Section):
    """The autoencoder of latent diffusion: SR3 blocks without noise conditioning.

    Encoder: ``init_conv`` -> per level ``res_blocks`` residual blocks, a stride-2 Downsample between levels
    -> a middle block (with attention when ``attention``) -> GroupNorm, Swish, Conv to ``2 * latent_channels``
    (mean and log-variance). The decoder mirrors it with Upsample. ``len(channel_mults) - 1`` halvings give
    the downsampling factor (2, 4 or 8): a ``(C, S, S)`` image becomes a ``(latent_channels, S/f, S/f)``
    latent."""

    in_channels: int = Field(3, ge=1)
    base_channels: int = Field(64, ge=1)
    channel_mults: tuple[int, ...] = Field((1, 2, 4), min_length=2, max_length=4)
    res_blocks: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_groups: int = Field(32, ge=1)
    attention: bool = False
    image_size: int = Field(64, ge=1)
    """Side of the training crops (must equal ``data.image_size``); the network itself takes any multiple of
    the factor."""

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)


class AutoencoderLossConfig(_Section):
    """The autoencoder's training loss: every term is switched off by a zero weight.

    ``reconstruction`` (L1 or L2 of the pixels) + ``kl_weight`` * KL(q(z|x) || N(0, I)) (mean over latent
    values) + ``ssim_weight`` * (1 - SSIM) + ``fft_weight`` * L1 of the 2-D FFT amplitudes (orthonormal)
    + ``adversarial_weight`` * a hinge patch-discriminator term, from step ``adversarial_start`` on (the
    discriminator, trained from scratch, starts then)."""

    reconstruction: Literal["l1", "l2"] = "l1"
    kl_weight: float = Field(1e-6, ge=0.0)
    ssim_weight: float = Field(0.0, ge=0.0)
    fft_weight: float = Field(0.0, ge=0.0)
    adversarial_weight: float = Field(0.0, ge=0.0)
    adversarial_start: int = Field(0, ge=0)
    discriminator_channels: int = Field(64, ge=1)
    discriminator_layers: int = Field(3, ge=1, le=5)
    discriminator_lr: float | None = Field(None, gt=0.0)
    """``None``: ``train.lr``."""
    interior_margin: int = Field(0, ge=0)
    """Latent pixels cut from each side of a training crop's latent before it is decoded; every term then
    scores the matching interior of the crop. A latent diffusion model learns crops of whole tiles' latents,
    whose edges carry no trace of an image border: a margin trains the decoder on such latents (0: the whole
    latent is decoded, and sampled latents are decoded with edge padding instead)."""


class AutoencoderRunConfig(_Section):
    """An autoencoder run (``diffsat train`` on a config with an ``autoencoder`` section): the network, its
    loss, the images (``data``, as for diffusion) and the optimisation (``train``; the diffusion-only keys
    ``sample_steps``, ``guidance`` and ``label_dropout`` are unused)."""

    autoencoder: AutoencoderModelConfig = AutoencoderModelConfig()
    loss: AutoencoderLossConfig = AutoencoderLossConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "AutoencoderRunConfig":
        a, d = self.autoencoder, self.data
        if a.in_channels != d.channels:
            raise ValueError(f"autoencoder.in_channels ({a.in_channels}) must equal data.channels ({d.channels})")
        if a.image_size != d.image_size:
            raise ValueError(f"autoencoder.image_size ({a.image_size}) must equal data.image_size ({d.image_size})")
        if d.image_size % a.factor:
            raise ValueError(f"data.image_size ({d.image_size}) must be a multiple of the autoencoder's "
                             f"downsampling factor {a.factor} (2 ** (len(channel_mults) - 1))")
        if self.train.init_from is not None or self.train.freeze:
            raise ValueError("train.init_from and train.freeze apply to diffusion runs; an autoencoder run trains "
                             "from random weights")
        decoded = d.image_size - 2 * self.loss.interior_margin * a.factor
        if decoded < (11 if self.loss.ssim_weight else 1):
            raise ValueError(f"loss.interior_margin ({self.loss.interior_margin}) leaves a {decoded} px interior of "
                             f"the {d.image_size} px crops to decode (SSIM needs 11): lower it")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class LatentConfig(_Section):
    """Latent diffusion: the U-Net learns the latents of a trained autoencoder run instead of the pixels.

    ``model.in_channels``/``out_channels`` are then the autoencoder's ``latent_channels`` and
    ``model.image_size`` is ``data.image_size`` divided by its downsampling factor (checked against the run
    when the config is used: :func:`diffsat.rundir.load_autoencoder`)."""

    autoencoder: str
    """Run directory of an autoencoder trained with ``diffsat train`` (its EMA weights are used, frozen), or a
    pretrained TAESD-family autoencoder: a folder holding ``<name>_encoder.pth`` and ``<name>_decoder.pth``
    (or ``folder/<name>``), e.g. ``../shared/weights/taesd`` for TAEF2 (f = 8, 32 latent channels)."""
    variant: Literal["taesd", "taesdxl", "taesd3", "taef1", "taef2"] | None = None
    """A TAESD-family autoencoder's variant, checked against its files (``None``: recognised from them)."""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    """A TAESD-family first stage: per-channel mean and standard deviation of its latents of the training
    tiles, which the U-Net sees normalised to unit variance. ``None``: computed when training starts and
    written into the run's config (a diffsat autoencoder run keeps its own in its weights)."""


class ConditionConfig(_Section):
    """Super-resolution (SR3, Saharia et al. 2021): the network sharpens a low-resolution image.

    Training pairs are made on the fly from the high-resolution training crops by the degradation below
    (:mod:`diffsat.superres.degradation`): blur, down-sampling by ``scale``, noise. For ``method
    "diffusion"`` the low-resolution image, brought back to the crop size by bicubic interpolation, is
    concatenated before x_t at the network's input, as SR3 does (``model.in_channels`` = 2 x
    ``data.channels``); for ``"regression"`` (SR3's own baseline: the same U-Net trained on the direct
    ``diffusion.loss``) it is the network's only input (``model.in_channels`` = ``data.channels``)."""

    kind: Literal["super_resolution"] = "super_resolution"
    scale: Literal[2, 4, 8] = 4
    downsample: Literal["bicubic", "area"] = "bicubic"
    """``bicubic`` with antialiasing (the literature's and MATLAB's ``imresize``) or ``area`` (the mean of each
    ``scale x scale`` block: a sensor integrating over a coarser pixel)."""
    blur_sigma: float = Field(0.0, ge=0.0)
    """Gaussian blur (standard deviation in high-resolution pixels) before down-sampling; 0: none."""
    noise_std: float = Field(0.0, ge=0.0)
    """Gaussian noise added to the low-resolution image (model range [-1, 1] units), drawn from the step's
    generator; 0: none."""
    method: Literal["diffusion", "regression"] = "diffusion"
    target: Literal["image", "residual"] = "image"
    """What the network makes: ``image``, the high-resolution image itself (SR3); ``residual``, its difference
    from the bicubically upsampled condition (SRDiff, Li et al. 2022), which the output adds back
    (:func:`diffsat.diffusion.conditioning.to_target`). SR3 checkpoints are ``image``."""


class Config(_Section):
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    latent: LatentConfig | None = None
    condition: ConditionConfig | None = None
    """Super-resolution (``kind super_resolution``); ``None``: an unconditional or class-conditional model."""

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        m = self.model
        if self.condition is not None:
            self._condition_fits()
        elif self.latent is None:
            self._pixel_shapes()
        if self.diffusion.beta_start > self.diffusion.beta_end:
            raise ValueError("diffusion.beta_start must not exceed diffusion.beta_end")
        if self.train.sample_steps > self.diffusion.timesteps:
            raise ValueError(
                f"train.sample_steps ({self.train.sample_steps}) cannot exceed diffusion.timesteps "
                f"({self.diffusion.timesteps}): the grids respace the training schedule"
            )
        if m.num_classes is None and self.train.guidance != 1.0:
            raise ValueError(
                f"train.guidance ({self.train.guidance:g}) needs a class-conditional model: set model.num_classes "
                "or leave train.guidance at 1"
            )
        return self

    def _pixel_shapes(self, in_channels: int | None = None) -> None:
        m, d = self.model, self.data
        expected = d.channels if in_channels is None else in_channels
        if m.in_channels != expected:
            what = f"data.channels ({d.channels})" if in_channels is None else \
                f"{expected} (data.channels {d.channels}: condition image + x_t)"
            raise ValueError(f"model.in_channels ({m.in_channels}) must equal {what}")
        if m.image_size != d.image_size:
            raise ValueError(
                f"model.image_size ({m.image_size}) must equal data.image_size ({d.image_size})"
            )

    def _condition_fits(self) -> None:
        c, m, d = self.condition, self.model, self.data
        if self.latent is not None or m.num_classes is not None:
            raise ValueError("condition (super-resolution) works on pixels without classes: remove the latent "
                             "section and model.num_classes")
        if m.out_channels != d.channels:
            raise ValueError(f"model.out_channels ({m.out_channels}) must equal data.channels ({d.channels}) for "
                             "super-resolution")
        self._pixel_shapes(d.channels * (2 if c.method == "diffusion" else 1))
        if d.image_size % c.scale:
            raise ValueError(f"data.image_size ({d.image_size}) must be a multiple of condition.scale ({c.scale})")

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        for optional in ("latent", "condition"):
            if data[optional] is None:
                del data[optional]  # other runs' config.json stays as it was
        return data


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see the README's config reference)"
    extra = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: config key '{key}': {msg}{extra}"


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain dict; raise :class:`ConfigError` naming ``source`` and the bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a JSON object with sections model/diffusion/data/train")
    return _validated(Config, data, source)


def _validated(cls: type[_Section], data: dict[str, Any], source: str):
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "--set",
                    sections: Iterable[str] | None = None) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a config dict (values parsed as JSON, else strings).
    ``sections``: the valid section names (default: those of :class:`Config`).

    >>> apply_overrides({"train": {"lr": 1e-4}}, ["train.lr=3e-4"])["train"]["lr"]
    0.0003
    """
    out = json.loads(json.dumps(data))
    known = tuple(Config.model_fields if sections is None else sections)
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"{source} '{item}': expected section.key=value, e.g. train.lr=3e-4")
        section, name = parts
        if section not in known:
            raise ConfigError(
                f"{source} '{item}': unknown section '{section}' (one of {', '.join(known)})"
            )
        out.setdefault(section, {})[name] = _parse_value(value)
    return out


_JSON_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)


def strip_json_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments outside JSON strings; newlines are kept so error lines still match.

    >>> strip_json_comments('{"url": "http://x"} // note')
    '{"url": "http://x"} '
    """

    def keep(match: re.Match[str]) -> str:
        token = match.group(0)
        return token if token.startswith('"') else "\n" * token.count("\n")

    return _JSON_TOKEN.sub(keep, text)


def read_json(path: str | Path) -> Any:
    """Read a JSON file (``//`` and ``/* */`` comments allowed, as in DDPM-CD's configs), with a one-line
    error naming the file, line and column on bad syntax."""
    path = Path(path)
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a JSON config is expected)") from None
    try:
        return json.loads(strip_json_comments(text))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def load_config(path: str | Path, overrides: list[str] | None = None, phase: str = "val") -> Config:
    """Load and validate a config file: our JSON, or a DDPM-CD/SR3 JSON (detected by ``model.unet``, mapped
    onto ours with the ``phase`` beta schedule). A run directory's config: :func:`diffsat.rundir.load_run_config`.

    ``overrides`` (``section.key=value``) apply to our form of the config, so they are validated the same way.
    """
    config = load_any_config(path, overrides, phase)
    if isinstance(config, AutoencoderRunConfig):
        raise ConfigError(
            f"{path}: an autoencoder config (section 'autoencoder'), not a diffusion model: train it with "
            "`diffsat train`, then sample, chain or evaluate a latent diffusion run whose latent.autoencoder names it"
        )
    return config


def is_autoencoder_config(data: Any) -> bool:
    """Whether a config dict describes an autoencoder run (it has an ``autoencoder`` section)."""
    return isinstance(data, dict) and "autoencoder" in data


def parse_autoencoder_config(data: dict[str, Any], source: str = "<config>") -> AutoencoderRunConfig:
    """Validate an autoencoder run config dict; raise :class:`ConfigError` naming ``source`` and the bad key."""
    return _validated(AutoencoderRunConfig, data, source)


def load_any_config(path: str | Path, overrides: list[str] | None = None,
                    phase: str = "val") -> Config | AutoencoderRunConfig:
    """A diffusion config (as :func:`load_config`) or an autoencoder run config, whichever the file holds."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file: give the JSON file (or the run directory's)")
    data = read_json(path)
    source = str(path)
    if is_autoencoder_config(data):
        sections = AutoencoderRunConfig.model_fields
        return parse_autoencoder_config(apply_overrides(data, overrides or [], sections=sections), source)
    if is_ddpmcd_config(data):
        data, source = config_from_ddpmcd(data, source, phase).to_dict(), f"{path} (mapped from DDPM-CD)"
    return parse_config(apply_overrides(data, overrides or []), source=source)


def _foreign_validation_error(err: ValidationError, phase: str, source: str) -> ConfigError:
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    key = foreign_keys(phase).get(loc[:2]) if len(loc) >= 2 else None
    where = f"DDPM-CD config key '{key}'" if key else f"config key '{'.'.join(loc) or '(top level)'}'"
    return ConfigError(f"{source}: {where}: {first['msg']} (while mapping the DDPM-CD config)")


def config_from_ddpmcd(data: dict[str, Any], source: str = "<ddpm-cd config>", phase: str = "val") -> Config:
    """A DDPM-CD/SR3 JSON config as our :class:`Config` (mapping: :func:`diffsat.ddpmcd.map_ddpmcd_config`);
    a value our config refuses is reported under the DDPM-CD key it came from."""
    try:
        return Config.model_validate(map_ddpmcd_config(data, source, phase))
    except ValidationError as err:
        raise _foreign_validation_error(err, phase, source) from None


def is_conditional(cfg: Config) -> bool:
    """A super-resolution model (``condition`` set): it needs a low-resolution image to draw from."""
    return cfg.condition is not None


def check_unconditional(cfg: Config) -> None:
    """Raise :class:`ConfigError` for a super-resolution model: ``sample`` and ``chain`` draw from noise alone."""
    if is_conditional(cfg):
        c = cfg.condition
        raise ConfigError(
            f"this is a x{c.scale} super-resolution model ({c.method}; it needs a low-resolution image): use "
            "`diffsat upscale RUN --input FILE_OR_FOLDER --out DIR`"
        )


def save_config(config: Config | AutoencoderRunConfig, path: str | Path) -> None:
    """Write the resolved config (every key, defaults included) as indented JSON."""
    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")
