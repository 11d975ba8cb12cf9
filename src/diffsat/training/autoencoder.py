"""The autoencoder task of latent diffusion, with an optional patch discriminator.

Each step: the reconstruction loss (:class:`~diffsat.autoencoder.losses.AutoencoderLoss`) of a posterior
sample of the step's images; from ``loss.adversarial_start`` on, after the optimiser step, one discriminator
step (hinge loss on the step's real images and the detached reconstructions the loss returned). Every
checkpoint stores the latent statistics (per-channel mean and standard deviation of the mean latents of up to
:data:`LATENT_STATS_TILES` training tiles) in the weights, so any checkpoint serves a latent diffusion run.
The preview is training tiles above their reconstructions; when training ends, the reconstruction quality on
the held-out tiles (beside a bicubic baseline of equal size) is written to the run's ``reconstruction.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import rundir
from ..autoencoder.losses import AutoencoderLoss, hinge_discriminator_loss
from ..autoencoder.quality import reconstruct, reconstruction_quality
from ..config import AutoencoderRunConfig
from ..data import ImageDataset, load_dataset
from ..data.transforms import to_model_range
from ..errors import DiffsatError
from ..fileio import atomic_write_text
from ..models.autoencoder import build_autoencoder, build_discriminator, interior
from ..sample_folder import grid_scale, save_grid
from .batches import PixelBatches, step_batch
from .task import Nets, TaskContext, TaskDefaults, Terms

LATENT_STATS_TILES = 256
GRID_TILES = 8
"""Tiles in the periodic reconstruction grids (first row: the tiles, second row: their reconstructions)."""


class AutoencoderTask(TaskDefaults):
    """Trains ``config``'s autoencoder on ``dataset`` (default: ``config.data`` loaded)."""

    name = "training"

    def __init__(self, config: AutoencoderRunConfig, dataset: ImageDataset | None = None) -> None:
        self.config, self.dataset = config, dataset
        with torch.device("meta"):
            build_autoencoder(config.autoencoder)
        self.discriminator: nn.Module | None = None
        self.discriminator_optimizer: torch.optim.Optimizer | None = None

    @property
    def margin(self) -> int:
        return self.config.loss.interior_margin

    def setup(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        if self.dataset is None:
            self.dataset = load_dataset(self.config.data)
        self.batches = PixelBatches(self.dataset.tiles.to(ctx.device), self.config.data)
        loss = self.config.loss
        self.loss_fn = AutoencoderLoss(loss)
        if loss.adversarial_weight == 0:
            return
        if ctx.dist.distributed:
            raise DiffsatError("the patch discriminator trains in one process: train this autoencoder without "
                               "torchrun, or set loss.adversarial_weight=0")
        torch.manual_seed(ctx.seed + 1)
        self.discriminator = build_discriminator(self.config.autoencoder, loss).to(ctx.device)
        lr = loss.discriminator_lr or self.config.train.lr
        self.discriminator_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))

    def build_network(self) -> nn.Module:
        return build_autoencoder(self.config.autoencoder)

    def input_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        d = self.config.data
        return (batch_size, d.channels, d.image_size, d.image_size)

    def batch(self, step: int) -> tuple[torch.Tensor, bool]:
        """This rank's images of ``step`` ``(B, C, S, S)`` in [-1, 1], and whether the step is adversarial."""
        x, _ = step_batch(self.batches, len(self.dataset), step, self.config.train, self.ctx.dist)
        adversarial = self.discriminator is not None and step >= self.config.loss.adversarial_start
        return x, adversarial

    def loss(self, net: nn.Module, batch: tuple[torch.Tensor, bool], generator: torch.Generator
             ) -> tuple[torch.Tensor, Terms]:
        """The loss terms (logged as ``ae_<term>``); on an adversarial step also the detached ``real`` and
        ``fake`` images that :meth:`extra_step` trains the discriminator on."""
        x, adversarial = batch
        a = self.config.autoencoder
        side = x.shape[-1] // a.factor
        noise = torch.randn((x.shape[0], a.latent_channels, side, side), generator=generator)
        reconstruction, mean, logvar = net(x, noise.to(x.device), margin=self.margin)
        x = interior(x, self.margin * a.factor)
        discriminator = self.discriminator.requires_grad_(False) if adversarial else None
        terms = self.loss_fn(x, reconstruction, mean, logvar, discriminator)
        out: Terms = {f"ae_{k}": v.detach() for k, v in terms.items() if k != "loss"}
        if adversarial:
            out.update(real=x.detach(), fake=reconstruction.detach())
        return terms["loss"], out

    def extra_step(self, step: int, batch: tuple[torch.Tensor, bool], terms: Terms) -> dict[str, float]:
        """One discriminator step on an adversarial step's real and fake images."""
        if "fake" not in terms:
            return {}
        self.discriminator.requires_grad_(True).train()
        loss = hinge_discriminator_loss(self.discriminator(terms["real"]), self.discriminator(terms["fake"]))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        return {"ae_discriminator": float(loss.detach())}

    def extra_state(self) -> dict[str, Any]:
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])

    def _stats_tiles(self) -> torch.Tensor:
        """Up to :data:`LATENT_STATS_TILES` training tiles (a fixed seeded choice) as float32 ``(n, C, S, S)``,
        cut to a multiple of the factor."""
        tiles = self.dataset.tiles
        n = min(len(tiles), LATENT_STATS_TILES)
        index = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(self.config.train.seed))[:n]
        side = tiles.shape[-1] - tiles.shape[-1] % self.config.autoencoder.factor
        return to_model_range(tiles[index.sort().values, :, :side, :side])

    @torch.no_grad()
    def before_save(self, nets: Nets) -> None:
        """Set the latent statistics of the model and of its EMA from their own encoders."""
        x = self._stats_tiles()
        for network in (nets.model, nets.ema):
            was_training = network.training
            network.eval()
            means = torch.cat([network.encode(chunk.to(self.ctx.device))[0].float().cpu() for chunk in x.split(32)])
            network.set_latent_stats(means.to(self.ctx.device))
            network.train(was_training)

    def _grid_tiles(self) -> torch.Tensor:
        """:data:`GRID_TILES` training tiles spread evenly over the dataset (so over a class-sorted folder's
        classes), cut as :meth:`ImageDataset.model_view` cuts them: ``(n, C, S, S)`` in [-1, 1]."""
        n = len(self.dataset)
        index = torch.linspace(0, n - 1, min(n, GRID_TILES)).round().long().unique()
        subset = ImageDataset(self.dataset.tiles[index], None, self.dataset.source)
        return subset.model_view(self.config.data, self.config.train.seed)

    def preview(self, nets: Nets, path: Path) -> torch.Tensor:
        """Training tiles (first row) above the EMA autoencoder's reconstructions of them (second row); with
        ``loss.interior_margin``, of the crops' interiors."""
        x = self._grid_tiles()
        with torch.inference_mode():
            reconstruction = reconstruct(nets.ema, x.to(self.ctx.device), margin=self.margin)
        grid = torch.cat([interior(x, self.margin * self.config.autoencoder.factor), reconstruction])
        save_grid(grid, path, nrow=len(x), scale=grid_scale(self.config.data.image_size))
        return grid

    def evaluate(self, nets: Nets) -> dict[str, float]:
        """PSNR and SSIM of the EMA autoencoder on the grid tiles (a cheap trend while training)."""
        report = reconstruction_quality(nets.ema, self._grid_tiles().to(self.ctx.device), seed=self.config.train.seed,
                                        with_swd=False, margin=self.margin)
        return {f"recon_{k}": v for k, v in report["autoencoder"].items()}

    def finish(self, nets: Nets) -> None:
        self.write_reconstruction_report(nets)

    def write_reconstruction_report(self, nets: Nets) -> dict:
        """Reconstruction quality on the held-out tiles (``data.holdout``; the training tiles when there are
        none, and the file says so) beside bicubic, written to ``reconstruction.json``. With
        ``loss.interior_margin`` the crops are cut larger by the margin where the tiles allow, so that
        ``data.image_size`` pixels a side are scored (:func:`reconstruction_quality`)."""
        data, f = self.config.data, self.config.autoencoder.factor
        held_out = data.holdout is not None
        tiles = load_dataset(data.model_copy(update={"split": "test"})) if held_out else self.dataset
        size = min(data.image_size + 2 * self.margin * f, tiles.resolution // f * f)
        images = tiles.model_view(data.model_copy(update={"image_size": size}), self.config.train.seed)
        report = reconstruction_quality(nets.ema, images, seed=self.config.train.seed, margin=self.margin)
        report.update({"held_out": held_out, "images": len(images), "step": nets.step})
        atomic_write_text(rundir.run_file(self.ctx.run_dir, rundir.RECONSTRUCTION_FILE), json.dumps(report, indent=2))
        return report
