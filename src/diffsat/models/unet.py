"""The SR3-type U-Net, module-for-module the structure of DDPM-CD's generator.

``noise_level_mlp`` -> ``init_conv`` -> ``downs`` (res blocks per level, a Downsample between levels) ->
``mid`` (res block with attention, res block) -> ``ups`` (res_blocks + 1 blocks per level, each fed the
concatenation with a skip feature, an Upsample between levels) -> ``final_conv``. Attention sits at every
block whose current resolution is in ``attn_resolutions`` (the resolution is tracked from ``image_size``
exactly as in the reference, so the placement depends on the configured size).

With ``num_classes`` set, a class embedding ``label_emb`` (``num_classes + 1`` rows; the last one is "no
class", used for classifier-free guidance) is added to the output of the noise-level MLP, as diffusers'
UNet2DModel adds its class embedding to the time embedding. It starts at zero, so a new conditional network
is exactly the unconditional one of the same seed and learns the classes from there (a standard-normal
start swamped the noise-level embedding of the small MNIST network and left noisy backgrounds after 10 CPU
minutes: benchmarks/RESULTS.md). An unconditional network has no such module, so its keys are exactly
DDPM-CD's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import DiffsatError
from .layers import Block, Downsample, PositionalEncoding, ResnetBlockWithAttn, Upsample


class ModelShapeError(DiffsatError):
    """The configured or given image size / channels cannot pass through the network."""


def valid_sizes_hint(levels: int, limit: int = 512) -> str:
    factor = 2 ** (levels - 1)
    sizes = [s for s in range(factor, limit + 1, factor)][:8]
    return f"multiples of {factor} ({', '.join(map(str, sizes))}, ...)"


def check_image_size(image_size: int, levels: int) -> None:
    """Raise :class:`ModelShapeError` unless each of the ``levels - 1`` down-samplings halves the size exactly."""
    factor = 2 ** (levels - 1)
    if image_size % factor != 0:
        raise ModelShapeError(
            f"image size {image_size} cannot pass {levels - 1} down-samplings (each must halve it exactly); "
            f"with {levels} channel_mults the sizes that work are {valid_sizes_hint(levels)}: "
            f"change model.image_size/data.image_size or the number of channel_mults"
        )


def _check_groups(channels: int, groups: int) -> None:
    if channels % groups != 0:
        raise ModelShapeError(
            f"model.norm_groups {groups} does not divide a layer's {channels} channels: choose norm_groups "
            f"dividing base_channels * every channel_mult"
        )


@dataclass(frozen=True)
class _Plan:
    """Channel and attention plan derived from a ModelConfig (no parameters)."""

    cfg: ModelConfig

    @property
    def levels(self) -> int:
        return len(self.cfg.channel_mults)

    def channels(self, level: int) -> int:
        return self.cfg.base_channels * self.cfg.channel_mults[level]

    def resolution(self, level: int) -> int:
        return self.cfg.image_size // (2**level)

    def attn(self, level: int) -> bool:
        return self.resolution(level) in self.cfg.attn_resolutions


class SR3UNet(nn.Module):
    """Noise-level-conditioned U-Net.

    ``forward(x: (B, in_channels, H, W), noise_level: (B,) or (B, 1) in [0, 1]) -> (B, out_channels, H, W)``
    where ``noise_level`` is sqrt(alpha_bar). H and W must be multiples of ``2 ** (len(channel_mults) - 1)``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        plan = _Plan(cfg)
        check_image_size(cfg.image_size, plan.levels)
        for level in range(plan.levels):
            _check_groups(plan.channels(level), cfg.norm_groups)
        self.config = cfg
        emb = cfg.base_channels
        block = dict(emb_channels=emb, norm_groups=cfg.norm_groups, dropout=cfg.dropout)

        self.noise_level_mlp = nn.Sequential(
            PositionalEncoding(emb), nn.Linear(emb, emb * 4), nn.SiLU(), nn.Linear(emb * 4, emb)
        )
        self.label_emb = None
        if cfg.num_classes:  # zeros without a random draw: the other weights equal the unconditional net's
            self.label_emb = nn.Embedding(cfg.num_classes + 1, emb, _weight=torch.zeros(cfg.num_classes + 1, emb))
        self.init_conv = nn.Conv2d(cfg.in_channels, cfg.base_channels, kernel_size=3, padding=1)

        skip_channels = [cfg.base_channels]
        pre = cfg.base_channels
        downs: list[nn.Module] = []
        for level in range(plan.levels):
            out = plan.channels(level)
            for _ in range(cfg.res_blocks):
                downs.append(ResnetBlockWithAttn(pre, out, with_attn=plan.attn(level), **block))
                skip_channels.append(out)
                pre = out
            if level != plan.levels - 1:
                downs.append(Downsample(pre))
                skip_channels.append(pre)
        self.downs = nn.ModuleList(downs)

        self.mid = nn.ModuleList(
            [
                ResnetBlockWithAttn(pre, pre, with_attn=True, **block),
                ResnetBlockWithAttn(pre, pre, with_attn=False, **block),
            ]
        )

        ups: list[nn.Module] = []
        for level in reversed(range(plan.levels)):
            out = plan.channels(level)
            for _ in range(cfg.res_blocks + 1):
                ups.append(ResnetBlockWithAttn(pre + skip_channels.pop(), out, with_attn=plan.attn(level), **block))
                pre = out
            if level != 0:
                ups.append(Upsample(pre))
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(pre, cfg.out_channels, groups=cfg.norm_groups)
        self._size_factor = 2 ** (plan.levels - 1)

    @property
    def null_label(self) -> int | None:
        """The "no class" label index (``num_classes``) of a conditional network; ``None`` if unconditional."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``labels``: ``(B,)`` int64 class indices in ``[0, num_classes]`` (``num_classes`` = no class) for a
        conditional network; ``None`` = no class for every image. An unconditional network takes none."""
        self._check_input(x)
        emb = self.noise_level_mlp(noise_level.reshape(-1).float())
        if self.label_emb is not None:
            emb = emb + self.label_emb(self._check_labels(labels, x.shape[0], x.device))
        elif labels is not None:
            raise ModelShapeError(
                "class labels given to an unconditional network (model.num_classes is null): "
                "train with model.num_classes set to sample by class"
            )
        x = self.init_conv(x)
        skips = [x]
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResnetBlockWithAttn) else layer(x)
            skips.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            if isinstance(layer, ResnetBlockWithAttn):
                x = layer(torch.cat((x, skips.pop()), dim=1), emb)
            else:
                x = layer(x)
        return self.final_conv(x)

    def _check_labels(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """``labels`` as ``(batch,)`` int64 on ``device`` (``None``: all "no class"), range-checked."""
        n = self.config.num_classes
        if labels is None:
            return torch.full((batch,), n, dtype=torch.int64, device=device)
        labels = labels.reshape(-1).to(device=device, dtype=torch.int64)
        if labels.shape[0] != batch:
            raise ModelShapeError(f"{labels.shape[0]} class labels for a batch of {batch} images")
        # skipped under torch.compile: reading label values back would break the graph on every call
        if labels.numel() and not torch.compiler.is_compiling() and (int(labels.min()) < 0 or int(labels.max()) > n):
            raise ModelShapeError(
                f"class labels must be in 0..{n - 1} (or {n} = no class) for model.num_classes={n}, "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        return labels

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ModelShapeError(
                f"expected images of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self._size_factor or w % self._size_factor:
            raise ModelShapeError(
                f"image size {h}x{w} cannot pass the network: sizes that work are "
                f"{valid_sizes_hint(len(self.config.channel_mults))}"
            )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_unet(cfg: ModelConfig) -> SR3UNet:
    """Build the U-Net described by ``cfg`` (raises :class:`ModelShapeError` for impossible shapes)."""
    return SR3UNet(cfg)
