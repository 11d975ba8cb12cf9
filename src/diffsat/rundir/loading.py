"""Loading a run's config and its network: :func:`load_model` (a run directory or a foreign weights file)
returns a :class:`LoadedModel`, :func:`load_autoencoder` a :class:`LoadedAutoencoder`, :func:`random_model`
the configured network with fresh weights, :func:`run_encoder` what a diffusion config's network draws
(pixels, or the latents of its named autoencoder run: :mod:`diffsat.models.encoders`).

Foreign weight files (DDPM-CD / SR3 ``*_gen.pth``, bare state dicts, ``.safetensors``) are read with
``torch.load(weights_only=True)`` (:mod:`diffsat.rundir.reading`); their layouts are mapped by
:mod:`diffsat.ddpmcd`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import AutoencoderRunConfig, Config, load_any_config, load_config
from ..ddpmcd import to_our_keys
from ..diffusion.schedules import NoiseSchedule
from ..errors import CheckpointError, ConfigError
from ..models.autoencoder import Autoencoder, build_autoencoder
from ..models.encoders import DECODE_PAD, PIXELS, AutoencoderLatents, Encoder, TaesdLatents
from ..models.taesd import TaesdAutoencoder
from ..models.unet import build_unet
from .checkpoints import _run_weights
from .names import CONFIG_FILE, EMA_FILE, SCHEDULE_FILE, run_file
from .reading import _existing_file, read_checkpoint
from .taesd import load_taesd, taesd_files
from .schedules import compare_schedule, schedule_from_buffers
from .state_dict import load_state_into


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """The config of a run directory (its ``config.json``) or of a config file (ours or DDPM-CD's), with
    ``section.key=value`` overrides (see :func:`diffsat.config.load_config`)."""
    path = Path(path)
    return load_config(run_file(path, CONFIG_FILE) if path.is_dir() else path, overrides)


def load_any_run_config(path: str | Path, overrides: list[str] | None = None) -> Config | AutoencoderRunConfig:
    """As :func:`load_run_config`, also for an autoencoder run or config (:func:`diffsat.config.load_any_config`)."""
    path = Path(path)
    return load_any_config(run_file(path, CONFIG_FILE) if path.is_dir() else path, overrides)


@dataclass(frozen=True)
class LoadedModel:
    """A network loaded by :func:`load_model`.

    ``network``: the :class:`~diffsat.models.unet.SR3UNet` in eval mode on the CPU; ``config``: our config of
    it; ``schedule``: the noise schedule it was trained with (the file's own when it carries one);
    ``weights``: which weights were loaded: ``"ema"`` or ``"model"`` of a run directory, or the path of a
    foreign weights file; ``encoder``: what the network draws (:func:`run_encoder`; pass it to
    :func:`diffsat.sampling.generate`).
    """

    network: nn.Module
    config: Config
    schedule: NoiseSchedule
    weights: str
    encoder: Encoder = PIXELS


def _resolve_config(config: Config | str | Path | None, source: Path) -> Config:
    if config is None:
        raise CheckpointError(
            f"{source}: a weights file carries no network description: pass --config CONFIG.json "
            f"(a diffsat config or the DDPM-CD/SR3 JSON the weights were trained with)")
    return config if isinstance(config, Config) else load_run_config(config)


def _schedule(cfg: Config, buffers: Mapping[str, torch.Tensor], source: str) -> NoiseSchedule:
    if not buffers:
        return NoiseSchedule.from_config(cfg.diffusion)
    message = compare_schedule(buffers, cfg.diffusion)
    if message:
        warnings.warn(f"{source}: {message}", stacklevel=4)  # the caller of load_model
    return schedule_from_buffers(buffers)


def _network(cfg: Config, weights: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    with torch.device("meta"):
        model = build_unet(cfg.model)
    load_state_into(model, weights, source)
    return model.eval()


@dataclass(frozen=True)
class LoadedAutoencoder:
    """An autoencoder run loaded by :func:`load_autoencoder`: its ``network`` (EMA weights, eval mode, CPU,
    with the latent statistics it was saved with), its ``config`` and the ``weights`` file read."""

    network: Autoencoder
    config: AutoencoderRunConfig
    weights: str

    @property
    def decode_pad(self) -> int:
        """Edge padding its latents need when decoded: none for a decoder trained on interior latents
        (``loss.interior_margin``), else :data:`~diffsat.models.encoders.DECODE_PAD`."""
        return 0 if self.config.loss.interior_margin else DECODE_PAD

    def encoder(self) -> AutoencoderLatents:
        """This autoencoder's normalised latents, decoded as its training calls for."""
        return AutoencoderLatents(self.network, self.decode_pad)


def _autoencoder_config(path: Path, named: str) -> AutoencoderRunConfig:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(
            f"latent.autoencoder '{named}': no autoencoder run at {path} (a directory with config.json and weights "
            "from `diffsat train` on an autoencoder config) and no TAESD-family weights (<name>_encoder.pth, "
            "<name>_decoder.pth): train one there or correct the path")
    config = load_any_config(config_file)
    if not isinstance(config, AutoencoderRunConfig):
        raise ConfigError(f"latent.autoencoder '{named}': {path} is a diffusion run, not an autoencoder run: name "
                          "the run directory of `diffsat train` on an autoencoder config")
    return config


def check_latent_shapes(cfg: Config, autoencoder: AutoencoderRunConfig, path: Path) -> None:
    """One-line :class:`ConfigError` unless ``cfg``'s U-Net and data fit the autoencoder run at ``path``."""
    ae, m, d = autoencoder.autoencoder, cfg.model, cfg.data
    size, latent = d.image_size // ae.factor, ae.latent_channels
    if d.channels != ae.in_channels or d.image_size % ae.factor:
        raise ConfigError(
            f"latent.autoencoder {path} encodes {ae.in_channels}-channel images whose sides are multiples of "
            f"{ae.factor}: data.channels is {d.channels} and data.image_size {d.image_size}")
    if (m.in_channels, m.out_channels, m.image_size) != (latent, latent, size):
        raise ConfigError(
            f"latent.autoencoder {path} turns {d.image_size} px images into ({latent}, {size}, {size}) latents: "
            f"set model.in_channels and model.out_channels to {latent} and model.image_size to {size} (they are "
            f"{m.in_channels}, {m.out_channels} and {m.image_size})")


def load_autoencoder(run_dir: str | Path, for_config: Config | None = None) -> LoadedAutoencoder:
    """The autoencoder run ``run_dir`` (its newest readable checkpoint's EMA weights); with ``for_config``,
    first checks that this latent diffusion config fits it (:func:`check_latent_shapes`). Every problem is
    one :class:`ConfigError` or :class:`CheckpointError` line naming the run."""
    path = Path(run_dir)
    cfg = _autoencoder_config(path, str(run_dir))
    if for_config is not None:
        check_latent_shapes(for_config, cfg, path)
    weights_path, tensors = _run_weights(path, "ema", fallback=True)
    with torch.device("meta"):
        network = build_autoencoder(cfg.autoencoder)
    load_state_into(network, tensors, str(weights_path))
    return LoadedAutoencoder(network.eval(), cfg, str(weights_path))


def is_taesd_source(path: str | Path) -> bool:
    """Whether ``latent.autoencoder`` names TAESD-family weights (``<name>_encoder`` / ``_decoder`` files)
    rather than a diffsat autoencoder run."""
    if (Path(path) / CONFIG_FILE).is_file():
        return False
    try:
        taesd_files(path)
    except CheckpointError:
        return False
    return True


def check_taesd_shapes(cfg: Config, autoencoder: TaesdAutoencoder, path: str) -> None:
    """One-line :class:`ConfigError` unless ``cfg``'s U-Net and data fit the TAESD-family ``autoencoder``."""
    m, d, latent = cfg.model, cfg.data, autoencoder.latent_channels
    if d.channels != 3 or d.image_size % autoencoder.factor:
        raise ConfigError(f"latent.autoencoder {path} ({autoencoder.variant}) encodes RGB images whose sides are "
                          f"multiples of 8: data.channels is {d.channels} and data.image_size {d.image_size}")
    size = d.image_size // autoencoder.factor
    if (m.in_channels, m.out_channels, m.image_size) != (latent, latent, size):
        raise ConfigError(
            f"latent.autoencoder {path} ({autoencoder.variant}) turns {d.image_size} px images into ({latent}, {size}, "
            f"{size}) latents: set model.in_channels and model.out_channels to {latent} and model.image_size to "
            f"{size} (they are {m.in_channels}, {m.out_channels} and {m.image_size})")


def load_taesd_for(cfg: Config) -> TaesdAutoencoder:
    """The TAESD-family autoencoder of ``cfg.latent`` (checked against the config)."""
    assert cfg.latent is not None
    autoencoder = load_taesd(cfg.latent.autoencoder, cfg.latent.variant)
    check_taesd_shapes(cfg, autoencoder, cfg.latent.autoencoder)
    return autoencoder


def run_encoder(cfg: Config) -> Encoder:
    """What ``cfg``'s network draws: :data:`~diffsat.models.encoders.PIXELS`, or for a latent diffusion config
    the latents of its ``latent.autoencoder``: a diffsat autoencoder run (checked against the config:
    :func:`load_autoencoder`) or TAESD-family weights with the config's latent statistics. The one place that
    reads ``cfg.latent``."""
    if cfg.latent is None:
        return PIXELS
    if not is_taesd_source(cfg.latent.autoencoder):
        return load_autoencoder(cfg.latent.autoencoder, cfg).encoder()
    autoencoder = load_taesd_for(cfg)
    mean, std = cfg.latent.mean, cfg.latent.std
    if mean is None or std is None:
        raise ConfigError(f"latent.autoencoder {cfg.latent.autoencoder}: latent.mean and latent.std are unset; "
                          "they are computed when a run trains: sample from the run directory, not its source config")
    if len(mean) != autoencoder.latent_channels or len(std) != autoencoder.latent_channels:
        raise ConfigError(f"latent.mean / latent.std: {len(mean)} / {len(std)} values for the "
                          f"{autoencoder.latent_channels} latent channels of {cfg.latent.autoencoder}")
    return TaesdLatents(autoencoder, torch.tensor(mean), torch.tensor(std))


def load_model(checkpoint: str | Path, config: Config | str | Path | None = None, *, ema: bool = True) -> LoadedModel:
    """Load a diffsat run directory, a DDPM-CD/SR3 ``.pth``, or a bare ``.safetensors`` as our ``SR3UNet``.

    ``checkpoint``: a run directory (its latest checkpoint's EMA weights, or the trained weights when
    ``ema=False`` or when it has no EMA file; an unreadable newest checkpoint is a warning and the one before
    it is read) or a weights file, which needs ``config`` (a :class:`Config`,
    our JSON, a DDPM-CD JSON or a run directory). The schedule comes from the file's buffers when present
    (a mismatch with the config is warned about), else from the config.
    """
    path = Path(checkpoint)
    if path.is_dir():
        cfg = _resolve_config(config if config is not None else path, path)
        weights_path, tensors = _run_weights(path, "ema" if ema else "model", fallback=True)
        schedule_file = path / SCHEDULE_FILE
        buffers = read_checkpoint(schedule_file) if schedule_file.is_file() else {}
        weights, _ = to_our_keys(tensors)
        which = "ema" if weights_path.name == EMA_FILE else "model"
        source = str(weights_path)
    else:
        path = _existing_file(path)
        cfg = _resolve_config(config, path)
        weights, buffers = to_our_keys(read_checkpoint(path))
        which = source = str(path)
    return LoadedModel(_network(cfg, weights, source), cfg, _schedule(cfg, buffers, source), which, run_encoder(cfg))


def random_model(config: Config | str | Path, seed: int = 0) -> LoadedModel:
    """The network ``config`` describes (a :class:`Config`, our JSON, a DDPM-CD JSON or a run directory) with
    freshly initialised weights from ``seed``, as a :class:`LoadedModel` whose ``weights`` is
    ``"random (seed N)"``: the same architecture and schedule as a trained model, for shapes, speed and
    pipelines when the trained weights are not at hand. The caller's random state is left untouched."""
    cfg = config if isinstance(config, Config) else load_run_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_unet(cfg.model).eval()
    return LoadedModel(network, cfg, NoiseSchedule.from_config(cfg.diffusion), f"random (seed {seed})",
                       run_encoder(cfg))
