"""The trained change-detection methods behind one interface: what a training sample holds, how a batch
becomes logits, and how one window of a pair becomes logits (:mod:`diffsat.cd.predict` runs the windows).

- ``ddpmcd``: :class:`FeatureHeadMethod`, DDPM-CD's head on cached diffusion features;
- ``fc_siam_diff``: :class:`ImageMethod`, FC-Siam-diff on the images;
- ``cva``: :mod:`diffsat.cd.cva`, no training (no method object: ``None``).

A sample is a dict of aligned tensors (``"label"``: ``(H, W)`` int64 in {0, 1}; the others ``(C, H/f, W/f)``
float32 with a known factor ``f``), so one crop routine serves images and feature maps alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import resolve_device
from .config import CDConfig
from .features import Backbone, FeatureCache, FeatureError, FeatureExtractor, load_backbone, position_noise
from .heads import DDPMCDHead, FCSiamDiff
from .pairs import Pair

Sample = dict[str, torch.Tensor]


class ImageMethod:
    """FC-Siam-diff on the images (``net(before, after)``) of ``channels`` bands."""

    name = "fc_siam_diff"

    def __init__(self, cfg: CDConfig, channels: int = 3) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)  # the initial weights
        self.device = resolve_device(cfg.train.device)
        self.net: nn.Module = FCSiamDiff(channels).to(self.device)
        self.factors = {"A": 1, "B": 1}
        self.align = 16

    def sample(self, pair: Pair) -> Sample:
        return {"A": torch.from_numpy(pair.before), "B": torch.from_numpy(pair.after)}

    def logits(self, batch: Sample, net: nn.Module | None = None) -> torch.Tensor:
        """``batch["A"]``, ``batch["B"]``: ``(B, C, S, S)`` -> ``(B, 2, S, S)``; ``net``: the trainer's wrapping
        of :attr:`net` (default: :attr:`net` itself)."""
        return (net or self.net)(batch["A"], batch["B"])

    def window_logits(self, before: torch.Tensor, after: torch.Tensor, y: int, x: int) -> torch.Tensor:
        """``before`` / ``after`` ``(C, h, w)`` of the window at ``(y, x)`` -> logits ``(2, h, w)``."""
        return self.net(before[None].to(self.device), after[None].to(self.device))[0].cpu()


class FeatureHeadMethod:
    """DDPM-CD's head on the frozen backbone's features (cached under ``cache_dir``)."""

    name = "ddpmcd"

    def __init__(self, cfg: CDConfig, cache_dir: Path | None, backbone: Backbone | None = None,
                 channels: int = 3) -> None:
        """``backbone``: an already loaded one (e.g. random weights for a timing); default ``features.backbone``."""
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        backbone = backbone or load_backbone(cfg.features)
        if backbone.net.config.in_channels != channels:
            raise FeatureError(f"{backbone.source}: a backbone of {backbone.net.config.in_channels} input channels, "
                               f"but the pairs have {channels} bands; pretrain a backbone on these bands or set "
                               "data.bands to its bands")
        backbone.net.to(self.device)
        self.extractor = FeatureExtractor(backbone, cfg.features, window=cfg.data.window)
        self.cache = FeatureCache(self.extractor, cache_dir)
        scales = self.extractor.scales
        torch.manual_seed(cfg.train.seed)
        self.net = DDPMCDHead([s.channels for s in scales], len(self.extractor.levels),
                              cfg.head.classifier_channels).to(self.device)
        self.factors = {f"{side}.{s.name}": s.factor for s in scales for side in "AB"}
        self.align = max(self.extractor.align, max(s.factor for s in scales))

    def sample(self, pair: Pair) -> Sample:
        """The pair's features (its sides multiples of :attr:`align`: see :func:`aligned`)."""
        h, w = pair.size
        noise = position_noise(pair.before.shape[0], 0, 0, h, w, self.cfg.features.seed)
        return self.cache.features(torch.from_numpy(pair.before), torch.from_numpy(pair.after), noise)

    def logits(self, batch: Sample, net: nn.Module | None = None) -> torch.Tensor:
        """Feature maps ``(B, levels * C, S/f, S/f)`` per scale -> ``(B, 2, S, S)`` (upsampled from the finest);
        ``net``: the trainer's wrapping of :attr:`net` (default: :attr:`net` itself)."""
        names = [s.name for s in self.extractor.scales]
        out = (net or self.net)([batch[f"A.{n}"] for n in names], [batch[f"B.{n}"] for n in names])
        factor = self.extractor.scales[-1].factor
        if factor > 1:
            out = F.interpolate(out, scale_factor=factor, mode="bilinear", align_corners=False)
        return out

    def window_logits(self, before: torch.Tensor, after: torch.Tensor, y: int, x: int) -> torch.Tensor:
        """As :meth:`ImageMethod.window_logits`; the noise is the image's at the window's position."""
        noise = position_noise(before.shape[0], y, x, before.shape[1], before.shape[2], self.cfg.features.seed)
        feats = self.cache.features(before, after, noise)
        return self.logits({k: v[None].to(self.device) for k, v in feats.items()})[0].cpu()


Method = ImageMethod | FeatureHeadMethod


def aligned(pair: Pair, align: int) -> Pair:
    """The pair cut (top-left) to sides that are multiples of ``align`` (the training samples' requirement)."""
    h, w = (n // align * align for n in pair.size)
    if (h, w) == pair.size:
        return pair
    label = pair.label[:h, :w] if pair.label is not None else None
    valid = pair.valid[:h, :w] if pair.valid is not None else None
    return Pair(pair.name, pair.before[:, :h, :w].copy(), pair.after[:, :h, :w].copy(), label, pair.root, valid)


def build_method(name: str, cfg: CDConfig, cache_dir: Path | None, channels: int = 3) -> Method:
    """The trainable method ``name`` (``ddpmcd`` or ``fc_siam_diff``) with freshly seeded weights."""
    return FeatureHeadMethod(cfg, cache_dir, channels=channels) if name == "ddpmcd" else ImageMethod(cfg, channels)
