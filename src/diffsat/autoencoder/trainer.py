"""Training the autoencoder of latent diffusion: the diffusion :class:`~diffsat.training.loop.Trainer` with
another network, loss and sample grid, and an optional patch discriminator.

Everything else is the diffusion trainer's: seeded per-step draws (exact resume), EMA, crash-consistent
checkpoints, time limits, metrics, the report. Each step: the reconstruction loss (:class:`AutoencoderLoss`)
of a posterior sample, one optimiser step; from ``loss.adversarial_start`` on, then one discriminator step
(hinge loss on the step's real images and detached reconstructions). Every checkpoint stores the latent
statistics (per-channel mean and standard deviation of the mean latents of up to
:data:`LATENT_STATS_TILES` training tiles) in the weights, so any checkpoint serves a latent diffusion run.
When training ends, the reconstruction quality on the held-out tiles (beside a bicubic baseline of equal size)
is written to the run's ``reconstruction.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import rundir
from ..config import AutoencoderRunConfig
from ..data import ImageDataset, load_dataset
from ..data.transforms import to_model_range
from ..errors import DiffsatError
from ..fileio import atomic_write_text
from ..models.autoencoder import build_autoencoder, build_discriminator, interior
from ..sample_folder import grid_scale, save_grid
from ..training.loop import Trainer
from .losses import AutoencoderLoss, hinge_discriminator_loss
from .quality import reconstruct, reconstruction_quality

LATENT_STATS_TILES = 256
GRID_TILES = 8
"""Tiles in the periodic reconstruction grids (first row: the tiles, second row: their reconstructions)."""


class AutoencoderTrainer(Trainer):
    """A :class:`Trainer` for an :class:`~diffsat.config.AutoencoderRunConfig`."""

    config: AutoencoderRunConfig

    @property
    def num_classes(self) -> None:
        return None

    def build_network(self) -> torch.nn.Module:
        return build_autoencoder(self.config.autoencoder)

    def input_shape(self) -> tuple[int, int, int, int]:
        d = self.config.data
        return (self.config.train.batch_size, d.channels, d.image_size, d.image_size)

    def frozen_autoencoder(self) -> None:
        return None

    def setup_objective(self) -> None:
        loss = self.config.loss
        self.loss_fn = AutoencoderLoss(loss)
        self.discriminator, self.discriminator_optimizer = None, None
        self.last_pair: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_terms: dict[str, float] = {}  # the last step's loss terms, logged beside the loss
        if loss.adversarial_weight == 0:
            return
        if self.dist.distributed:
            raise DiffsatError("the patch discriminator trains in one process: train this autoencoder without "
                               "torchrun, or set loss.adversarial_weight=0")
        torch.manual_seed(self.config.train.seed + 1)
        self.discriminator = build_discriminator(self.config.autoencoder, loss).to(self.device)
        lr = loss.discriminator_lr or self.config.train.lr
        self.discriminator_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))

    def make_evaluator(self) -> None:
        return None  # reconstruction numbers come from evaluate()

    def _adversarial(self) -> bool:
        return self.discriminator is not None and self.step >= self.config.loss.adversarial_start

    @property
    def margin(self) -> int:
        return self.config.loss.interior_margin

    def _loss(self, net: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
        x, _ = self.next_batch()
        a = self.config.autoencoder
        side = x.shape[-1] // a.factor
        noise = torch.randn((x.shape[0], a.latent_channels, side, side), generator=generator)
        reconstruction, mean, logvar = net(x, noise.to(self.device), margin=self.margin)
        x = interior(x, self.margin * a.factor)
        discriminator = self.discriminator if self._adversarial() else None
        if discriminator is not None:
            discriminator.requires_grad_(False)
            self.last_pair = (x.detach(), reconstruction.detach())
        terms = self.loss_fn(x, reconstruction, mean, logvar, discriminator)
        self.last_terms = {k: float(v.detach()) for k, v in terms.items() if k != "loss"}
        return terms["loss"]

    def train_step(self) -> tuple[float, float]:
        adversarial = self._adversarial()
        loss, grad_norm = super().train_step()
        if adversarial and self.last_pair is not None:
            self._discriminator_step(*self.last_pair)
        self.last_pair = None
        return loss, grad_norm

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        self.discriminator.requires_grad_(True).train()
        loss = hinge_discriminator_loss(self.discriminator(real), self.discriminator(fake))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        self.last_terms["discriminator"] = float(loss.detach())

    def log(self, row: dict[str, float]) -> None:
        if "loss" in row and self.last_terms:
            row = {**row, **{f"ae_{k}": v for k, v in self.last_terms.items()}}
        super().log(row)

    def extra_state(self) -> dict[str, object]:
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, object]) -> None:
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
    def update_latent_stats(self) -> None:
        """Set the latent statistics of the model and of its EMA from their own encoders."""
        x = self._stats_tiles()
        for network in (self.model, self.ema.model):
            was_training = network.training
            network.eval()
            means = torch.cat([network.encode(chunk.to(self.device))[0].float().cpu() for chunk in x.split(32)])
            network.set_latent_stats(means.to(self.device))
            network.train(was_training)

    def save(self, wait: bool = True) -> None:
        if self.saved_step != self.step and self.dist.is_main:
            self.update_latent_stats()
        super().save(wait)

    def _grid_tiles(self) -> torch.Tensor:
        """:data:`GRID_TILES` training tiles spread evenly over the dataset (so over a class-sorted folder's
        classes), cut as :meth:`ImageDataset.model_view` cuts them: ``(n, C, S, S)`` in [-1, 1]."""
        n = len(self.dataset)
        index = torch.linspace(0, n - 1, min(n, GRID_TILES)).round().long().unique()
        subset = ImageDataset(self.dataset.tiles[index], None, self.dataset.source)
        return subset.model_view(self.config.data, self.config.train.seed)

    def sample_grid(self, path: Path, n: int = GRID_TILES) -> None:
        """Training tiles (first row) above the EMA autoencoder's reconstructions of them (second row); with
        ``loss.interior_margin``, of the crops' interiors."""
        x = self._grid_tiles()
        with torch.inference_mode():
            reconstruction = reconstruct(self.ema.model, x.to(self.device), margin=self.margin)
        grid = torch.cat([interior(x, self.margin * self.config.autoencoder.factor), reconstruction])
        save_grid(grid, path, nrow=len(x), scale=grid_scale(self.config.data.image_size))

    def evaluate(self) -> dict[str, float]:
        """PSNR and SSIM of the EMA autoencoder on the grid tiles (a cheap trend while training)."""
        report = reconstruction_quality(self.ema.model, self._grid_tiles().to(self.device), seed=self.config.train.seed,
                                        with_swd=False, margin=self.margin)
        return {f"recon_{k}": v for k, v in report["autoencoder"].items()}

    def finish(self) -> None:
        self.write_reconstruction_report()
        super().finish()

    def write_reconstruction_report(self) -> dict:
        """Reconstruction quality on the held-out tiles (``data.holdout``; the training tiles when there are
        none, and the file says so) beside bicubic, written to ``reconstruction.json``. With
        ``loss.interior_margin`` the crops are cut larger by the margin where the tiles allow, so that
        ``data.image_size`` pixels a side are scored (:func:`reconstruction_quality`)."""
        data, f = self.config.data, self.config.autoencoder.factor
        held_out = data.holdout is not None
        tiles = load_dataset(data.model_copy(update={"split": "test"})) if held_out else self.dataset
        size = min(data.image_size + 2 * self.margin * f, tiles.resolution // f * f)
        images = tiles.model_view(data.model_copy(update={"image_size": size}), self.config.train.seed)
        report = reconstruction_quality(self.ema.model, images, seed=self.config.train.seed, margin=self.margin)
        report.update({"held_out": held_out, "images": len(images), "step": self.step})
        atomic_write_text(rundir.run_file(self.run_dir, rundir.RECONSTRUCTION_FILE), json.dumps(report, indent=2))
        return report
