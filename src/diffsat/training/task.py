"""What a training run trains, declared: the :class:`Task` protocol the one :class:`~diffsat.training.trainer.Trainer`
runs.

A task declares its network, its batches (with the seconds their preparation took), its loss
``loss(net, batch, generator) -> (loss, terms)``, and optionally an extra optimiser step (a discriminator),
what to do before a checkpoint is saved, a preview grid, evaluation, extra train state and what to write at
the end. The trainer owns what never varies: seeding, the optimiser and learning-rate schedule, EMA,
precision, checkpoints and exact resume, time limits, metrics.csv and TensorBoard, DDP and Ctrl-C.

Every draw a task makes for step ``s`` comes from generators seeded by ``(seed, s)``
(:mod:`diffsat.seeding`), so a resumed run takes the steps an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..precision import Precision
from .distributed import DistContext

Terms = dict[str, torch.Tensor]
"""What a loss returns beside the loss: 0-dim tensors are logged to metrics.csv under their names, other
entries (detached tensors) are handed to the task's :meth:`Task.extra_step` of the same step."""


@dataclass(frozen=True)
class TaskContext:
    """Where a task runs: its ``run_dir``, the ``device``, the process group ``dist``, the run's ``seed`` and
    ``precision`` setting (for work the task does itself, such as encoding its data)."""

    run_dir: Path
    device: torch.device
    dist: DistContext
    seed: int
    precision: Precision


@dataclass(frozen=True)
class Nets:
    """The trained network ``model`` and its moving average ``ema`` at ``step`` (steps taken); ``bf16``: the
    trainer's precision decision, for the task's own forward passes (previews, evaluation samples)."""

    model: nn.Module
    ema: nn.Module
    step: int
    bf16: bool = False


class Task(Protocol):
    """One kind of training: diffusion, an autoencoder, a change-detection head."""

    name: str
    """The progress bar's label."""
    setup_s: float
    """Seconds :meth:`setup` spent preparing the batches (a latent run's encoding); the time limit counts them."""

    def setup(self, ctx: TaskContext) -> None:
        """Read the data and prepare the batches (called once, before the network is built)."""

    def build_network(self) -> nn.Module:
        """The network trained (built after ``torch.manual_seed(seed)``)."""

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        """The shape of a batch of ``batch_size`` as the network sees it (the precision measurement's key)."""

    def batch(self, step: int) -> Any:
        """This rank's batch of ``step``, on the device."""

    def loss(self, net: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        """The scalar loss of ``net`` on ``batch`` (draws from ``generator``) and its :data:`Terms`."""

    def extra_step(self, step: int, batch: Any, terms: Terms) -> dict[str, float]:
        """After the optimiser step of ``step``: further optimiser steps (a discriminator); returns numbers to log."""

    def before_save(self, nets: Nets) -> None:
        """Called before every checkpoint (latent statistics into the weights)."""

    def preview(self, nets: Nets, path: Path) -> torch.Tensor | None:
        """Write the preview grid to ``path``; returns its images ``(N, C, H, W)`` in [-1, 1] (for TensorBoard),
        or None when the task has no preview."""

    def evaluate(self, nets: Nets) -> dict[str, float]:
        """Numbers to log (rank 0, every ``train.eval_every`` steps and at the end); empty: none."""

    def extra_state(self) -> dict[str, Any]:
        """Train-state entries of the task (saved with every checkpoint; tensors, numbers, strings)."""

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def finish(self, nets: Nets) -> None:
        """Write the task's final outputs into the run directory (rank 0)."""

    def run_config(self, config: Any) -> Any:
        """The config written to the run's ``config.json``: ``config`` with what setup resolved (e.g. a
        latent run's latent statistics)."""


class TaskDefaults:
    """No-op defaults of the optional parts of :class:`Task`, for tasks that declare fewer."""

    setup_s = 0.0

    def extra_step(self, step: int, batch: Any, terms: Terms) -> dict[str, float]:
        return {}

    def before_save(self, nets: Nets) -> None:
        return None

    def preview(self, nets: Nets, path: Path) -> torch.Tensor | None:
        return None

    def evaluate(self, nets: Nets) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def finish(self, nets: Nets) -> None:
        return None

    def run_config(self, config: Any) -> Any:
        return config
