"""The diffusion task: a denoising network (unconditional, class-conditional or, with a ``condition``
section, super-resolution) on images or, through a frozen autoencoder, on their latents
(:mod:`diffsat.models.encoders`).

Each step: the step's images (seeded indices, crops and flips; for a latent run, seeded views and crops of
the cached latents), for a class-conditional model their labels with a ``train.label_dropout`` fraction
replaced by the "no class" label, and the diffusion loss (:class:`~diffsat.diffusion.objective.DiffusionLoss`)
of the network's prediction. The preview is a grid of EMA samples with a fixed seed; evaluation scores EMA
samples (:mod:`diffsat.evaluation.during_training`).

Super-resolution: each step's crops are degraded into their low-resolution inputs (seeded by the step,
:mod:`diffsat.superres.degradation`) and the network learns them as SR3 does, or, for ``method
"regression"``, by the direct loss (:mod:`diffsat.diffusion.conditioning`). The preview shows three training
crops as low-res | output | truth; evaluation scores the PSNR and consistency of ``train.eval_samples``
centre crops of the training tiles.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import rundir
from ..config import Config, DataConfig
from ..data import DataError, ImageDataset, load_dataset
from ..data.transforms import to_model_range
from ..diffusion.conditioning import RegressionLoss, conditioned, to_target
from ..diffusion.objective import DiffusionLoss
from ..diffusion.schedules import NoiseSchedule
from ..evaluation.during_training import TrainingEvaluator, make_training_evaluator
from ..evaluation.fidelity import psnr
from ..geo.render import rgb_indices
from ..models.encoders import PIXELS, Encoder, LatentEncoder, latent_statistics
from ..models.unet import build_unet
from ..rundir.bands import save_run_normalisation
from ..sample_folder import grid_scale, save_grid
from ..sampling import SampleSettings, generate
from ..seeding import step_generator
from ..superres.degradation import condition_input, consistency_psnr, degrade
from ..superres.outputs import upscale_tiles
from .batches import BatchSource, PixelBatches, latent_batches, step_batch
from .init import freeze, initialise_from
from .task import Nets, TaskContext, TaskDefaults, Terms

GRID_SEED = 1234
"""Seed of the periodic sample grids and evaluation samples (the same noise every time, so they compare)."""
PREVIEW_SAMPLES = 9


def training_labels(dataset: ImageDataset, num_classes: int | None, data: DataConfig) -> torch.Tensor | None:
    """The dataset's labels ``(N,)`` int64 for a class-conditional model (``num_classes`` set), else None.

    Raises :class:`~diffsat.data.DataError` when the data has no labels or more classes than the model."""
    if num_classes is None:
        return None
    where = data.path or f"the default {data.kind} data"
    if dataset.labels is None:
        raise DataError(
            f"model.num_classes={num_classes} needs class labels, but {where} has none (an image folder gives "
            "labels by its class sub-folders): set model.num_classes to null or use labelled data"
        )
    top = int(dataset.labels.max()) if len(dataset.labels) else -1
    if top >= num_classes:
        raise DataError(
            f"{where} has labels up to {top} but model.num_classes={num_classes}: set model.num_classes to at "
            f"least {top + 1}"
        )
    return dataset.labels


@dataclass(frozen=True)
class DiffusionBatch:
    """``x``: ``(B, C, S, S)`` float32 (images in [-1, 1] or normalised latents); ``labels``: ``(B,)`` int64
    for a class-conditional model (``num_classes`` = "no class"), else None; ``condition``: a super-resolution
    model's condition images ``(B, C, S, S)`` (the degraded ``x`` upsampled), else None."""

    x: torch.Tensor
    labels: torch.Tensor | None
    condition: torch.Tensor | None = None


STATS_TILES = 256
"""A TAESD-family first stage's latent statistics come from at most this many training tiles, evenly spaced."""


def with_latent_statistics(config: Config, dataset: ImageDataset, device: torch.device) -> Config:
    """``config``, with ``latent.mean`` / ``latent.std`` of a TAESD-family first stage computed on ``dataset``'s
    tiles when unset (:func:`~diffsat.models.encoders.latent_statistics`, at most :data:`STATS_TILES` tiles)."""
    latent = config.latent
    if latent is None or not rundir.is_taesd_source(latent.autoencoder) or latent.mean is not None:
        return config
    autoencoder = rundir.load_taesd_for(config).to(device)
    step = max(1, len(dataset) // STATS_TILES)
    tiles = dataset.tiles[::step][:STATS_TILES]
    mean, std = latent_statistics(autoencoder, (to_model_range(t) for t in tiles.split(16)))
    stats = latent.model_copy(update={"mean": tuple(mean.tolist()), "std": tuple(std.tolist())})
    return config.model_copy(update={"latent": stats})


class DiffusionTask(TaskDefaults):
    """Trains ``config``'s denoising network on ``dataset`` (default: ``config.data`` loaded)."""

    name = "training"

    def __init__(self, config: Config, dataset: ImageDataset | None = None) -> None:
        self.config, self.dataset = config, dataset
        with torch.device("meta"):  # shape errors (image size, groups) before the data is read, at no cost
            build_unet(config.model)
        self.encoder: Encoder = PIXELS
        self.stats_s = 0.0
        self.evaluator: TrainingEvaluator | None = None

    @property
    def num_classes(self) -> int | None:
        return self.config.model.num_classes

    def setup(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        if self.dataset is None:
            self.dataset = load_dataset(self.config.data)
        start = time.perf_counter()
        self.config = with_latent_statistics(self.config, self.dataset, ctx.device)
        self.stats_s = time.perf_counter() - start
        self.encoder = rundir.run_encoder(self.config).to(ctx.device)
        if self.dataset.normalisation is not None and ctx.dist.is_main:
            save_run_normalisation(self.dataset.normalisation, ctx.run_dir)
        self.batches = self._batch_source()
        self.labels = training_labels(self.dataset, self.num_classes, self.config.data)
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.loss_fn = DiffusionLoss.from_config(self.config.diffusion, self.schedule)
        self.regression_loss = RegressionLoss(self.config.diffusion.loss)
        if self.config.train.eval_every and ctx.dist.is_main and self.config.condition is None:
            self.evaluator = make_training_evaluator(self.config, self.dataset)

    def run_config(self, config: Config) -> Config:
        """The config the run keeps: the task's ``config`` (the one given) with the latent statistics that
        setup computed."""
        return self.config

    def _batch_source(self) -> BatchSource:
        """The held tiles (augmented), or for a latent run their cached latents."""
        if isinstance(self.encoder, LatentEncoder):
            return latent_batches(self.encoder, self.dataset, self.config, self.ctx.run_dir, self.ctx.dist,
                                  self.ctx.precision)
        return PixelBatches(self.dataset.tiles.to(self.ctx.device), self.config.data)

    @property
    def setup_s(self) -> float:
        """Seconds of setup that count towards the time limit: latent statistics and the latent cache."""
        return self.stats_s + self.batches.setup_s

    def build_network(self) -> nn.Module:
        """The U-Net of ``model``: random weights, or ``train.init_from``'s, with ``train.freeze`` frozen."""
        net = build_unet(self.config.model)
        tc = self.config.train
        if tc.init_from is not None:
            initialise_from(net, tc.init_from, tc.init_from_config)
        if tc.freeze:
            freeze(net, tc.freeze)
        return net

    def input_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        m = self.config.model
        return (batch_size, m.in_channels, m.image_size, m.image_size)

    def batch(self, step: int) -> DiffusionBatch:
        """This rank's share of the step's global batch, on the device."""
        tc, dist, cond = self.config.train, self.ctx.dist, self.config.condition
        x, global_idx = step_batch(self.batches, len(self.dataset), step, tc, dist)
        if cond is not None:
            low = degrade(x, cond, step_generator(tc.seed, step, 3), shard=(dist.rank, dist.world_size))
            return DiffusionBatch(x, None, condition_input(low, cond.scale))
        if self.labels is None:
            return DiffusionBatch(x, None)
        dropped = torch.rand(len(global_idx), generator=step_generator(tc.seed, step, 2)) < tc.label_dropout
        labels = torch.where(dropped, self.num_classes, self.labels[global_idx])
        return DiffusionBatch(x, dist.shard(labels).to(self.ctx.device))

    def loss(self, net: nn.Module, batch: DiffusionBatch, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        cond, x = self.config.condition, batch.x
        if batch.condition is not None:
            x = to_target(x, batch.condition, cond.target)
            if cond.method == "regression":
                return self.regression_loss(net, batch.condition, x)["loss"], {}
        prediction = net if batch.labels is None else functools.partial(net, labels=batch.labels)
        if batch.condition is not None:
            prediction = conditioned(net, batch.condition)
        dist = self.ctx.dist
        return self.loss_fn(prediction, x, generator, shard=(dist.rank, dist.world_size))["loss"], {}

    def samples(self, network: nn.Module, n: int, bf16: bool) -> torch.Tensor:
        """``n`` images of ``network`` with the fixed grid seed (ancestral, ``train.sample_steps`` steps):
        ``(n, C, H, W)`` in [-1, 1]."""
        tc = self.config.train
        settings = SampleSettings("ancestral", tc.sample_steps, precision="bf16" if bf16 else "fp32",
                                  device=str(self.ctx.device))
        return generate(network, self.config, n, seed=GRID_SEED, settings=settings, encoder=self.encoder,
                        progress=False)

    def truth_crops(self, n: int) -> torch.Tensor:
        """``n`` evenly spaced training tiles' centre crops ``(n, C, S, S)`` in [-1, 1] (super-resolution checks)."""
        tiles = self.dataset.tiles[:: max(1, len(self.dataset) // n)][:n]
        size, (h, w) = self.config.data.image_size, tiles.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        return to_model_range(tiles[..., top : top + size, left : left + size].to(self.ctx.device)).float()

    def upscaled(self, network: nn.Module, truth: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The low-resolution inputs of ``truth`` (degraded without noise) and ``network``'s outputs for them."""
        tc, cond = self.config.train, self.config.condition
        low = degrade(truth, cond.model_copy(update={"noise_std": 0.0}))
        settings = SampleSettings("ancestral", tc.sample_steps, precision="bf16" if bf16 else "fp32",
                                  device=str(self.ctx.device))
        return low, upscale_tiles(network, self.config, low, GRID_SEED, settings)[:, 0]

    def sr_preview(self, nets: Nets, path: Path) -> torch.Tensor:
        """Three training crops, one row each: low-res (pixels enlarged) | output | truth."""
        truth = self.truth_crops(PREVIEW_SAMPLES // 3)
        low, out = self.upscaled(nets.ema, truth, nets.bf16)
        enlarged = low.repeat_interleave(self.config.condition.scale, -1).repeat_interleave(
            self.config.condition.scale, -2)
        images = torch.stack((enlarged, out, truth), dim=1).flatten(0, 1).cpu()
        save_grid(images, path, nrow=3, rgb=self._rgb())
        return images

    def _rgb(self) -> tuple[int, int, int] | None:
        norm = self.dataset.normalisation
        return rgb_indices(norm.names) if norm is not None else None

    def preview(self, nets: Nets, path: Path) -> torch.Tensor:
        if self.config.condition is not None:
            return self.sr_preview(nets, path)
        images = self.samples(nets.ema, PREVIEW_SAMPLES, nets.bf16)
        save_grid(images, path, scale=grid_scale(self.config.data.image_size), rgb=self._rgb())
        return images

    def evaluate(self, nets: Nets) -> dict[str, float]:
        """Sample-quality numbers of ``train.eval_samples`` EMA samples (see ``evaluation.during_training``); for
        super-resolution the mean PSNR and consistency PSNR of as many training crops."""
        if self.config.condition is not None and self.ctx.dist.is_main:
            truth = self.truth_crops(self.config.train.eval_samples)
            low, out = self.upscaled(nets.ema, truth, nets.bf16)
            return {"psnr": float(psnr(out, truth).mean()),
                    "consistency_psnr": float(consistency_psnr(out, low, self.config.condition).mean())}
        if self.evaluator is None:
            return {}
        return self.evaluator(self.samples(nets.ema, self.config.train.eval_samples, nets.bf16))
