"""The change-detection methods behind one interface: what a training sample holds, how a batch becomes
logits, and how a whole pair of any size is predicted (sliding windows, :mod:`diffsat.cd.window`).

- ``ddpmcd``: :class:`FeatureHeadMethod`, DDPM-CD's head on cached diffusion features;
- ``fc_siam_diff``: :class:`ImageMethod`, FC-Siam-diff on the images;
- ``cva``: :func:`diffsat.cd.cva.cva`, no training.

A sample is a dict of aligned tensors (``"label"``: ``(H, W)`` int64 in {0, 1}; the others ``(C, H/f, W/f)``
float32 with a known factor ``f``), so one crop routine serves images and feature maps alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import to_unit_range
from ..runtime import resolve_device
from .config import CDConfig
from .cva import cva
from .features import Backbone, FeatureCache, FeatureExtractor, image_noise, load_backbone
from .heads import DDPMCDHead, FCSiamDiff
from .pairs import Pair
from .window import pad_to, padded_size, stitch

Sample = dict[str, torch.Tensor]


class ImageMethod:
    """FC-Siam-diff on the images (``net(before, after)``)."""

    name = "fc_siam_diff"

    def __init__(self, cfg: CDConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)  # the initial weights
        self.device = resolve_device(cfg.train.device)
        self.net: nn.Module = FCSiamDiff(3).to(self.device)
        self.factors = {"A": 1, "B": 1}
        self.align = 16

    def sample(self, pair: Pair) -> Sample:
        return {"A": to_unit_range(pair.before), "B": to_unit_range(pair.after)}

    def logits(self, batch: Sample, net: nn.Module | None = None) -> torch.Tensor:
        """``batch["A"]``, ``batch["B"]``: ``(B, 3, S, S)`` -> ``(B, 2, S, S)``; ``net``: the trainer's wrapping
        of :attr:`net` (default: :attr:`net` itself)."""
        return (net or self.net)(batch["A"], batch["B"])

    def window_logits(self, before: torch.Tensor, after: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(before[None].to(self.device), after[None].to(self.device))[0].cpu()


class FeatureHeadMethod:
    """DDPM-CD's head on the frozen backbone's features (cached under ``cache_dir``)."""

    name = "ddpmcd"

    def __init__(self, cfg: CDConfig, cache_dir: Path | None, backbone: Backbone | None = None) -> None:
        """``backbone``: an already loaded one (e.g. random weights for a timing); default ``features.backbone``."""
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        backbone = backbone or load_backbone(cfg.features)
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
        noise = image_noise(h, w, self.cfg.features.seed)
        return self.cache.features(to_unit_range(pair.before), to_unit_range(pair.after), noise)

    def logits(self, batch: Sample, net: nn.Module | None = None) -> torch.Tensor:
        """Feature maps ``(B, levels * C, S/f, S/f)`` per scale -> ``(B, 2, S, S)`` (upsampled from the finest);
        ``net``: the trainer's wrapping of :attr:`net` (default: :attr:`net` itself)."""
        names = [s.name for s in self.extractor.scales]
        out = (net or self.net)([batch[f"A.{n}"] for n in names], [batch[f"B.{n}"] for n in names])
        factor = self.extractor.scales[-1].factor
        if factor > 1:
            out = F.interpolate(out, scale_factor=factor, mode="bilinear", align_corners=False)
        return out

    def window_logits(self, before: torch.Tensor, after: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        feats = self.cache.features(before, after, noise)
        return self.logits({k: v[None].to(self.device) for k, v in feats.items()})[0].cpu()


Method = ImageMethod | FeatureHeadMethod


def aligned(pair: Pair, align: int) -> Pair:
    """The pair cut (top-left) to sides that are multiples of ``align`` (the training samples' requirement)."""
    h, w = (n // align * align for n in pair.size)
    if (h, w) == pair.size:
        return pair
    label = pair.label[:h, :w] if pair.label is not None else None
    return Pair(pair.name, pair.before[:, :h, :w].copy(), pair.after[:, :h, :w].copy(), label, pair.root)


def build_method(name: str, cfg: CDConfig, cache_dir: Path | None) -> Method:
    """The trainable method ``name`` (``ddpmcd`` or ``fc_siam_diff``) with freshly seeded weights."""
    return FeatureHeadMethod(cfg, cache_dir) if name == "ddpmcd" else ImageMethod(cfg)


@torch.inference_mode()
def change_probability(method: Method, pair: Pair) -> np.ndarray:
    """P(change) ``(H, W)`` float32 of a pair of any size by sliding windows (``data.window``, ``data.margin``)."""
    data = method.cfg.data
    h, w = pair.size
    ph, pw = padded_size(h, w, data.window, method.align)
    window = -(-data.window // method.align) * method.align
    before, after = pad_to(to_unit_range(pair.before), ph, pw), pad_to(to_unit_range(pair.after), ph, pw)
    noise = image_noise(ph, pw, method.cfg.features.seed)
    method.net.eval()

    def predict(y: int, x: int) -> torch.Tensor:
        cut = (slice(None), slice(y, y + window), slice(x, x + window))
        return torch.softmax(method.window_logits(before[cut], after[cut], noise[cut]), dim=0)[1:]

    return stitch(predict, ph, pw, window, data.margin)[0, :h, :w].numpy()


def predict_pair(method: Method | None, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """``(change mask bool (H, W), P(change) or CVA magnitude in [0, 1] (H, W))``; ``method=None`` is CVA."""
    if method is None:
        return cva(pair.before, pair.after)
    prob = change_probability(method, pair)
    return prob > 0.5, prob
