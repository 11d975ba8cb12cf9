"""Optional TensorBoard logging (``pip install "diffsat[tensorboard]"``, then ``train.tensorboard: true``).

Mirrors what goes to ``metrics.csv`` (loss, learning rate, gradient norm, images/s, GFLOP/s, evaluation
metrics) as scalars, and the periodic sample grids as images, under ``RUN_DIR/tensorboard``:
``tensorboard --logdir RUN_DIR/tensorboard``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import DiffsatError


def _summary_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DiffsatError(
            'train.tensorboard is true but the tensorboard package is missing: pip install "diffsat[tensorboard]" '
            "(or set train.tensorboard to false)"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardLog:
    """Scalars and image grids for one run; ``writer`` may be given (tests), else a SummaryWriter is made."""

    def __init__(self, log_dir: Path, writer: Any = None) -> None:
        self.writer = writer if writer is not None else _summary_writer(log_dir)

    def scalars(self, step: int, row: dict[str, float]) -> None:
        """Every finite number of a metrics row except the step, tagged ``train/<name>`` or ``eval/<name>``."""
        group = "train" if "loss" in row else "eval"
        for name, value in row.items():
            if name != "step" and value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(f"{group}/{name}", float(value), step)
        self.writer.flush()

    def images(self, step: int, images: torch.Tensor) -> None:
        """Sample images ``(N, C, H, W)`` in ``[-1, 1]`` as one tag ``samples`` (values mapped to [0, 1])."""
        self.writer.add_images("samples", (images.clamp(-1, 1) + 1) / 2, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
