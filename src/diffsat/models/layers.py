"""Building blocks of the SR3-type U-Net.

Module and parameter names mirror DDPM-CD's ``sr3_modules/unet.py`` so that its checkpoints load by a key
map alone. The maths each block relies on (cited so tests can check it by hand):

- noise-level embedding: ``e_k = level * exp(-ln(1e4) * k / half)``, ``k = 0..half-1``, output
  ``[sin(e), cos(e)]`` (SR3, Saharia et al. 2021, after WaveGrad's continuous conditioning), then the
  noise-level MLP ``Linear(C, 4C) -> Swish -> Linear(4C, C)`` (``noise_level_mlp.{1,3}``);
- FeatureWiseAffine: ``h + Linear(embedding)`` broadcast over H, W (additive, no scale);
- Block: GroupNorm -> Swish (x * sigmoid(x)) -> Dropout (only if p > 0, else Identity) -> Conv 3x3;
- ResnetBlock: ``block2(block1(x) + affine(emb)) + res_conv(x)`` with a 1x1 ``res_conv`` when channels change;
- SelfAttention: one head, ``softmax(q^T k / sqrt(C)) v`` over all H*W positions, plus the input;
- Upsample: nearest-neighbour x2 then Conv 3x3; Downsample: Conv 3x3 with stride 2;
- U-Net skips: every ``init_conv``/``downs`` output is pushed on a stack; each ``ups`` res block takes
  ``cat((x, stack.pop()), dim=1)`` (current features first, then the skip).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionalEncoding(nn.Module):
    """Sinusoidal embedding of the continuous noise level sqrt(alpha_bar).

    Input ``(B,)`` levels in [0, 1]; output ``(B, dim)`` = ``[sin(level * f_k), cos(level * f_k)]`` with
    ``f_k = exp(-ln(1e4) * k / (dim // 2))``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = torch.arange(half, dtype=noise_level.dtype, device=noise_level.device) / half
        encoding = noise_level.unsqueeze(1) * torch.exp(-math.log(1e4) * step.unsqueeze(0))
        return torch.cat([torch.sin(encoding), torch.cos(encoding)], dim=-1)


class FeatureWiseAffine(nn.Module):
    """Adds a per-channel projection of the noise embedding: ``(B,C,H,W) + Linear(emb)[:, :, None, None]``."""

    def __init__(self, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(emb_channels, out_channels))

    def forward(self, x: torch.Tensor, noise_embed: torch.Tensor) -> torch.Tensor:
        return x + self.noise_func(noise_embed).view(x.shape[0], -1, 1, 1)


class Block(nn.Module):
    """GroupNorm -> Swish -> Dropout/Identity -> Conv3x3 (indices 0..3 as in SR3)."""

    def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout != 0 else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    """Two Blocks with additive noise-level injection between them and a residual path."""

    def __init__(self, dim: int, dim_out: int, emb_channels: int, dropout: float, norm_groups: int) -> None:
        super().__init__()
        self.noise_func = FeatureWiseAffine(emb_channels, dim_out)
        self.block1 = Block(dim, dim_out, groups=norm_groups)
        self.block2 = Block(dim_out, dim_out, groups=norm_groups, dropout=dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.noise_func(self.block1(x), emb)
        return self.block2(h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions, scaled by 1/sqrt(C), with a residual connection."""

    def __init__(self, channels: int, norm_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        # (B, 1, HW, C) layout for fused attention; default scale is 1/sqrt(C), as in SR3.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2).unsqueeze(1), k.transpose(1, 2).unsqueeze(1), v.transpose(1, 2).unsqueeze(1)
        )
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return self.out(out) + x


class ResnetBlockWithAttn(nn.Module):
    """A ResnetBlock optionally followed by SelfAttention (SR3's ``ResnetBlocWithAttn``)."""

    def __init__(
        self, dim: int, dim_out: int, *, emb_channels: int, norm_groups: int, dropout: float, with_attn: bool
    ) -> None:
        super().__init__()
        self.res_block = ResnetBlock(dim, dim_out, emb_channels, dropout, norm_groups)
        self.attn = SelfAttention(dim_out, norm_groups) if with_attn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res_block(x, emb)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    """Conv 3x3, stride 2: (B,C,H,W) -> (B,C,H/2,W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then Conv 3x3: (B,C,H,W) -> (B,C,2H,2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
