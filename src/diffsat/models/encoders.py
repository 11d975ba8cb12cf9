"""Pixels and latents behind one encoder interface: what a diffusion model's samples are and how they
become images.

- :data:`PIXELS` (:class:`PixelSpace`): the identity; the diffusion model draws images.
- :class:`AutoencoderLatents`: a frozen :class:`~diffsat.models.autoencoder.Autoencoder`; the diffusion model
  draws its normalised latents (per-channel unit variance), which :meth:`AutoencoderLatents.decode` turns
  into images.
- :class:`TaesdLatents`: a frozen pretrained TAESD-family autoencoder (:mod:`diffsat.models.taesd`), its
  latents normalised by per-channel statistics of the training tiles (:func:`latent_statistics`).

The diffusion task encodes its training data through the encoder and generation decodes through it, so no
other module asks whether a run is latent. Shapes: images ``(N, C, H, W)`` float32 in [-1, 1]; latents
``(N, L, H/f, W/f)`` float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import torch
import torch.nn.functional as F

from ..precision import Precision, autocast, resolve_precision
from .autoencoder import Autoencoder, interior
from .taesd import TaesdAutoencoder

DECODE_PAD = 2
"""Latent pixels of edge padding decoded around a sampled latent and cropped away, for a decoder trained on
the latents of whole crops (see :meth:`AutoencoderLatents.decode`; the measurement that chose it:
benchmarks/RESULTS.md). A decoder trained on interior latents (``loss.interior_margin``) needs none."""

DECODE_BATCH = 64
"""Latents decoded per decoder call."""


class Encoder(Protocol):
    """Maps images to what a diffusion model draws and back."""

    factor: int
    """Image side / latent side (1 for pixels)."""

    def to(self, device: torch.device) -> "Encoder": ...

    def encode(self, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Images ``(N, C, H, W)`` in [-1, 1] (on the encoder's device) -> latents ``(N, L, H/f, W/f)``."""

    def decode(self, latents: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Latents ``(N, L, h, w)`` -> images ``(N, C, h*f, w*f)`` float32 in [-1, 1] (clamped), on the CPU."""

    def decode_precision(self, precision: Precision, latent_shape: tuple[int, ...], batch: int,
                         device: torch.device, announce: Callable[[str], None] | None) -> bool:
        """``precision`` of decoding ``batch`` latents of ``latent_shape`` ``(L, h, w)``, as a yes/no for bf16."""


class PixelSpace:
    """The identity encoder: a pixel-space diffusion model draws the images themselves."""

    factor = 1

    def to(self, device: torch.device) -> "PixelSpace":
        return self

    def encode(self, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        return latents.float().clamp(-1, 1).cpu().contiguous()

    def decode_precision(self, precision: Precision, latent_shape: tuple[int, ...], batch: int,
                         device: torch.device, announce: Callable[[str], None] | None) -> bool:
        return False  # nothing to decode


PIXELS = PixelSpace()


class AutoencoderLatents:
    """The normalised latents of a frozen ``autoencoder``; ``decode_pad``: latent pixels of edge padding
    around each decoded latent (:meth:`decode`)."""

    def __init__(self, autoencoder: Autoencoder, decode_pad: int = DECODE_PAD) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.decode_pad = decode_pad
        self.factor = autoencoder.factor

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def to(self, device: torch.device) -> "AutoencoderLatents":
        self.autoencoder.to(device)
        return self

    def encode(self, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """The normalised mean latents of ``images`` (float32; the normalisation outside autocast)."""
        with torch.inference_mode(), autocast(images.device, bf16):
            mean, _ = self.autoencoder.encode(images.contiguous())
        return self.autoencoder.normalise(mean.float())

    def padded_shape(self, batch: int, latent_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The shape the decoder sees for ``batch`` latents of ``latent_shape`` ``(L, h, w)``."""
        channels, h, w = latent_shape
        return (batch, channels, h + 2 * self.decode_pad, w + 2 * self.decode_pad)

    def decode(self, latents: torch.Tensor, bf16: bool = False, batch_size: int = DECODE_BATCH) -> torch.Tensor:
        """Normalised latents -> images, ``batch_size`` at a time on the autoencoder's device.

        With ``decode_pad`` > 0 each latent is padded by that many latent pixels (replicating its edge) and the
        decoded border cropped away: the diffusion model learns crops of whole tiles' latents, whose edges
        carry no trace of an image border, so a decoder trained on whole crops' latents would draw a frame."""
        device = self.device
        pad, margin = self.decode_pad, self.decode_pad * self.factor
        out = []
        with torch.inference_mode():
            for chunk in latents.split(batch_size):
                z = self.autoencoder.denormalise(chunk.to(device, torch.float32).contiguous())
                z = F.pad(z, (pad,) * 4, mode="replicate") if pad else z
                with autocast(device, bf16):
                    images = self.autoencoder.decode(z).float()
                out.append(interior(images, margin).clamp(-1, 1).cpu())
        return torch.cat(out)

    def decode_precision(self, precision: Precision, latent_shape: tuple[int, ...], batch: int,
                         device: torch.device, announce: Callable[[str], None] | None) -> bool:
        shape = self.padded_shape(min(batch, DECODE_BATCH), latent_shape)
        say = None if announce is None else (lambda line: announce(f"decoding: {line}"))
        return resolve_precision(precision, self.autoencoder.decoder, shape, device, with_level=False, announce=say)


def latent_statistics(autoencoder: TaesdAutoencoder, batches: Iterable[torch.Tensor],
                      bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (float32 ``(L,)`` each) of the raw latents of the image
    ``batches`` (each ``(B, 3, H, W)`` in [-1, 1]; float64 sums over every latent pixel)."""
    device = next(autoencoder.parameters()).device
    total = sq = None
    count = 0
    with torch.inference_mode():
        for chunk in batches:
            with autocast(device, bf16):
                z = autoencoder.encode(chunk.to(device, torch.float32)).double()
            s, q = z.sum(dim=(0, 2, 3)), (z * z).sum(dim=(0, 2, 3))
            total, sq = (s, q) if total is None else (total + s, sq + q)
            count += z.numel() // z.shape[1]
    if total is None:
        raise ValueError("latent_statistics needs at least one batch of images")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float().cpu(), std.float().cpu()


class TaesdLatents:
    """The latents of a frozen TAESD-family ``autoencoder``, normalised as ``(z - mean) / std`` per channel
    (``mean``, ``std``: float32 ``(L,)``, from :func:`latent_statistics` of the training tiles)."""

    def __init__(self, autoencoder: TaesdAutoencoder, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.factor = autoencoder.factor
        self.mean, self.std = mean.float().reshape(1, -1, 1, 1), std.float().reshape(1, -1, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def to(self, device: torch.device) -> "TaesdLatents":
        self.autoencoder.to(device)
        return self

    def encode(self, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` in [-1, 1] -> normalised latents ``(N, L, H/8, W/8)`` float32."""
        with torch.inference_mode(), autocast(images.device, bf16):
            z = self.autoencoder.encode(images.contiguous())
        return (z.float() - self.mean.to(z.device)) / self.std.to(z.device)

    def decode(self, latents: torch.Tensor, bf16: bool = False, batch_size: int = DECODE_BATCH) -> torch.Tensor:
        """Normalised latents -> images float32 in [-1, 1] (clamped), on the CPU, ``batch_size`` at a time."""
        device, out = self.device, []
        mean, std = self.mean.to(device), self.std.to(device)
        with torch.inference_mode():
            for chunk in latents.split(batch_size):
                z = chunk.to(device, torch.float32) * std + mean
                with autocast(device, bf16):
                    images = self.autoencoder.decode(z).float()
                out.append(images.clamp(-1, 1).cpu())
        return torch.cat(out)

    def decode_precision(self, precision: Precision, latent_shape: tuple[int, ...], batch: int,
                         device: torch.device, announce: Callable[[str], None] | None) -> bool:
        shape = (min(batch, DECODE_BATCH), *latent_shape)
        say = None if announce is None else (lambda line: announce(f"decoding: {line}"))
        return resolve_precision(precision, self.autoencoder.decoder, shape, device, with_level=False, announce=say)


LatentEncoder = AutoencoderLatents | TaesdLatents
"""The encoders whose latents a latent run caches (:mod:`diffsat.training.batches`)."""
