"""The autoencoder's training loss and the reconstruction measures it shares with evaluation.

All images are ``(B, C, H, W)`` float tensors in [-1, 1]. :class:`AutoencoderLoss` returns a dict with the
total ``loss`` and every active term unweighted, so the training log shows what each term does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AutoencoderLossConfig
from ..evaluation.fidelity import ssim
from ..precision import autocast

def fft_amplitude_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the orthonormal 2-D FFT amplitudes (a scalar): penalises lost high
    frequencies, which the pixel L1 alone lets the decoder blur."""
    with autocast(x.device, False):  # float32 inside, also within a bf16 region
        fx, fy = torch.fft.rfft2(x.float(), norm="ortho"), torch.fft.rfft2(y.float(), norm="ortho")
        return (fx.abs() - fy.abs()).abs().mean()


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over all latent values (a scalar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: ``(mean relu(1 - D(real)) + mean relu(1 + D(fake))) / 2``."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


@dataclass
class AutoencoderLoss:
    """``loss = rec + kl_weight * kl + ssim_weight * (1 - ssim) + fft_weight * fft + adversarial_weight * gan``
    (:class:`~diffsat.config.AutoencoderLossConfig`); the GAN term is the generator's hinge loss
    ``-mean D(reconstruction)``, only when a ``discriminator`` is given (from ``adversarial_start`` on)."""

    cfg: AutoencoderLossConfig

    def __call__(self, x: torch.Tensor, reconstruction: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                 discriminator: nn.Module | None = None) -> dict[str, torch.Tensor]:
        c = self.cfg
        diff = reconstruction.float() - x.float()
        terms = {"rec": diff.abs().mean() if c.reconstruction == "l1" else diff.pow(2).mean()}
        weights = {"rec": 1.0}
        if c.kl_weight:
            terms["kl"], weights["kl"] = kl_to_standard_normal(mean.float(), logvar.float()), c.kl_weight
        if c.ssim_weight:
            terms["ssim"], weights["ssim"] = 1.0 - ssim(reconstruction, x).mean(), c.ssim_weight
        if c.fft_weight:
            terms["fft"], weights["fft"] = fft_amplitude_l1(reconstruction, x), c.fft_weight
        if discriminator is not None and c.adversarial_weight:
            terms["gan"], weights["gan"] = -discriminator(reconstruction).float().mean(), c.adversarial_weight
        loss = sum(weights[k] * v for k, v in terms.items())
        return {"loss": loss, **terms}
