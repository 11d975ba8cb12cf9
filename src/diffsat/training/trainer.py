"""The one training loop: a :class:`Trainer` runs any :class:`~diffsat.training.task.Task`.

The trainer owns what never varies between tasks: seeding, AdamW and the learning-rate schedule, EMA, the
precision decision (it times the task's own loss once), crash-consistent checkpoints and exact resume
(:mod:`diffsat.rundir`), time limits (wall clock or process CPU time), metrics.csv and TensorBoard, DDP under
torchrun and Ctrl-C. Every random draw of step ``s`` comes from generators seeded by ``(seed, s)`` alone, so
the step after ``--resume`` is bit for bit the step an uninterrupted run would take. Under torchrun each rank
takes its slice of the same global draws, so N ranks with batch B train like one process with batch N x B
(exactly so without dropout, whose masks are drawn per rank).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import rundir
from ..config import AutoencoderRunConfig, Config, TrainConfig, save_config
from ..errors import CheckpointError, DiffsatError, TrainingDivergedError
from ..precision import autocast, resolve_precision, training_timer
from ..rundir import MetricsLog
from ..seeding import step_seed
from .distributed import DistContext, setup
from .ema import EMA
from .task import Nets, Task, TaskContext
from .tensorboard import TensorBoardLog
from .throughput import train_step_flops

FinishHook = Callable[[Path], object]
"""Called with the run directory when training ends (rank 0), e.g. :func:`diffsat.plots.plot_training`."""


def budget_step(step: int, tc: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Where the learning-rate schedule of ``step`` is, in steps: ``step``; with ``lr_over: budget`` and a time
    limit that is further spent (``elapsed_s`` of its ``time_limit_minutes``), that fraction of ``max_steps``."""
    if tc.lr_over == "steps" or not tc.time_limit_minutes:
        return float(step)
    return max(float(step), elapsed_s / (tc.time_limit_minutes * 60) * tc.max_steps)


def lr_at(step: int, tc: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Learning rate of ``step`` (0-based) after ``elapsed_s`` seconds of training: linear warm-up over
    ``warmup_steps``, then constant, a cosine decay reaching 0 at the end of the budget, or constant and a
    cosine decay over the budget's last ``lr_decay_fraction`` (``lr_schedule``: ``wsd``).
    With ``lr_over: budget`` the schedule runs over the fraction of the budget spent (:func:`budget_step`:
    steps or time, whichever is further), so a run that its time limit stops has annealed. It depends on the
    step and on the training time saved with every checkpoint, so a resumed run continues exactly."""
    at = budget_step(step, tc, elapsed_s)
    warm = min(1.0, (at + 1) / max(1, tc.warmup_steps))
    if tc.lr_schedule == "constant" or at < tc.warmup_steps:
        return tc.lr * warm
    start = tc.warmup_steps if tc.lr_schedule == "cosine" else tc.max_steps * (1.0 - tc.lr_decay_fraction)
    progress = max(0.0, at - start) / max(1.0, tc.max_steps - start)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed_s: float  # what train.time_limit_minutes counts: training steps and batch preparation
    wall_s: float  # the whole call: steps, previews, evaluation, checkpoints
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


def _clock(tc: TrainConfig) -> Callable[[], float]:
    """What the time limit counts: wall-clock seconds or this process's CPU seconds (all threads)."""
    return time.process_time if tc.time_limit_clock == "cpu" else time.perf_counter


class Trainer:
    """Trains ``task`` into ``run_dir`` with ``train`` (the loop's settings); one rank of a torchrun run.

    ``run_config``: the config written to the run's ``config.json`` (rank 0; None: the caller writes its own).
    ``on_finish``: hooks called with the run directory by rank 0 after the final checkpoint and preview.
    """

    def __init__(self, task: Task, run_dir: str | Path, train: TrainConfig, *, resume: bool = False,
                 dist: DistContext | None = None, run_config: Config | AutoencoderRunConfig | None = None,
                 on_finish: Sequence[FinishHook] = ()) -> None:
        self.task, self.run_dir, self.tc, self.on_finish = task, Path(run_dir), train, tuple(on_finish)
        self.dist = dist or setup(train.device)
        self.device = self.dist.device
        if train.threads is not None:
            torch.set_num_threads(train.threads)
        task.setup(TaskContext(self.run_dir, self.device, self.dist, train.seed, train.precision))
        torch.manual_seed(train.seed)
        self.model = task.build_network().to(self.device)
        if train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, train.ema_decay)
        # fused: one kernel for all parameters instead of a loop over them
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                                           fused=True)
        self.step, self.elapsed_s, self.flops_per_image = 0, 0.0, 0.0
        self.last_terms: dict[str, float] = {}  # the last step's logged loss terms
        self.bf16 = self._resolve_precision()
        self.saved_step: int | None = None  # the step of the last checkpoint committed or resumed from
        if resume:
            self._resume()
        else:
            self._start_afresh()
        self.elapsed_s += task.setup_s  # e.g. a latent run's encoding counts towards its time limit
        net = DistributedDataParallel(self.model) if self.dist.distributed else self.model
        self.net = compiled_for_training(net, self.device) if train.compile else net
        self.metrics: MetricsLog | None = None
        self.tensorboard: TensorBoardLog | None = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if run_config is not None:
                save_config(task.run_config(run_config), rundir.run_file(self.run_dir, rundir.CONFIG_FILE))
            self.metrics = MetricsLog(rundir.run_file(self.run_dir, rundir.METRICS_FILE), self.step if resume else None)
            if train.tensorboard:
                self.tensorboard = TensorBoardLog(rundir.run_file(self.run_dir, rundir.TENSORBOARD_DIR))

    @property
    def nets(self) -> Nets:
        return Nets(self.model, self.ema.model, self.step, self.bf16)

    @property
    def global_batch(self) -> int:
        return self.tc.batch_size * self.dist.world_size

    def _timing_loss(self) -> torch.Tensor:
        """The task's loss on the current step's batch, for timings and the FLOP count: in eval mode, so that
        no running statistics (BatchNorm) move, and with a generator of its own, so that a measurement leaves
        training's state and draws alone (:meth:`forward_loss` sets train mode again)."""
        self.model.eval()
        return self.task.loss(self.model, self.task.batch(self.step), torch.Generator())[0]

    def _resolve_precision(self) -> bool:
        """``train.precision`` as a yes/no for bf16 autocast; ``auto`` times the task's loss (forward and
        backward), and under torchrun takes bf16 only when every rank chose it."""
        tc = self.tc
        shape = self.task.input_shape(tc.batch_size)
        timer = training_timer(self.model, shape, self.device, tc.channels_last, loss=self._timing_loss)
        choice = resolve_precision(tc.precision, self.model, shape, self.device, training=True, timer=timer,
                                   channels_last=tc.channels_last, announce=print if self.dist.is_main else None)
        return self.dist.all_true(choice)

    # ---- checkpoints

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
        self.task.load_extra_state(state)
        self.saved_step = self.step

    def save(self, wait: bool = True) -> None:
        """Commit a checkpoint of the current step (model, EMA, optimiser, train state and the task's extra
        state), unless this step is saved already. Rank 0 writes it (every rank holds the same weights); with
        ``wait`` every rank waits for the commit, so all stop when rank 0 could not write it (a collective)."""
        if self.saved_step == self.step:
            return
        error = None
        if self.dist.is_main:
            self.task.before_save(self.nets)
            state = {"step": self.step, "elapsed_s": self.elapsed_s, "ema_updates": self.ema.updates,
                     "optimizer": self.optimizer.state_dict(), **self.task.extra_state()}
            try:
                rundir.save_checkpoint(self.run_dir, self.model, self.ema.model, state, keep=self.tc.keep_checkpoints)
            except CheckpointError as err:
                error = err
        committed = self.dist.all_true(error is None) if wait else error is None
        if error is not None:
            raise error
        if not committed:
            raise CheckpointError(f"rank 0 could not write the checkpoint of step {self.step} (its message says "
                                  f"why); training stopped")
        self.saved_step = self.step

    # ---- steps

    def forward_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The task's loss of ``batch`` at the current step (forward pass only; draws seeded by (seed, step))."""
        seed = step_seed(self.tc.seed, self.step)
        torch.manual_seed(seed)  # dropout draws from the global generator
        generator = torch.Generator().manual_seed(seed)
        self.model.train()
        with autocast(self.device, self.bf16):
            return self.task.loss(self.net, batch, generator)

    def measure_flops(self) -> float:
        """FLOP per training item of one step (forward + backward), counted once; gradients are discarded."""
        flops = train_step_flops(self._timing_loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.flops_per_image = flops / self.tc.batch_size
        return self.flops_per_image

    def train_step(self) -> tuple[float, float]:
        """One optimiser step (and the task's extra steps); returns (this rank's loss, gradient norm before
        clipping). The step's logged loss terms are in :attr:`last_terms`."""
        tc = self.tc
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, tc, self.elapsed_s)
        batch = self.task.batch(self.step)
        loss, terms = self.forward_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.ema.update(self.model)
        logged = {name: float(value.detach()) for name, value in terms.items() if value.dim() == 0}
        logged.update(self.task.extra_step(self.step, batch, terms))
        self.last_terms = logged
        self.step += 1
        return loss.item(), grad_norm.item()

    # ---- logging, previews, evaluation

    def log(self, row: dict[str, float]) -> None:
        """One row to metrics.csv (and TensorBoard when on)."""
        self.metrics.write(row)
        if self.tensorboard is not None:
            self.tensorboard.scalars(row["step"], row)

    def preview(self, path: Path) -> None:
        images = self.task.preview(self.nets, path)
        if images is not None and self.tensorboard is not None:
            self.tensorboard.images(self.step, images)

    def evaluate(self) -> None:
        row = self.task.evaluate(self.nets)
        if row:
            self.log({"step": self.step, **row})

    def _periodic(self, grad_norm: float, log: "_LogWindow", bar: tqdm) -> None:
        """Logging, previews and evaluation due after the step just taken (rank 0)."""
        tc = self.tc
        if self.step % tc.log_every == 0:
            lr = self.optimizer.param_groups[0]["lr"]
            row = {**log.row(self.step, lr, grad_norm, self.elapsed_s, self.flops_per_image), **self.last_terms}
            self.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
        if tc.eval_every and self.step % tc.eval_every == 0:
            self.evaluate()
        if self.step % tc.sample_every == 0:
            self.preview(rundir.grid_path(self.run_dir, self.step))

    def run(self, progress: bool = True) -> TrainResult:
        """Train until ``max_steps`` or the time limit; save, finish, and return a summary.

        Ctrl-C saves a checkpoint before stopping, so ``--resume`` continues from the last step taken.
        """
        tc, main = self.tc, self.dist.is_main
        wall_start, clock = time.perf_counter(), _clock(tc)
        limit_s = tc.time_limit_minutes * 60 if tc.time_limit_minutes else math.inf
        stopped_by, losses = "max_steps", []
        self.measure_flops()
        log = _LogWindow(self.global_batch, self.step)
        bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.task.name, unit="step",
                   disable=not (progress and main))
        try:
            while self.step < tc.max_steps:
                if not self.dist.all_true(self.elapsed_s < limit_s):
                    stopped_by = "time_limit"
                    break
                t0 = clock()
                loss, grad_norm = self.train_step()
                self.elapsed_s += clock() - t0
                if not math.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {loss} at step {self.step}: lower train.lr or set train.grad_clip "
                        f"(the last checkpoint in {self.run_dir} is intact)")
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
                           stopped_by, losses, main)

    def finish(self) -> None:
        """The final evaluation and preview, the task's final outputs, then the ``on_finish`` hooks."""
        if self.tc.eval_every and self.step % self.tc.eval_every != 0:
            self.evaluate()
        self.preview(rundir.grid_path(self.run_dir))
        self.task.finish(self.nets)
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
