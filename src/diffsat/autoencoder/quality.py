"""Reconstruction quality of an autoencoder beside a bicubic baseline holding as many values per image.

The baseline keeps ``values = L * (H/f) * (W/f)`` numbers per image like the latent does: each image is
resized (bicubic, antialiased) to the side ``s = round(sqrt(values / C))`` and back. Measures, for both:
PSNR and SSIM against the originals (:mod:`diffsat.evaluation.fidelity`), and the multi-scale SWD of the
reconstructions against the originals (:mod:`diffsat.evaluation.swd`; one value per pyramid level and
their mean, x1e3): a blurred set scores a high SWD at the fine levels even when its PSNR is good.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..evaluation.fidelity import SSIM_WINDOW, psnr, ssim
from ..evaluation.swd import MIN_RESOLUTION, sliced_wasserstein_distance
from ..models.autoencoder import Autoencoder, interior


def bicubic_side(channels: int, values: int) -> int:
    """The side ``s`` of a ``(channels, s, s)`` image holding about ``values`` numbers (at least 1)."""
    return max(1, round(math.sqrt(values / channels)))


def bicubic_round_trip(images: torch.Tensor, side: int) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` in [-1, 1] resized to ``side`` and back (bicubic, antialiased), clamped."""
    small = F.interpolate(images.float(), size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)


@torch.no_grad()
def reconstruct(autoencoder: Autoencoder, images: torch.Tensor, batch_size: int = 32, margin: int = 0) -> torch.Tensor:
    """The autoencoder's reconstructions (decoded posterior means) of ``images`` ``(N, C, H, W)``, of their
    interior without ``margin`` latent pixels a side (``(N, C, H - 2mf, W - 2mf)``): float32, clamped, on the CPU."""
    device = next(autoencoder.parameters()).device
    autoencoder.eval()
    out = [autoencoder(chunk.to(device), margin=margin)[0].float().clamp(-1, 1).cpu()
           for chunk in images.split(batch_size)]
    return torch.cat(out)


def _measures(reconstructions: torch.Tensor, images: torch.Tensor, seed: int, with_swd: bool) -> dict[str, float]:
    out = {"psnr": float(psnr(reconstructions, images).mean())}
    if min(images.shape[-2:]) >= SSIM_WINDOW:
        out["ssim"] = float(ssim(reconstructions, images).mean())
    if with_swd and min(images.shape[-2:]) >= MIN_RESOLUTION and len(images) >= 2:
        result = sliced_wasserstein_distance(reconstructions, images, nhoods_per_image=64, seed=seed)
        out["swd"] = result.mean
        out.update({f"swd_{size}px": value for size, value in zip(result.resolutions, result.per_level)})
    return out


def reconstruction_quality(autoencoder: Autoencoder, images: torch.Tensor, seed: int = 0,
                           with_swd: bool = True, margin: int = 0) -> dict:
    """``{"autoencoder": {...}, "bicubic": {...}, "values_per_image": V, "bicubic_side": s, "scored_px": S}``
    for ``images`` ``(N, C, H, W)`` in [-1, 1] (H, W multiples of the autoencoder's factor). With ``margin``
    (m latent pixels) only the interior ``S = H - 2mf`` pixels a side is scored: the autoencoder encodes the
    whole image and decodes the latent's interior (as a latent diffusion run decodes latents cut from
    larger ones), bicubic resizes the interior itself, and ``V`` counts the interior latent's values."""
    images = images.float().cpu()
    n, c, h, w = images.shape
    f = autoencoder.factor
    target = interior(images, margin * f)
    values = autoencoder.latent_channels * (h // f - 2 * margin) * (w // f - 2 * margin)
    side = bicubic_side(c, values)
    return {
        "autoencoder": _measures(reconstruct(autoencoder, images, margin=margin), target, seed, with_swd),
        "bicubic": _measures(bicubic_round_trip(target, side), target, seed, with_swd),
        "values_per_image": values,
        "bicubic_side": side,
        "scored_px": int(target.shape[-1]),
    }
