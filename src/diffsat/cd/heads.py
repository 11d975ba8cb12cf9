"""The change heads trained on pairs: DDPM-CD's head on diffusion features, and FC-Siam-diff on images.

:class:`DDPMCDHead` follows DDPM-CD's ``cd_head_v2``: per feature scale a block shared by A and B (a 1x1
convolution over the concatenated noise levels, then a 3x3 convolution), the absolute difference of its two
outputs, coarse-to-fine fusion (attention block = 3x3 convolution + channel/spatial squeeze-excitation,
bilinear upsampling to the next scale, addition) and a two-layer classifier. Unlike DDPM-CD, whose classifier
reads the upsampled sum of the coarser scales and drops the finest difference it computes, the classifier
here reads the finest scale's fused difference.

:class:`FCSiamDiff` is the fully convolutional siamese U-Net of Daudt, Le Saux & Boulch (ICIP 2018): a shared
4-stage encoder (16, 32, 64, 128 channels; conv-BN-ReLU-dropout units, max-pooling), a decoder of transposed
convolutions fed the absolute differences of the two encoders' skips; 1.35M parameters for RGB input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ChannelSpatialSE(nn.Module):
    """Concurrent channel and spatial squeeze-excitation (Roy et al. 2018): ``max(cSE(x), sSE(x))``."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        self.spatial = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))[:, :, None, None]
        return torch.maximum(x * weights, x * torch.sigmoid(self.spatial(x)))


def scale_block(channels: int, levels: int) -> nn.Sequential:
    """DDPM-CD's ``Block``: ``(B, channels * levels, h, w) -> (B, channels, h, w)``."""
    layers: list[nn.Module] = [nn.Conv2d(channels * levels, channels, 1), nn.ReLU()] if levels > 1 else []
    return nn.Sequential(*layers, nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())


def fusion_block(channels: int, out_channels: int) -> nn.Sequential:
    """DDPM-CD's ``AttentionBlock``: ``(B, channels, h, w) -> (B, out_channels, h, w)``."""
    return nn.Sequential(nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(), ChannelSpatialSE(out_channels))


class DDPMCDHead(nn.Module):
    """``forward(feats_a, feats_b) -> logits (B, 2, h, w)`` at the finest scale's resolution.

    ``feats_a[i]`` / ``feats_b[i]``: ``(B, channels[i] * levels, h_i, w_i)`` float32, scales ordered coarse to
    fine (``h_i`` non-decreasing), each the concatenation of one backbone block's output at every noise level.
    """

    def __init__(self, channels: Sequence[int], levels: int, classifier_channels: int = 64) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(scale_block(c, levels) for c in channels)
        self.fusions = nn.ModuleList(fusion_block(c, n) for c, n in zip(channels[:-1], channels[1:]))
        self.classifier = nn.Sequential(nn.Conv2d(channels[-1], classifier_channels, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(classifier_channels, 2, 3, padding=1))

    def forward(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> torch.Tensor:
        carried = None
        for i, block in enumerate(self.blocks):
            diff = torch.abs(block(feats_a[i]) - block(feats_b[i]))
            if carried is not None:
                diff = diff + carried
            if i < len(self.fusions):
                carried = F.interpolate(self.fusions[i](diff), size=feats_a[i + 1].shape[-2:], mode="bilinear",
                                        align_corners=False)
        return self.classifier(diff)


def _unit(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout2d(0.2))


def _up(channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1)


class FCSiamDiff(nn.Module):
    """``forward(before, after) -> logits (B, 2, H, W)``; inputs ``(B, C, H, W)`` in [-1, 1], H and W
    multiples of 16 (four poolings)."""

    WIDTHS = (16, 32, 64, 128)
    DEPTHS = (2, 2, 3, 3)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        cin = in_channels
        for width, depth in zip(self.WIDTHS, self.DEPTHS):
            self.encoder.append(nn.Sequential(*(_unit(cin if i == 0 else width, width) for i in range(depth))))
            cin = width
        self.ups = nn.ModuleList(_up(w) for w in reversed(self.WIDTHS))
        decoder = []
        for level in reversed(range(4)):
            width, depth = self.WIDTHS[level], self.DEPTHS[level]
            out = self.WIDTHS[level - 1] if level else 16
            units = [_unit(2 * width, width)] + [_unit(width, width) for _ in range(depth - 2)]
            units.append(_unit(width, out) if level else nn.Conv2d(width, 2, 3, padding=1))
            decoder.append(nn.Sequential(*units))
        self.decoder = nn.ModuleList(decoder)

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return skips, x

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        skips_a, _ = self._encode(before)
        skips_b, x = self._encode(after)
        for up, stage, a, b in zip(self.ups, self.decoder, reversed(skips_a), reversed(skips_b)):
            x = stage(torch.cat((up(x), torch.abs(a - b)), dim=1))
        return x
