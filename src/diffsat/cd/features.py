"""Diffusion features of a frozen SR3 U-Net: chosen encoder / decoder blocks at chosen noise levels.

An image ``x`` in [-1, 1] is noised to ``x_t = level * x + sqrt(1 - level^2) * noise`` for each noise level
(sqrt(alpha_bar)), passed through the backbone, and the outputs of the chosen blocks are kept (forward
hooks; the backbone is not changed). Scales use DDPM-CD's ``feat_scales`` indexing (see
:class:`~diffsat.cd.config.FeatureConfig`): on the 5-level 391M generator (2 residual blocks per level,
3 per decoder level) decoder scales ``[2, 5, 8, 11, 14]`` are the first block after each upsampling, at
256, 128, 64, 32 and 16 px of a 256 px input with 128, 256, 512, 1024 and 1024 channels.

The noise is a function of the pixel position and ``features.seed`` (:func:`position_noise`), and the same
noise serves A and B, so features, and so predictions, are deterministic (DDPM-CD redraws it on every pass)
and a window of a scene sees the noise the whole scene would.
Features of one pair are cached as one safetensors file keyed by the SHA-256 of the backbone's weights, the
feature settings, the two images and the noise, so head training costs head compute only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..diffusion.schedules import NoiseSchedule
from ..errors import DiffsatError
from ..fileio import atomic_write, sha256_file
from ..models.unet import ResnetBlockWithAttn, SR3UNet
from ..models.encoders import PixelSpace
from ..precision import autocast, resolve_precision
from ..rundir import EMA_FILE, MODEL_FILE, load_model, run_file
from .config import FeatureConfig


class FeatureError(DiffsatError):
    """Feature settings the backbone cannot honour (a scale or timestep out of range)."""


@dataclass(frozen=True)
class Scale:
    """One feature map: ``name`` (``d2`` decoder / ``e5`` encoder scale), its ``channels`` per noise level and
    its ``factor`` (image side / feature side)."""

    name: str
    channels: int
    factor: int


@dataclass
class Backbone:
    """A frozen U-Net, its noise schedule and an ``identity`` (SHA-256 of its weights file)."""

    net: SR3UNet
    schedule: NoiseSchedule
    identity: str
    source: str


def load_backbone(cfg: FeatureConfig) -> Backbone:
    """The backbone of ``cfg`` (a diffsat run or a DDPM-CD checkpoint + config) through ``diffsat.load_model``."""
    if cfg.backbone is None:
        raise FeatureError("features.backbone is not set: give a diffsat run directory or a DDPM-CD checkpoint")
    path = Path(cfg.backbone).expanduser()
    loaded = load_model(path, cfg.backbone_config, ema=cfg.ema)
    if not isinstance(loaded.encoder, PixelSpace):
        raise FeatureError(f"features.backbone {path} is a latent diffusion run: its U-Net sees autoencoder latents, "
                           "not the images, so its features do not line up with the pixels; give a pixel-space run")
    weights = run_file(path, {"ema": EMA_FILE, "model": MODEL_FILE}[loaded.weights]) if path.is_dir() else path
    net = loaded.network
    for p in net.parameters():
        p.requires_grad_(False)
    return Backbone(net, loaded.schedule, sha256_file(weights), str(path))


def resolve_levels(cfg: FeatureConfig, schedule: NoiseSchedule) -> tuple[float, ...]:
    """sqrt(alpha_bar) of each noise level: ``cfg.noise_levels``, or for timesteps ``t`` the middle of the
    interval DDPM-CD draws from, ``(sqrt(alpha_bar_{t-1}) + sqrt(alpha_bar_t)) / 2``."""
    kind, values = cfg.levels_or_timesteps
    if kind == "levels":
        return tuple(values)
    table = schedule.levels_with_zero
    out = []
    for t in (int(v) for v in values):
        if t > schedule.timesteps:
            raise FeatureError(f"features.timesteps {t} exceeds the backbone's {schedule.timesteps}-step schedule")
        out.append(float((table[t - 1] + table[t]) / 2))
    return tuple(out)


def _encoder_plan(net: SR3UNet) -> list[tuple[nn.Module, int, int]]:
    """``(module, channels, factor)`` of DDPM-CD's encoder feature list: ``init_conv``, then every entry of
    ``downs`` (residual blocks and downsamplings) in order."""
    cfg = net.config
    plan = [(net.init_conv, cfg.base_channels, 1)]
    level = 0
    for module in net.downs:
        channels = cfg.base_channels * cfg.channel_mults[level]
        if isinstance(module, ResnetBlockWithAttn):
            plan.append((module, channels, 2**level))
        else:
            level += 1
            plan.append((module, channels, 2**level))
    return plan


def decoder_module(net: SR3UNet, scale: int) -> tuple[nn.Module, int, int]:
    """``(module, channels, factor)`` of decoder scale ``scale`` (DDPM-CD indexing, finest level first)."""
    cfg = net.config
    per_level, levels = cfg.res_blocks + 1, len(cfg.channel_mults)
    level, j = scale // per_level, cfg.res_blocks - scale % per_level
    if not 0 <= level < levels:
        raise FeatureError(f"features.decoder_scales {scale}: this backbone has decoder scales 0..{levels * per_level - 1} "
                           f"({levels} levels x {per_level} blocks; first block after each upsampling: "
                           f"{[lv * per_level + cfg.res_blocks for lv in range(levels)]})")
    blocks = [m for m in net.ups if isinstance(m, ResnetBlockWithAttn)]
    module = blocks[(levels - 1 - level) * per_level + j]
    return module, cfg.base_channels * cfg.channel_mults[level], 2**level


def first_decoder_scales(net: SR3UNet) -> list[int]:
    """DDPM-CD scales of the first decoder block after each upsampling, finest first (391M: 2, 5, 8, 11, 14)."""
    per_level = net.config.res_blocks + 1
    return [lv * per_level + net.config.res_blocks for lv in range(len(net.config.channel_mults))]


class FeatureExtractor:
    """``extractor(before, after, noise) -> {"A.<scale>": (levels * C, H/f, W/f), "B.<scale>": ...}``.

    ``before`` / ``after``: ``(C, H, W)`` float32 in [-1, 1]; ``noise``: ``(C, H, W)``; H and W multiples of
    :attr:`align`. ``scales`` are ordered coarse to fine (the head's order).
    """

    def __init__(self, backbone: Backbone, cfg: FeatureConfig, window: int = 256) -> None:
        self.backbone, self.cfg = backbone, cfg
        self.levels = resolve_levels(cfg, backbone.schedule)
        net = backbone.net
        encoder = _encoder_plan(net)
        chosen: list[tuple[str, nn.Module, int, int]] = []
        for s in cfg.encoder_scales:
            if not 0 <= s < len(encoder):
                raise FeatureError(f"features.encoder_scales {s}: this backbone has encoder scales 0..{len(encoder) - 1}")
            chosen.append((f"e{s}", *encoder[s]))
        chosen += [(f"d{s}", *decoder_module(net, s)) for s in cfg.decoder_scales]
        chosen.sort(key=lambda c: -c[3])  # coarse to fine, stable
        self.modules = {name: module for name, module, _, _ in chosen}
        self.scales = [Scale(name, channels, factor) for name, _, channels, factor in chosen]
        self.align = 2 ** (len(net.config.channel_mults) - 1)
        side = max(self.align, window - window % self.align)  # features.precision auto: timed at one window
        self.bf16 = resolve_precision(cfg.precision, net, (2, net.config.in_channels, side, side), next(net.parameters()).device)

    def describe(self) -> dict:
        return {"backbone": self.backbone.identity, "levels": list(self.levels),
                "scales": [s.name for s in self.scales], "seed": self.cfg.seed, "bf16": self.bf16}

    @torch.inference_mode()
    def __call__(self, before: torch.Tensor, after: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.backbone.net
        device = next(net.parameters()).device
        x0 = torch.stack([before, after]).to(device)
        noise = noise.to(device).expand_as(x0)
        per_level: list[dict[str, torch.Tensor]] = []
        for level in self.levels:
            captured: dict[str, torch.Tensor] = {}
            hooks = [m.register_forward_hook(lambda _m, _i, out, n=name: captured.__setitem__(n, out))
                     for name, m in self.modules.items()]
            try:
                x_t = level * x0 + (1.0 - level**2) ** 0.5 * noise
                with autocast(device, self.bf16):
                    net(x_t, torch.full((2,), level, device=device))
            finally:
                for h in hooks:
                    h.remove()
            per_level.append(captured)
        out = {}
        for scale in self.scales:
            both = torch.cat([c[scale.name] for c in per_level], dim=1).float().cpu()
            out[f"A.{scale.name}"], out[f"B.{scale.name}"] = both[0], both[1]
        return out


NOISE_BLOCK = 64
"""Side of the blocks the feature noise is drawn in, each from its own seed (see :func:`position_noise`)."""


def position_noise(channels: int, y: int, x: int, height: int, width: int, seed: int) -> torch.Tensor:
    """The feature noise of the ``height x width`` window at pixel ``(y, x)`` of an image: ``(channels, h, w)``
    standard normal. It depends on the pixels' positions only (blocks of :data:`NOISE_BLOCK` pixels, each
    drawn from a generator seeded by ``seed`` and the block's row and column), so a window of a scene gets
    exactly the noise the whole scene would, and memory stays that of the window."""
    b = NOISE_BLOCK
    rows, cols = range(y // b, (y + height - 1) // b + 1), range(x // b, (x + width - 1) // b + 1)
    out = torch.empty((channels, len(rows) * b, len(cols) * b))
    for i, by in enumerate(rows):
        for j, bx in enumerate(cols):
            key = hashlib.blake2b(f"{seed},{by},{bx}".encode(), digest_size=8).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(key, "little") & (2**63 - 1))
            out[:, i * b : (i + 1) * b, j * b : (j + 1) * b] = torch.randn((channels, b, b), generator=gen)
    top, left = y - rows[0] * b, x - cols[0] * b
    return out[:, top : top + height, left : left + width].contiguous()


class FeatureCache:
    """Features of pairs, computed once and kept as ``<folder>/<sha256>.safetensors`` (``cfg.cache_dtype``)."""

    def __init__(self, extractor: FeatureExtractor, folder: Path | None) -> None:
        self.extractor, self.folder = extractor, folder
        self.dtype = getattr(torch, extractor.cfg.cache_dtype)
        self._settings = json.dumps(extractor.describe(), sort_keys=True).encode()

    def key(self, before: torch.Tensor, after: torch.Tensor, noise: torch.Tensor) -> str:
        digest = hashlib.sha256(self._settings)
        for t in (before, after, noise):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:32]

    def features(self, before: torch.Tensor, after: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """As :class:`FeatureExtractor`, read from the cache when there (float32 on return)."""
        path = self.folder / f"{self.key(before, after, noise)}.safetensors" if self.folder else None
        if path is not None and path.is_file():
            return {k: v.float() for k, v in load_file(str(path)).items()}
        feats = self.extractor(before, after, noise)
        if path is not None:
            stored = {k: v.to(self.dtype).contiguous() for k, v in feats.items()}
            atomic_write(path, lambda p: save_file(stored, p))
            feats = {k: v.float() for k, v in stored.items()}  # the same rounding whether cached or not
        return feats
