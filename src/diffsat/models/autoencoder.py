"""The autoencoder of latent diffusion and its patch discriminator, built from the SR3 blocks.

:class:`Autoencoder` maps images ``(B, C, S, S)`` in [-1, 1] to a diagonal Gaussian over latents
``(B, L, S/f, S/f)`` (mean and log-variance) and latents back to images; ``f = 2 ** (len(channel_mults) - 1)``.
It carries the per-channel mean and standard deviation of its training latents as buffers (``latent_mean``,
``latent_std``, saved with the weights), so :meth:`Autoencoder.normalise` gives the diffusion model latents of
about zero mean and unit variance, as latent diffusion's scale factor does (Rombach et al. 2022, sec. 4.3.2).

:class:`PatchDiscriminator` is pix2pix's PatchGAN (Isola et al. 2017) with GroupNorm in place of BatchNorm
(independent of the batch size and of data-parallel ranks): one real/fake logit per overlapping patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import AutoencoderLossConfig, AutoencoderModelConfig
from .layers import Block, Downsample, SelfAttention, Upsample
from .unet import ModelShapeError

LOGVAR_RANGE = (-30.0, 20.0)
"""The encoder's log-variance is clamped here, as in latent diffusion's DiagonalGaussianDistribution."""


class ResidualBlock(nn.Module):
    """SR3's ResnetBlock without the noise level: ``block2(block1(x)) + res_conv(x)``."""

    def __init__(self, dim: int, dim_out: int, groups: int) -> None:
        super().__init__()
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)) + self.res_conv(x)


def _middle(dim: int, groups: int, attention: bool) -> nn.Sequential:
    attn = SelfAttention(dim, groups) if attention else nn.Identity()
    return nn.Sequential(ResidualBlock(dim, dim, groups), attn, ResidualBlock(dim, dim, groups))


def _check_groups(cfg: AutoencoderModelConfig) -> None:
    for mult in cfg.channel_mults:
        if (cfg.base_channels * mult) % cfg.norm_groups:
            raise ModelShapeError(
                f"autoencoder.norm_groups {cfg.norm_groups} does not divide a layer's {cfg.base_channels * mult} "
                "channels: choose norm_groups dividing base_channels * every channel_mult")


class Encoder(nn.Module):
    """``(B, C, S, S)`` -> ``(B, 2 * latent_channels, S/f, S/f)`` (mean and log-variance, concatenated)."""

    def __init__(self, cfg: AutoencoderModelConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.init_conv = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        dim = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.res_blocks):
                layers.append(ResidualBlock(dim, width, cfg.norm_groups))
                dim = width
            if level < len(widths) - 1:
                layers.append(Downsample(dim))
        self.downs = nn.Sequential(*layers)
        self.mid = _middle(dim, cfg.norm_groups, cfg.attention)
        self.out = nn.Sequential(nn.GroupNorm(cfg.norm_groups, dim), nn.SiLU(),
                                 nn.Conv2d(dim, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.downs(self.init_conv(x))))


class Decoder(nn.Module):
    """``(B, latent_channels, s, s)`` -> ``(B, C, s * f, s * f)``, the encoder mirrored with Upsample."""

    def __init__(self, cfg: AutoencoderModelConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        dim = widths[-1]
        self.init_conv = nn.Conv2d(cfg.latent_channels, dim, 3, padding=1)
        self.mid = _middle(dim, cfg.norm_groups, cfg.attention)
        layers: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.res_blocks):
                layers.append(ResidualBlock(dim, widths[level], cfg.norm_groups))
                dim = widths[level]
            if level > 0:
                layers.append(Upsample(dim))
        self.ups = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.GroupNorm(cfg.norm_groups, dim), nn.SiLU(),
                                 nn.Conv2d(dim, cfg.in_channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.ups(self.mid(self.init_conv(z))))


def interior(x: torch.Tensor, margin: int) -> torch.Tensor:
    """``x`` ``(..., H, W)`` without ``margin`` pixels on each side: ``(..., H - 2 margin, W - 2 margin)``."""
    return x[..., margin : x.shape[-2] - margin, margin : x.shape[-1] - margin] if margin else x


class Autoencoder(nn.Module):
    """KL-regularised convolutional autoencoder (latent diffusion's "KL-f4/f8" autoencoders, SR3 blocks)."""

    def __init__(self, cfg: AutoencoderModelConfig) -> None:
        super().__init__()
        _check_groups(cfg)
        self.factor, self.latent_channels, self.in_channels = cfg.factor, cfg.latent_channels, cfg.in_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ModelShapeError(
                f"the autoencoder takes (B, {self.in_channels}, H, W) images with H and W multiples of "
                f"{self.factor}, got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` in [-1, 1] -> mean and log-variance, each ``(B, L, H/f, W/f)``."""
        self._check_input(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, L, h, w)`` (un-normalised) -> images ``(B, C, h*f, w*f)``, about [-1, 1] (not clamped)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None, margin: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct ``x``: returns ``(reconstruction (B, C, H - 2mf, W - 2mf), mean, logvar)`` (the latents
        ``(B, L, H/f, W/f)``). ``noise``: standard normal like the latents, for the posterior sample
        ``z = mean + exp(logvar / 2) * noise``; ``None`` decodes the mean. ``margin`` (m): latent pixels cut
        from each side of ``z`` before decoding, so the reconstruction is of the interior ``x[..., mf:-mf,
        mf:-mf]`` (:func:`interior`)."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise.to(mean)
        return self.decode(interior(z, margin)), mean, logvar

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, L, h, w)`` -> ``(z - latent_mean) / latent_std`` per channel (the diffusion model's space)."""
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalise`."""
        return z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)

    @torch.no_grad()
    def set_latent_stats(self, mean_latents: torch.Tensor) -> None:
        """Store the per-channel mean and standard deviation of ``mean_latents`` ``(N, L, h, w)``."""
        values = mean_latents.detach().float().transpose(0, 1).reshape(self.latent_channels, -1)
        self.latent_mean.copy_(values.mean(dim=1))
        self.latent_std.copy_(values.std(dim=1).clamp_min(1e-6))


def _norm_groups(channels: int) -> int:
    return math.gcd(32, channels)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``(B, C, S, S)`` images -> ``(B, 1, s, s)`` real/fake logits, one per overlapping patch.

    Conv 4x4 stride 2 + LeakyReLU(0.2), then ``layers - 1`` blocks of Conv 4x4 stride 2 + GroupNorm +
    LeakyReLU with doubling width (at most 8x ``channels``), then Conv 4x4 stride 1 to one channel."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        dim = channels
        for i in range(1, layers):
            width = channels * min(2**i, 8)
            seq += [nn.Conv2d(dim, width, 4, 2, 1), nn.GroupNorm(_norm_groups(width), width), nn.LeakyReLU(0.2)]
            dim = width
        seq.append(nn.Conv2d(dim, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_autoencoder(cfg: AutoencoderModelConfig) -> Autoencoder:
    return Autoencoder(cfg)


def build_discriminator(cfg: AutoencoderModelConfig, loss: AutoencoderLossConfig) -> PatchDiscriminator:
    return PatchDiscriminator(cfg.in_channels, loss.discriminator_channels, loss.discriminator_layers)
