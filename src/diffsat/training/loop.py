"""The training loop: a thin driver over data, loss, optimiser, EMA and checkpoints.

Reproducibility and exact resume: every random draw of step ``s`` (which images form the batch, their
augmentation, the noise levels and noise, dropout) comes from generators seeded by ``(seed, s)`` alone, so
the step after ``--resume`` is bit-for-bit the step an uninterrupted run would take.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config, save_config
from ..data import ImageDataset, load_dataset
from ..data.transforms import augment
from ..diffusion.objective import DiffusionLoss
from ..diffusion.schedules import NoiseSchedule
from ..models.unet import build_unet
from ..runtime import resolve_device
from . import checkpoint as ckpt
from .ema import EMA
from .throughput import train_step_flops

METRIC_FIELDS = ["step", "loss", "lr", "grad_norm", "images_per_s", "gflops", "elapsed_s"]
"""Columns of ``metrics.csv``: ``loss`` is the mean over the log interval, ``gflops`` the achieved GFLOP/s."""


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for the randomness of one training step."""
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the images of ``step``: epochs are seeded permutations, batches consecutive slices.

    With ``n < batch_size`` images are repeated within a batch. Returns ``(batch_size,)`` int64.
    """
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    if n < batch_size:
        perm = perm.repeat(math.ceil(batch_size / n))
    return perm[pos * batch_size : (pos + 1) * batch_size]


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` then constant."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup_steps))


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed_s: float
    last_loss: float
    stopped_by: str  # "max_steps" | "time_limit"
    losses: list[float] = field(default_factory=list)


class MetricsLog:
    """Appends rows to ``metrics.csv``; on resume drops rows logged after the checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow(row)


class Trainer:
    """Owns the model, EMA, optimiser and data for one run directory."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, dataset: ImageDataset | None = None):
        self.config, self.run_dir = config, Path(run_dir)
        tc = config.train
        self.device = resolve_device(tc.device)
        if tc.threads is not None:
            torch.set_num_threads(tc.threads)
        self.dataset = dataset if dataset is not None else load_dataset(config.data)
        self.images = self.dataset.images.to(self.device)
        torch.manual_seed(tc.seed)
        self.model = build_unet(config.model).to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, tc.ema_decay)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        dc = config.diffusion
        self.schedule = NoiseSchedule.from_config(dc)
        self.loss_fn = DiffusionLoss(self.schedule, dc.objective, dc.loss, dc.min_snr_gamma)
        self.step, self.elapsed_s = 0, 0.0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        save_config(config, self.run_dir / ckpt.CONFIG_FILE)
        self.flops_per_image = 0.0
        self.metrics = MetricsLog(self.run_dir / "metrics.csv", self.step if resume else None)

    def _resume(self) -> None:
        state = ckpt.load_train_state(self.run_dir)
        ckpt.load_into(self.model, self.run_dir / ckpt.MODEL_FILE)
        ckpt.load_into(self.ema.model, self.run_dir / ckpt.EMA_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed_s, self.ema.updates = state["step"], state["elapsed_s"], state["ema_updates"]

    def save(self) -> None:
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
        }
        ckpt.save_checkpoint(self.run_dir, self.model, self.ema.model, state)

    def next_batch(self) -> torch.Tensor:
        """The images of the current step, augmented: (B, C, H, W) float32 in [-1, 1]."""
        tc = self.config.train
        idx = batch_indices(len(self.dataset), tc.batch_size, self.step, tc.seed)
        generator = torch.Generator().manual_seed(step_seed(tc.seed, self.step) ^ 1)
        x = augment(self.images[idx.to(self.device)], self.config.data, generator)
        return x.contiguous(memory_format=torch.channels_last) if tc.channels_last else x

    def forward_loss(self) -> torch.Tensor:
        """The loss of the current step's batch (forward pass only; all draws seeded by (seed, step))."""
        tc = self.config.train
        seed = step_seed(tc.seed, self.step)
        torch.manual_seed(seed)  # dropout draws from the global generator
        generator = torch.Generator().manual_seed(seed)
        x = self.next_batch()
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
            return self.loss_fn(self.model, x, generator)["loss"]

    def measure_flops(self) -> float:
        """FLOP per training image of one step (forward + backward), counted once; gradients are discarded."""
        flops = train_step_flops(self.forward_loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.flops_per_image = flops / self.config.train.batch_size
        return self.flops_per_image

    def train_step(self) -> tuple[float, float]:
        """One optimiser step; returns (loss, gradient norm before clipping)."""
        tc = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, tc.lr, tc.warmup_steps)
        loss = self.forward_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.item(), grad_norm.item()

    def sample_grid(self, path: Path, n: int = 9) -> None:
        """A grid of ``n`` EMA samples (fixed seed, so grids over time are comparable)."""
        from ..sampling import SampleSettings, generate, save_grid

        tc = self.config.train
        settings = SampleSettings(steps=tc.sample_steps, bf16=tc.precision == "bf16", device=str(self.device))
        images = generate(self.ema.model, self.config, n, seed=1234, settings=settings, progress=False)
        save_grid(images, path, scale=4 if self.config.model.image_size <= 64 else 1)

    def run(self, progress: bool = True) -> TrainResult:
        """Train until ``max_steps`` or ``time_limit_minutes``; save, plot, and return a summary."""
        tc = self.config.train
        limit_s = tc.time_limit_minutes * 60 if tc.time_limit_minutes else math.inf
        stopped_by, losses, window = "max_steps", [], []
        self.measure_flops()
        bar = tqdm(total=tc.max_steps, initial=self.step, desc="training", unit="step", disable=not progress)
        tick, tick_step = time.perf_counter(), self.step
        while self.step < tc.max_steps:
            if self.elapsed_s >= limit_s:
                stopped_by = "time_limit"
                break
            t0 = time.perf_counter()
            loss, grad_norm = self.train_step()
            self.elapsed_s += time.perf_counter() - t0
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss} at step {self.step}: lower train.lr or set train.grad_clip "
                    f"(the last checkpoint in {self.run_dir} is intact)"
                )
            losses.append(loss)
            window.append(loss)
            bar.update(1)
            if self.step % tc.log_every == 0:
                now = time.perf_counter()
                ips = (self.step - tick_step) * tc.batch_size / max(now - tick, 1e-9)
                row = {"step": self.step, "loss": sum(window) / len(window),
                       "lr": lr_at(self.step - 1, tc.lr, tc.warmup_steps), "grad_norm": grad_norm,
                       "images_per_s": ips, "gflops": ips * self.flops_per_image / 1e9, "elapsed_s": self.elapsed_s}
                self.metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}")
                window, tick, tick_step = [], now, self.step
            if self.step % tc.sample_every == 0:
                self.sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png")
            if self.step % tc.save_every == 0:
                self.save()
        bar.close()
        self.save()
        self.finish()
        return TrainResult(self.run_dir, self.step, self.elapsed_s, losses[-1] if losses else float("nan"), stopped_by, losses)

    def finish(self) -> None:
        """Final sample grid and loss curve."""
        from ..plots import plot_loss_curve

        self.sample_grid(self.run_dir / "samples" / "final.png")
        plot_loss_curve(self.run_dir)


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config`` into ``run_dir`` (resuming from its checkpoint when ``resume``)."""
    return Trainer(config, run_dir, resume=resume).run(progress=progress)
