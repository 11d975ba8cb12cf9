"""Fidelity of an output to its true image, as the super-resolution literature reports it: PSNR and SSIM on
RGB, and on the luma Y (ITU-R BT.601, MATLAB's ``rgb2ycbcr``) with a border of ``shave`` pixels cut off.

Images: ``(B, C, H, W)`` float in [-1, 1]; every function returns per-image values ``(B,)``. ``eight_bit``
rounds both images to the 256 levels they are saved with first (what scores of saved PNGs measure). SSIM is
Wang et al.'s (2004): an 11 x 11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, valid positions only
(``pytorch_msssim``), averaged over channels.
"""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _ssim

from ..precision import autocast

BT601 = torch.tensor([65.481, 128.553, 24.966]) / 255.0
"""Y = 16/255 + BT601 . (R, G, B) for R, G, B in [0, 1] (Y in [16/255, 235/255])."""
SSIM_WINDOW = 11
"""Gaussian window of SSIM (sigma 1.5), as in Wang et al. 2004; images need at least this many pixels a side."""


def to_unit(x: torch.Tensor, eight_bit: bool = False) -> torch.Tensor:
    """[-1, 1] -> [0, 1] float32 (rounded to multiples of 1/255 when ``eight_bit``)."""
    u = ((x.float() + 1) / 2).clamp(0, 1)
    return torch.round(u * 255) / 255 if eight_bit else u


def luma(u: torch.Tensor) -> torch.Tensor:
    """Y ``(B, 1, H, W)`` of RGB ``u`` ``(B, 3, H, W)`` in [0, 1] (BT.601, studio range)."""
    return 16.0 / 255.0 + torch.einsum("bchw,c->bhw", u, BT601.to(u.device, u.dtype))[:, None]


def shave(x: torch.Tensor, border: int) -> torch.Tensor:
    """``x`` ``(..., H, W)`` without ``border`` pixels on each side."""
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border else x


def psnr(a: torch.Tensor, b: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """PSNR in dB ``(B,)`` of images in [-1, 1] (peak 1 on the [0, 1] scale); identical images give ``max_db``."""
    mse = ((a.float() - b.float()) / 2).square().flatten(1).mean(1)
    return (-10 * torch.log10(mse.clamp_min(10 ** (-max_db / 10)))).clamp(max=max_db)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM ``(B,)`` of images in [-1, 1] (both sides at least 11 px; computed on [0, 1], data range 1),
    channels averaged; 1 for identical images. Differentiable (an autoencoder loss term). Always float32, also
    under bf16 autocast: its variances are differences of nearly equal means, which bf16 can make negative."""
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px a side, got {tuple(a.shape[-2:])}")
    with autocast(a.device, False):  # float32 inside, also within a bf16 region
        return _ssim((a.float() + 1) / 2, (b.float() + 1) / 2, data_range=1.0, size_average=False,
                     win_size=SSIM_WINDOW)


def fidelity(output: torch.Tensor, truth: torch.Tensor, border: int = 0, eight_bit: bool = True
             ) -> dict[str, torch.Tensor]:
    """``psnr``, ``ssim`` (all channels) and, for RGB, ``psnr_y`` and ``ssim_y`` (luma, ``border`` shaved),
    each ``(B,)``, of ``output`` against ``truth`` ``(B, C, H, W)`` in [-1, 1]."""
    a, b = to_unit(output, eight_bit) * 2 - 1, to_unit(truth, eight_bit) * 2 - 1
    scores = {"psnr": psnr(a, b), "ssim": ssim(a, b)}
    if a.shape[1] == 3:
        ya, yb = (shave(luma(to_unit(x)), border) * 2 - 1 for x in (a, b))
        scores |= {"psnr_y": psnr(ya, yb), "ssim_y": ssim(ya, yb)}
    return scores
