"""Training a change head as a task of the one :class:`~diffsat.training.trainer.Trainer`: seeded crops of
cached samples, cross-entropy, a CPU-time budget, the best weights by validation change-F1, crash-consistent
checkpoints and exact resume.

A method's run directory is a run directory like any other (:mod:`diffsat.rundir`): ``config.json``,
``checkpoints/step-N/`` (head weights, their copy as ``ema.safetensors``, the train state with the best
weights so far), the exported ``model.safetensors`` (the last weights), ``metrics.csv``, ``loss.png``, and
``best.safetensors`` (the best validation change-F1, written when training ends). Every draw of step ``s``
(which pairs, their crops and flips, dropout) comes from generators seeded by ``(seed, s)``, so a resumed run
takes exactly the steps an uninterrupted one would. Directories of the older layout (``model.safetensors``
and ``train_state.pt`` side by side) are read for prediction as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .. import rundir
from ..config import TrainConfig
from ..fileio import atomic_write
from ..seeding import batch_indices, step_generator
from ..training.task import Nets, TaskContext, TaskDefaults, Terms
from ..training.trainer import Trainer
from .config import CDTrainConfig
from .metrics import Accumulator
from .methods import Method, Sample, aligned
from .pairs import IGNORE, Pair, apply_crop, draw_crop
from .predict import ConfusionOutput, predict


@dataclass
class TrainSummary:
    step: int
    cpu_s: float
    best_f1: float
    best_step: int
    stopped_by: str


def loop_settings(tc: CDTrainConfig) -> TrainConfig:
    """The trainer's settings of a head run: constant learning rate, no warm-up, clipping or moving average
    (the EMA copy equals the weights), fp32, the budget in process CPU time."""
    return TrainConfig(batch_size=tc.batch_size, lr=tc.lr, weight_decay=tc.weight_decay, warmup_steps=0,
                       max_steps=tc.max_steps, time_limit_minutes=tc.cpu_minutes, time_limit_clock="cpu",
                       ema_decay=0.0, grad_clip=None, precision="fp32", device=tc.device, threads=tc.threads,
                       log_every=tc.log_every, eval_every=tc.eval_every, save_every=tc.save_every,
                       seed=tc.seed)


def save_head(weights: dict[str, torch.Tensor], path: Path, meta: dict[str, str] | None = None) -> None:
    """Head ``weights`` to ``path`` as safetensors (with string metadata ``meta``), atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))


def validation_f1(method: Method, pairs: list[Pair]) -> float:
    """Change-F1 of ``method`` over ``pairs`` (one confusion matrix; nodata pixels left out)."""
    acc = Accumulator()
    for pair in pairs:
        counts = ConfusionOutput(pair.label)
        predict(method, pair, pair.size, method.cfg.data, counts)
        acc.add_counts(pair.name, counts.cm)
    return acc.result()["f1"]


class HeadTask(TaskDefaults):
    """Trains ``method.net`` on ``train_pairs``; the best weights by change-F1 on ``val_pairs`` are kept."""

    def __init__(self, method: Method, train_pairs: list[Pair], val_pairs: list[Pair], progress: bool = True) -> None:
        self.method, self.val_pairs, self.cfg, self.progress = method, val_pairs, method.cfg, progress
        self.name = f"{method.name}: training"
        self.train_pairs = [aligned(p, method.align) for p in train_pairs]
        tc = self.cfg.train
        self.weight = None if tc.change_weight is None else torch.tensor([1.0, tc.change_weight], device=method.device)
        self.best_f1, self.best_step, self.best_weights = -1.0, -1, None

    def setup(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        m = self.method
        self.samples = [m.sample(p) for p in tqdm(self.train_pairs, desc=f"{m.name}: samples", disable=not self.progress)]
        self.labels = [torch.from_numpy(p.label).long() for p in self.train_pairs]

    def build_network(self) -> nn.Module:
        return self.method.net  # seeded when the method was built

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.cfg.data.crop_size, self.cfg.data.crop_size)

    def batch(self, step: int) -> tuple[Sample, torch.Tensor]:
        """The step's crops: each key ``(B, C, S/f, S/f)``, labels ``(B, S, S)`` int64."""
        tc, m = self.cfg.train, self.method
        idx = batch_indices(len(self.samples), tc.batch_size, step, tc.seed).tolist()
        gen = step_generator(tc.seed, step, 3)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in m.factors}
        labels = []
        for i in idx:
            h, w = self.labels[i].shape
            crop = draw_crop(h, w, self.cfg.data, gen, align=m.align)
            for key, factor in m.factors.items():
                parts[key].append(apply_crop(self.samples[i][key], crop, factor))
            labels.append(apply_crop(self.labels[i], crop))
        return {k: torch.stack(v).to(m.device) for k, v in parts.items()}, torch.stack(labels).to(m.device)

    def loss(self, net: nn.Module, batch: tuple[Sample, torch.Tensor], generator: torch.Generator
             ) -> tuple[torch.Tensor, Terms]:
        sample, labels = batch
        return F.cross_entropy(self.method.logits(sample, net), labels, weight=self.weight, ignore_index=IGNORE), {}

    def evaluate(self, nets: Nets) -> dict[str, float]:
        """Validation change-F1 of the weights; the best are kept (in the train state, and at the end in
        ``best.safetensors``)."""
        if not self.val_pairs:
            return {}
        f1 = validation_f1(self.method, self.val_pairs)
        if f1 > self.best_f1:
            self.best_f1, self.best_step = f1, nets.step
            self.best_weights = {k: v.detach().clone().cpu() for k, v in nets.model.state_dict().items()}
        return {"val_f1": f1}

    def extra_state(self) -> dict[str, Any]:
        return {"best_f1": self.best_f1, "best_step": self.best_step, "best_weights": self.best_weights}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.best_f1, self.best_step, self.best_weights = state["best_f1"], state["best_step"], state["best_weights"]

    def finish(self, nets: Nets) -> None:
        """``best.safetensors``: the best validation weights, or the last ones when nothing was validated."""
        weights, step = self.best_weights, self.best_step
        if weights is None:
            weights, step = nets.model.state_dict(), nets.step
        meta = {"step": str(step), "val_f1": repr(self.best_f1), "method": self.method.name}
        save_head(weights, rundir.run_file(self.ctx.run_dir, rundir.BEST_FILE), meta)


def train_head(method: Method, run_dir: Path, train_pairs: list[Pair], val_pairs: list[Pair], resume: bool = False,
               progress: bool = True) -> TrainSummary:
    """Train ``method.net`` into ``run_dir`` (``resume``: from its newest checkpoint) to ``train.max_steps`` or
    ``train.cpu_minutes``; returns a summary."""
    task = HeadTask(method, train_pairs, val_pairs, progress)
    trainer = Trainer(task, run_dir, loop_settings(method.cfg.train), resume=resume)
    result = trainer.run(progress=progress)
    stopped_by = "cpu_minutes" if result.stopped_by == "time_limit" else result.stopped_by
    return TrainSummary(result.step, result.elapsed_s, task.best_f1, task.best_step, stopped_by)


def load_head(net: nn.Module, path: Path) -> None:
    """Head weights from a safetensors file (keys and shapes checked)."""
    rundir.load_state_into(net, rundir.read_safetensors(path), str(path))


def load_best(method: Method, run_dir: Path, last: bool = False) -> None:
    """Load the run's best (or ``last``) head weights into ``method.net``."""
    load_head(method.net, rundir.run_file(run_dir, rundir.MODEL_FILE if last else rundir.BEST_FILE))
