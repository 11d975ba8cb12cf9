"""Training a run from its config: the task the config declares (diffusion, or an autoencoder for a config
with an ``autoencoder`` section), trained by the one :class:`~diffsat.training.trainer.Trainer`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import AutoencoderRunConfig, Config
from ..data import ImageDataset
from .autoencoder import AutoencoderTask
from .diffusion import DiffusionTask
from .distributed import DistContext, setup, teardown
from .task import Task
from .trainer import FinishHook, Trainer, TrainResult


def task_for(config: Config | AutoencoderRunConfig, dataset: ImageDataset | None = None) -> Task:
    """The task ``config`` declares, on ``dataset`` (default: the config's data, read at setup)."""
    if isinstance(config, AutoencoderRunConfig):
        return AutoencoderTask(config, dataset)
    return DiffusionTask(config, dataset)


def make_trainer(config: Config | AutoencoderRunConfig, run_dir: str | Path, resume: bool = False,
                 dataset: ImageDataset | None = None, dist: DistContext | None = None,
                 on_finish: Sequence[FinishHook] = ()) -> Trainer:
    """The :class:`Trainer` of ``config``'s task into ``run_dir`` (resuming from its checkpoint when ``resume``)."""
    return Trainer(task_for(config, dataset), run_dir, config.train, resume=resume, dist=dist, run_config=config,
                   on_finish=on_finish)


def train(config: Config | AutoencoderRunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          on_finish: Sequence[FinishHook] = ()) -> TrainResult:
    """Train ``config`` into ``run_dir`` (resuming from its checkpoint when ``resume``); under torchrun each
    process calls this and they train together. ``on_finish``: called with the run directory by rank 0 after
    the final checkpoint and preview (the CLI draws the curves and writes the report)."""
    dist = setup(config.train.device)
    try:
        return make_trainer(config, run_dir, resume=resume, dist=dist, on_finish=on_finish).run(progress=progress)
    finally:
        teardown(dist)
