"""The network of a latent diffusion run: its U-Net, with the frozen autoencoder that turns latents into images.

Its ``forward`` is the U-Net's (samplers and guidance see an ordinary denoiser on ``(B, L, h, w)`` latents in
the normalised latent space); :meth:`LatentDiffusionNet.decode` maps sampled latents to images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import Autoencoder

DECODE_PAD = 2
"""Latent pixels of edge padding decoded around a sampled latent and cropped away (see
:meth:`LatentDiffusionNet.decode`; the measurement that chose it: benchmarks/RESULTS.md)."""


class LatentDiffusionNet(nn.Module):
    """``unet`` (an :class:`~diffsat.models.unet.SR3UNet` on normalised latents) and its ``autoencoder``."""

    def __init__(self, unet: nn.Module, autoencoder: Autoencoder) -> None:
        super().__init__()
        self.unet = unet
        self.autoencoder = autoencoder.requires_grad_(False)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, L, h, w)`` noisy normalised latents; as :meth:`SR3UNet.forward`."""
        return self.unet(x, noise_level) if labels is None else self.unet(x, noise_level, labels)

    def decode(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Normalised latents ``(N, L, h, w)`` -> images ``(N, C, h*f, w*f)`` float32 in [-1, 1] (clamped),
        decoded ``batch_size`` at a time, in float32, on the autoencoder's device; returned on the CPU.

        Each latent is padded by :data:`DECODE_PAD` latent pixels (replicating its edge) and the decoded
        border cropped away: the diffusion model learns crops of whole tiles' latents, whose edges carry no
        trace of an image border, so the decoder's own border handling would otherwise draw a frame."""
        device = next(self.autoencoder.parameters()).device
        margin = DECODE_PAD * self.autoencoder.factor
        out = []
        with torch.inference_mode():
            for chunk in latents.split(batch_size):
                z = self.autoencoder.denormalise(chunk.to(device, torch.float32).contiguous())
                images = self.autoencoder.decode(F.pad(z, (DECODE_PAD,) * 4, mode="replicate"))
                images = images[..., margin : images.shape[-2] - margin, margin : images.shape[-1] - margin]
                out.append(images.clamp(-1, 1).float().cpu())
        return torch.cat(out)
