"""The training loop: a thin driver over data, loss, optimiser, EMA, checkpoints and evaluation.

Reproducibility and exact resume: every random draw of step ``s`` (which images form the batch, their
crops and flips, the noise levels and noise, dropout) comes from generators seeded by ``(seed, s)`` alone,
so the step after ``--resume`` is bit-for-bit the step an uninterrupted run would take. Under torchrun
each rank takes its slice of the same global draws, so N ranks with batch B train like one process with
batch N x B (exactly so without dropout, whose masks are drawn per rank).
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import rundir
from ..config import Config, DataConfig, TrainConfig, save_config
from ..data import DataError, ImageDataset, load_dataset
from ..diffusion.objective import DiffusionLoss
from ..diffusion.schedules import NoiseSchedule
from ..errors import CheckpointError, DiffsatError, TrainingDivergedError
from ..evaluation.during_training import TrainingEvaluator, make_training_evaluator
from ..models.unet import build_unet
from ..precision import auto_bf16, training_timer
from ..sample_folder import grid_scale, save_grid
from ..sampling import SampleSettings, generate
from .batches import BatchSource, PixelBatches, latent_batches
from .distributed import DistContext, setup, teardown
from .ema import EMA
from .metrics import MetricsLog
from .tensorboard import TensorBoardLog
from .throughput import train_step_flops

FinishHook = Callable[[Path], object]
"""Called with the run directory when training ends (rank 0), e.g. :func:`diffsat.plots.plot_training`."""

GRID_SEED = 1234
"""Seed of the periodic sample grids and evaluation samples (the same noise every time, so they compare)."""


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


def lr_at(step: int, tc: TrainConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then constant or a cosine
    decay reaching 0 at ``max_steps`` (``lr_schedule``). It depends on the step alone, so a resumed run
    continues exactly; a run stopped earlier by ``time_limit_minutes`` ends part-way down the curve."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.lr_schedule == "constant" or step < tc.warmup_steps:
        return tc.lr * warm
    progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed_s: float  # training steps and batch preparation (latent encoding): what train.time_limit_minutes counts
    wall_s: float  # the whole call: steps, sample grids, evaluation, checkpoints
    last_loss: float
    stopped_by: str  # "max_steps" | "time_limit"
    losses: list[float] = field(default_factory=list)
    is_main: bool = True  # rank 0 (or the only process): the one that reports


def compiled_for_training(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` through ``torch.compile``; checks first for the C++ compiler inductor needs on the CPU, whose
    absence torch would only report deep inside the first training step."""
    if device.type == "cpu" and not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        raise DiffsatError("train.compile needs a C++ compiler on the CPU (g++ or clang++ on PATH): install "
                           "one, or set train.compile=false")
    return torch.compile(net, dynamic=False)  # fixed batch shapes; automatic dynamic shapes hit an inductor bug


class Trainer:
    """Owns the model, EMA, optimiser, data and run directory of one training run (one rank of it)."""

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool = False,
        dataset: ImageDataset | None = None,
        dist: DistContext | None = None,
        on_finish: Sequence[FinishHook] = (),
    ) -> None:
        self.config, self.run_dir, self.on_finish = config, Path(run_dir), tuple(on_finish)
        tc = config.train
        with torch.device("meta"):  # shape errors (image size, groups) before the data is read, at no cost
            self.build_network()
        self.dist = dist or setup(tc.device)
        self.device = self.dist.device
        if tc.threads is not None:
            torch.set_num_threads(tc.threads)
        self.autoencoder = self.frozen_autoencoder()
        self.dataset = dataset if dataset is not None else load_dataset(config.data)
        self.batches = self.make_batches()
        self.labels = training_labels(self.dataset, self.num_classes, config.data)
        torch.manual_seed(tc.seed)
        self.model = self.build_network().to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, tc.ema_decay)
        # fused: one kernel for all parameters instead of a loop over them
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
        self.setup_objective()
        self.step, self.elapsed_s, self.flops_per_image = 0, 0.0, 0.0
        self.bf16 = self._resolve_bf16()
        self.saved_step: int | None = None  # the step of the last checkpoint committed or resumed from
        if resume:
            self._resume()
        else:
            self._start_afresh()
        self.elapsed_s += self.batches.setup_s  # a latent run's encoding counts towards its time limit
        net = DistributedDataParallel(self.model) if self.dist.distributed else self.model
        self.net = compiled_for_training(net, self.device) if tc.compile else net
        self.metrics: MetricsLog | None = None
        self.evaluator, self.tensorboard = None, None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, rundir.run_file(self.run_dir, rundir.CONFIG_FILE))
            self.metrics = MetricsLog(rundir.run_file(self.run_dir, rundir.METRICS_FILE), self.step if resume else None)
            if tc.tensorboard:
                self.tensorboard = TensorBoardLog(rundir.run_file(self.run_dir, rundir.TENSORBOARD_DIR))
            if tc.eval_every:
                self.evaluator = self.make_evaluator()

    # --- what a subclass training another kind of network replaces (diffsat.autoencoder.trainer) ---

    @property
    def num_classes(self) -> int | None:
        return self.config.model.num_classes

    def build_network(self) -> torch.nn.Module:
        """The network trained (built under ``torch.device("meta")`` once first, as a shape check)."""
        return build_unet(self.config.model)

    def input_shape(self) -> tuple[int, int, int, int]:
        """The shape of one training batch as the network sees it."""
        m = self.config.model
        return (self.config.train.batch_size, m.in_channels, m.image_size, m.image_size)

    def frozen_autoencoder(self) -> rundir.LoadedAutoencoder | None:
        """A latent run's autoencoder run (its network frozen, on the device; checked against the config),
        else None."""
        latent = self.config.latent
        if latent is None:
            return None
        loaded = rundir.load_autoencoder(latent.autoencoder, self.config)
        loaded.network.to(self.device)
        return loaded

    def make_batches(self) -> BatchSource:
        """Where each step's batch comes from: the held tiles (augmented), or for a latent run their cached
        latents (:func:`diffsat.training.batches.latent_batches`)."""
        if self.autoencoder is None:
            return PixelBatches(self.dataset.tiles.to(self.device), self.config.data)
        return latent_batches(self.autoencoder.network, self.dataset, self.config, self.run_dir, self.dist)

    def setup_objective(self) -> None:
        """The noise schedule and the diffusion loss."""
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.loss_fn = DiffusionLoss.from_config(self.config.diffusion, self.schedule)

    def make_evaluator(self) -> TrainingEvaluator | None:
        return make_training_evaluator(self.config, self.dataset)

    def extra_state(self) -> dict[str, object]:
        """Train-state entries beyond step, time, EMA count and optimiser (saved with every checkpoint)."""
        return {}

    def load_extra_state(self, state: dict[str, object]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def sampling_network(self, network: torch.nn.Module) -> torch.nn.Module:
        """What :func:`diffsat.sampling.generate` samples: the U-Net, or for a latent run the U-Net with the
        autoencoder that decodes its latents."""
        return network if self.autoencoder is None else self.autoencoder.latent_net(network)

    def _resolve_bf16(self) -> bool:
        """``train.precision`` as a yes/no for bf16 autocast; ``auto`` times this model's training step
        (:func:`diffsat.precision.auto_bf16`), and under torchrun takes bf16 only when every rank chose it."""
        tc = self.config.train
        if tc.precision != "auto":
            return tc.precision == "bf16"
        timer = training_timer(self.model, self.input_shape(), self.device, tc.channels_last,
                               loss=lambda: self._loss(self.model, torch.Generator()))
        choice = auto_bf16(self.model, self.input_shape(), self.device, channels_last=tc.channels_last, training=True,
                           timer=timer, announce=print if self.dist.is_main else None)
        return self.dist.all_true(choice)

    @property
    def global_batch(self) -> int:
        return self.config.train.batch_size * self.dist.world_size

    def _start_afresh(self) -> None:
        """Refuse a run directory that holds checkpoints (every rank); rank 0 clears leftovers of killed saves."""
        rundir.check_fresh_start(self.run_dir)
        if self.dist.is_main:
            rundir.remove_uncommitted(self.run_dir)

    def _tidy_for_resume(self, found: rundir.Checkpoint) -> None:
        """Rank 0: remove leftovers of killed saves, set aside newer checkpoints that did not read, export the
        resumed weights, and say in one line where training resumes."""
        removed = rundir.remove_uncommitted(self.run_dir)
        set_aside = rundir.set_aside_newer(self.run_dir, found)
        rundir.export_weights(self.run_dir, found)
        notes = [f"removed {len(removed)} leftover(s) of an interrupted save"] if removed else []
        notes += [f"set aside the unreadable {p}" for p in set_aside]
        print("; ".join([f"resuming {self.run_dir} from step {found.step} ({found.folder})", *notes]), flush=True)

    def _resume(self) -> None:
        """Load the newest readable checkpoint: rank 0 chooses it, the other ranks load the same step."""
        found, error = None, None
        if self.dist.is_main:
            try:
                found = rundir.resume_checkpoint(self.run_dir)
                self._tidy_for_resume(found.checkpoint)
            except DiffsatError as err:
                error = err
        step = self.dist.broadcast_from_main(found.checkpoint.step if found is not None else -1)
        if error is not None:
            raise error
        if step < 0:
            raise CheckpointError(f"{self.run_dir}: rank 0 found no checkpoint to resume from (its message says why)")
        if found is None:
            found = rundir.resume_checkpoint(self.run_dir, step)
        for module, weights, name in ((self.model, found.model, rundir.MODEL_FILE),
                                      (self.ema.model, found.ema, rundir.EMA_FILE)):
            rundir.load_state_into(module, weights, str(found.checkpoint.file(name)))
        state = found.state
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed_s, self.ema.updates = state["step"], state["elapsed_s"], state["ema_updates"]
        self.load_extra_state(state)
        self.saved_step = self.step

    def save(self, wait: bool = True) -> None:
        """Commit a checkpoint of the current step (model, EMA, optimiser and train state), unless this step
        is saved already. Rank 0 writes it (every rank holds the same weights); with ``wait`` every rank
        waits for the commit, so all stop when rank 0 could not write it (a collective then)."""
        if self.saved_step == self.step:
            return
        error = None
        if self.dist.is_main:
            state = {
                "step": self.step,
                "elapsed_s": self.elapsed_s,
                "ema_updates": self.ema.updates,
                "optimizer": self.optimizer.state_dict(),
                **self.extra_state(),
            }
            try:
                rundir.save_checkpoint(self.run_dir, self.model, self.ema.model, state,
                                       keep=self.config.train.keep_checkpoints)
            except CheckpointError as err:
                error = err
        committed = self.dist.all_true(error is None) if wait else error is None
        if error is not None:
            raise error
        if not committed:
            raise CheckpointError(f"rank 0 could not write the checkpoint of step {self.step} (its message says "
                                  f"why); training stopped")
        self.saved_step = self.step

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's images of the current step, cropped and augmented: (B, C, S, S) float32 in [-1, 1],
        and for a class-conditional model their labels (B,) int64, a ``train.label_dropout`` fraction of them
        replaced by the "no class" label (drawn for the global batch, so ranks split one draw); else None."""
        tc = self.config.train
        global_idx = batch_indices(len(self.dataset), self.global_batch, self.step, tc.seed)
        idx = self.dist.shard(global_idx)
        generator = torch.Generator().manual_seed(step_seed(tc.seed, self.step) ^ 1)
        x = self.batches(idx.to(self.device), generator, (self.dist.rank, self.dist.world_size))
        x = x.contiguous(memory_format=torch.channels_last) if tc.channels_last else x
        if self.labels is None:
            return x, None
        drop_generator = torch.Generator().manual_seed(step_seed(tc.seed, self.step) ^ 2)
        dropped = torch.rand(len(global_idx), generator=drop_generator) < tc.label_dropout
        labels = torch.where(dropped, self.num_classes, self.labels[global_idx])
        return x, self.dist.shard(labels).to(self.device)

    def _loss(self, net: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
        """The diffusion loss of ``net`` on the current step's batch (labels bound for conditional models)."""
        x, labels = self.next_batch()
        prediction = net if labels is None else functools.partial(net, labels=labels)
        return self.loss_fn(prediction, x, generator, shard=(self.dist.rank, self.dist.world_size))["loss"]

    def forward_loss(self) -> torch.Tensor:
        """The loss of the current step's batch (forward pass only; all draws seeded by (seed, step))."""
        tc = self.config.train
        seed = step_seed(tc.seed, self.step)
        torch.manual_seed(seed)  # dropout draws from the global generator
        generator = torch.Generator().manual_seed(seed)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._loss(self.net, generator)

    def measure_flops(self) -> float:
        """FLOP per training image of one step (forward + backward), counted once; gradients are discarded."""
        flops = train_step_flops(lambda: self._loss(self.model, torch.Generator()))
        self.optimizer.zero_grad(set_to_none=True)
        self.flops_per_image = flops / self.config.train.batch_size
        return self.flops_per_image

    def train_step(self) -> tuple[float, float]:
        """One optimiser step; returns (this rank's loss, gradient norm before clipping)."""
        tc = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, tc)
        loss = self.forward_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.item(), grad_norm.item()

    def ema_samples(self, n: int) -> torch.Tensor:
        """``n`` images from the EMA weights with the fixed grid seed: (n, C, S, S) in [-1, 1]."""
        tc = self.config.train
        settings = SampleSettings(steps=tc.sample_steps, bf16=self.bf16, device=str(self.device))
        return generate(self.sampling_network(self.ema.model), self.config, n, seed=GRID_SEED, settings=settings,
                        progress=False)

    def sample_grid(self, path: Path, n: int = 9) -> None:
        """A grid of ``n`` EMA samples (fixed seed, so grids over time are comparable)."""
        images = self.ema_samples(n)
        save_grid(images, path, scale=grid_scale(self.config.data.image_size))
        if self.tensorboard is not None:
            self.tensorboard.images(self.step, images)

    def log(self, row: dict[str, float]) -> None:
        """One row to metrics.csv (and TensorBoard when on)."""
        self.metrics.write(row)
        if self.tensorboard is not None:
            self.tensorboard.scalars(row["step"], row)

    def evaluate(self) -> dict[str, float]:
        """Sample-quality numbers of ``train.eval_samples`` EMA samples (see ``evaluation.during_training``)."""
        if self.evaluator is None:
            return {}
        return self.evaluator(self.ema_samples(self.config.train.eval_samples))

    def _periodic(self, grad_norm: float, log: "_LogWindow", bar: tqdm) -> None:
        """Logging, sample grids and evaluation due after the step just taken (rank 0)."""
        tc = self.config.train
        if self.step % tc.log_every == 0:
            lr = self.optimizer.param_groups[0]["lr"]
            row = log.row(self.step, lr, grad_norm, self.elapsed_s, self.flops_per_image)
            self.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
        if tc.eval_every and self.step % tc.eval_every == 0 and self.evaluator is not None:
            self.log({"step": self.step, **self.evaluate()})
        if self.step % tc.sample_every == 0:
            self.sample_grid(rundir.grid_path(self.run_dir, self.step))

    def run(self, progress: bool = True) -> TrainResult:
        """Train until ``max_steps`` or ``time_limit_minutes`` of step time (with a latent run's encoding);
        save, plot, and return a summary.

        Ctrl-C saves a checkpoint before stopping, so ``--resume`` continues from the last step taken.
        """
        tc, main = self.config.train, self.dist.is_main
        wall_start = time.perf_counter()
        limit_s = tc.time_limit_minutes * 60 if tc.time_limit_minutes else math.inf
        stopped_by, losses = "max_steps", []
        self.measure_flops()
        log = _LogWindow(self.global_batch, self.step)
        bar = tqdm(total=tc.max_steps, initial=self.step, desc="training", unit="step", disable=not (progress and main))
        try:
            while self.step < tc.max_steps:
                if not self.dist.all_true(self.elapsed_s < limit_s):
                    stopped_by = "time_limit"
                    break
                t0 = time.perf_counter()
                loss, grad_norm = self.train_step()
                self.elapsed_s += time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {loss} at step {self.step}: lower train.lr or set train.grad_clip "
                        f"(the last checkpoint in {self.run_dir} is intact)"
                    )
                losses.append(loss)
                log.add(loss)
                bar.update(1)
                if main:
                    self._periodic(grad_norm, log, bar)
                if self.step % tc.save_every == 0:
                    self.save()
        except KeyboardInterrupt:
            self.save(wait=False)  # ranks may be interrupted at different points: no collective here
            raise
        finally:
            bar.close()
        self.save()
        if main:
            self.finish()
        self.dist.barrier()
        last = losses[-1] if losses else math.nan
        return TrainResult(self.run_dir, self.step, self.elapsed_s, time.perf_counter() - wall_start, last,
                           stopped_by, losses, self.dist.is_main)

    def finish(self) -> None:
        """Final evaluation and sample grid, then the ``on_finish`` hooks (e.g. curves, the HTML report)."""
        if self.evaluator is not None and self.step % self.config.train.eval_every != 0:
            self.log({"step": self.step, **self.evaluate()})
        self.sample_grid(rundir.grid_path(self.run_dir))
        for hook in self.on_finish:
            hook(self.run_dir)
        if self.tensorboard is not None:
            self.tensorboard.close()


class _LogWindow:
    """Losses and timing since the last log row."""

    def __init__(self, global_batch: int, step: int) -> None:
        self.global_batch, self.losses = global_batch, []
        self.tick, self.tick_step = time.perf_counter(), step

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def row(self, step: int, lr: float, grad_norm: float, elapsed_s: float, flops_per_image: float) -> dict:
        now = time.perf_counter()
        ips = (step - self.tick_step) * self.global_batch / max(now - self.tick, 1e-9)
        row = {"step": step, "loss": sum(self.losses) / max(1, len(self.losses)), "lr": lr, "grad_norm": grad_norm,
               "images_per_s": ips, "gflops": ips * flops_per_image / 1e9, "elapsed_s": elapsed_s}
        self.losses, self.tick, self.tick_step = [], now, step
        return row


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          on_finish: Sequence[FinishHook] = (), trainer: type[Trainer] = Trainer) -> TrainResult:
    """Train ``config`` into ``run_dir`` (resuming from its checkpoint when ``resume``); under torchrun each
    process calls this and they train together. ``on_finish``: called with the run directory by rank 0
    after the final checkpoint and sample grid (the CLI draws the curves and writes the report).
    ``trainer``: the trainer class (an autoencoder run: :class:`diffsat.autoencoder.trainer.AutoencoderTrainer`)."""
    dist = setup(config.train.device)
    try:
        return trainer(config, run_dir, resume=resume, dist=dist, on_finish=on_finish).run(progress=progress)
    finally:
        teardown(dist)
