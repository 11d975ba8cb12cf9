"""The TAESD family of tiny autoencoders (Ollin Boer Bohan, MIT licence): a frozen, pretrained first stage.

Written from the family's published shape, so that its released state dicts (``taesd``, ``taesdxl``,
``taesd3``, ``taef1``, ``taef2``) load as they are:

- a block is ``relu(c(x') + x')`` with ``c`` three 3x3 convolutions (64 channels) separated by ReLUs, where
  ``x' = x + m(x)`` in the blocks of the lowest resolution of ``taef2`` (``m``: a 1x1 convolution to 256
  channels, GroupNorm of 4 groups, ReLU, a 1x1 convolution back) and ``x' = x`` elsewhere;
- the encoder: a 3x3 convolution to 64 channels, a block, then three times a stride-2 3x3 convolution
  (no bias) and three blocks, and a 3x3 convolution to the latent channels: a 256 px image becomes a 32 x 32
  latent (f = 8);
- the decoder: ``3 tanh(z / 3)``, a 3x3 convolution to 64 channels, ReLU, three blocks, then three times a
  nearest 2x upsampling, a 3x3 convolution (no bias) and three blocks (one block the last time), and a 3x3
  convolution to 3 channels.

The networks see images in [0, 1]; :class:`TaesdAutoencoder` takes and gives [-1, 1] as the rest of diffsat.
Latent channels by variant: 4 (``taesd``, ``taesdxl``), 16 (``taesd3``, ``taef1``), 32 (``taef2``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

WIDTH = 64
FACTOR = 8
VARIANTS: dict[str, tuple[int, bool]] = {
    "taesd": (4, False), "taesdxl": (4, False), "taesd3": (16, False), "taef1": (16, False), "taef2": (32, True),
}
"""Variant -> (latent channels, whether its lowest-resolution blocks carry the GroupNorm mixer)."""
PUBLISHED_AT = "https://github.com/madebyollin/taesd"


def conv3(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class TaeBlock(nn.Module):
    """``(B, 64, h, w) -> (B, 64, h, w)``; ``mixer``: the 1x1 / GroupNorm branch added to the input first."""

    def __init__(self, mixer: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv3(WIDTH, WIDTH), nn.ReLU(), conv3(WIDTH, WIDTH), nn.ReLU(), conv3(WIDTH, WIDTH))
        self.pool = nn.Sequential(nn.Conv2d(WIDTH, 4 * WIDTH, 1, bias=False), nn.GroupNorm(4, 4 * WIDTH), nn.ReLU(),
                                  nn.Conv2d(4 * WIDTH, WIDTH, 1, bias=False)) if mixer else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class SoftClamp(nn.Module):
    """``3 tanh(z / 3)``: latents softly bounded to (-3, 3)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 3 * torch.tanh(z / 3)


def taesd_encoder(latent_channels: int, mixer: bool = False) -> nn.Sequential:
    """Images ``(B, 3, H, W)`` in [0, 1] -> latents ``(B, latent_channels, H/8, W/8)``."""
    layers: list[nn.Module] = [conv3(3, WIDTH), TaeBlock()]
    for level in range(3):
        layers += [conv3(WIDTH, WIDTH, stride=2, bias=False)] + [TaeBlock(mixer and level == 2) for _ in range(3)]
    return nn.Sequential(*layers, conv3(WIDTH, latent_channels))


def taesd_decoder(latent_channels: int, mixer: bool = False) -> nn.Sequential:
    """Latents ``(B, latent_channels, h, w)`` -> images ``(B, 3, 8h, 8w)`` in about [0, 1]."""
    layers: list[nn.Module] = [SoftClamp(), conv3(latent_channels, WIDTH), nn.ReLU()]
    layers += [TaeBlock(mixer) for _ in range(3)]
    for blocks in (3, 3, 1):
        layers += [nn.Upsample(scale_factor=2), conv3(WIDTH, WIDTH, bias=False)] + [TaeBlock() for _ in range(blocks)]
    return nn.Sequential(*layers, conv3(WIDTH, 3))


class TaesdAutoencoder(nn.Module):
    """A TAESD-family encoder and decoder of ``latent_channels`` (``mixer``: see :data:`VARIANTS`)."""

    factor = FACTOR

    def __init__(self, latent_channels: int, mixer: bool = False, variant: str = "") -> None:
        super().__init__()
        self.latent_channels, self.mixer, self.variant = latent_channels, mixer, variant
        self.encoder = taesd_encoder(latent_channels, mixer)
        self.decoder = taesd_decoder(latent_channels, mixer)

    @classmethod
    def of_variant(cls, variant: str) -> "TaesdAutoencoder":
        channels, mixer = VARIANTS[variant]
        return cls(channels, mixer, variant)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] (H, W multiples of 8) -> raw latents ``(B, L, H/8, W/8)``."""
        return self.encoder(images * 0.5 + 0.5)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents ``(B, L, h, w)`` -> images ``(B, 3, 8h, 8w)`` in about [-1, 1] (not clamped)."""
        return self.decoder(latents) * 2 - 1


def variant_of(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]) -> tuple[int, bool]:
    """``(latent channels, mixer)`` that the two state dicts' shapes and keys describe (the encoder's last
    convolution and the decoder's first give the channels; ``pool`` keys the mixer)."""
    out_key = f"{len(taesd_encoder(1)) - 1}.weight"
    enc_channels = int(encoder[out_key].shape[0]) if out_key in encoder else -1
    dec_channels = int(decoder["1.weight"].shape[1]) if "1.weight" in decoder else -1
    mixer = any(".pool." in k for k in decoder) or any(".pool." in k for k in encoder)
    return (enc_channels if enc_channels == dec_channels else -1), mixer
