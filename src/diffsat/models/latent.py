"""The network of a latent diffusion run: its U-Net, with the frozen autoencoder that turns latents into images.

Its ``forward`` is the U-Net's (samplers and guidance see an ordinary denoiser on ``(B, L, h, w)`` latents in
the normalised latent space); :meth:`LatentDiffusionNet.decode` maps sampled latents to images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import Autoencoder, interior

DECODE_PAD = 2
"""Latent pixels of edge padding decoded around a sampled latent and cropped away, for a decoder trained on
the latents of whole crops (see :meth:`LatentDiffusionNet.decode`; the measurement that chose it:
benchmarks/RESULTS.md). A decoder trained on interior latents (``loss.interior_margin``) needs none."""

DECODE_BATCH = 64
"""Latents decoded per decoder call."""


class LatentDiffusionNet(nn.Module):
    """``unet`` (an :class:`~diffsat.models.unet.SR3UNet` on normalised latents) and its ``autoencoder``;
    ``decode_pad``: latent pixels of edge padding around each decoded latent (:meth:`decode`)."""

    def __init__(self, unet: nn.Module, autoencoder: Autoencoder, decode_pad: int = DECODE_PAD) -> None:
        super().__init__()
        self.unet = unet
        self.autoencoder = autoencoder.requires_grad_(False)
        self.decode_pad = decode_pad

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, L, h, w)`` noisy normalised latents; as :meth:`SR3UNet.forward`."""
        return self.unet(x, noise_level) if labels is None else self.unet(x, noise_level, labels)

    def padded_shape(self, batch: int, latent_shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
        """The shape the decoder sees for ``batch`` latents of ``latent_shape`` ``(L, h, w)``."""
        channels, h, w = latent_shape
        return (batch, channels, h + 2 * self.decode_pad, w + 2 * self.decode_pad)

    def decode(self, latents: torch.Tensor, batch_size: int = DECODE_BATCH, bf16: bool = False) -> torch.Tensor:
        """Normalised latents ``(N, L, h, w)`` -> images ``(N, C, h*f, w*f)`` float32 in [-1, 1] (clamped),
        decoded ``batch_size`` at a time on the autoencoder's device (under bf16 autocast when ``bf16``);
        returned on the CPU.

        With ``decode_pad`` > 0 each latent is padded by that many latent pixels (replicating its edge) and the
        decoded border cropped away: the diffusion model learns crops of whole tiles' latents, whose edges
        carry no trace of an image border, so a decoder trained on whole crops' latents would draw a frame."""
        device = next(self.autoencoder.parameters()).device
        pad, margin = self.decode_pad, self.decode_pad * self.autoencoder.factor
        out = []
        with torch.inference_mode():
            for chunk in latents.split(batch_size):
                z = self.autoencoder.denormalise(chunk.to(device, torch.float32).contiguous())
                z = F.pad(z, (pad,) * 4, mode="replicate") if pad else z
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    images = self.autoencoder.decode(z).float()
                out.append(interior(images, margin).clamp(-1, 1).cpu())
        return torch.cat(out)
