"""The in-memory image dataset type, the data error, and ``load_dataset`` (dispatch on ``data.kind``).

Every loader returns an :class:`ImageDataset` whose ``images`` are a contiguous ``(N, C, H, W)`` float32
tensor in ``[-1, 1]`` (square, ``H == W``) and whose ``labels`` are an ``(N,)`` int64 tensor or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffsat.config import DataConfig
from diffsat.errors import DiffsatError


class DataError(DiffsatError):
    """Data that cannot be loaded; the message is one line naming the file/folder and the fix."""


@dataclass(repr=False)
class ImageDataset:
    """A whole dataset held in memory.

    ``images``: ``(N, C, H, W)`` float32 in ``[-1, 1]``, contiguous, ``H == W``.
    ``labels``: ``(N,)`` int64 class indices, or ``None`` when the source has no classes.
    ``source``: human-readable description of where the images came from (logged into run directories).
    ``class_names``: optional names of the label indices (``class_names[label]``), or ``None``.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    source: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x = self.images
        if x.ndim != 4 or x.dtype != torch.float32 or x.shape[-1] != x.shape[-2]:
            raise DataError(
                f"{self.source}: images must be a square (N, C, H, W) float32 tensor, "
                f"got {tuple(x.shape)} {x.dtype}"
            )
        self.images = x.contiguous()
        if self.labels is not None:
            self.labels = self.labels.to(torch.int64).contiguous()
            if self.labels.shape != (x.shape[0],):
                raise DataError(
                    f"{self.source}: labels must have shape ({x.shape[0]},), got {tuple(self.labels.shape)}"
                )

    @property
    def resolution(self) -> int:
        """Side length ``H == W`` in pixels."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """Number of channels ``C`` (1 grey, 3 RGB)."""
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        labels = "None" if self.labels is None else f"int64 ({len(self.labels)},)"
        return (
            f"ImageDataset(n={len(self)}, channels={self.channels}, resolution={self.resolution}, "
            f"labels={labels}, source={self.source!r})"
        )


class _NoBar:
    """Stand-in for a tqdm bar when tqdm is missing or the bar is not wanted."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Any:
    """A tqdm bar (context manager with ``update(n)``) when tqdm is importable and ``enabled``, else a no-op.

    The bar is hidden automatically when stderr is not a terminal (``disable=None``).
    """
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _NoBar()
        scale = unit == "B"
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, disable=None, leave=False)
    return _NoBar()


def _loaders() -> dict[str, Callable[[DataConfig], ImageDataset]]:
    # Imported here: the loader modules import DataError/ImageDataset from this module.
    from diffsat.data.folder import load_image_folder
    from diffsat.data.mnist import load_mnist_dataset

    return {"mnist": load_mnist_dataset, "folder": load_image_folder}


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Load the dataset described by ``cfg`` (the ``data`` config section) into memory.

    Returns an :class:`ImageDataset` with ``images`` ``(N, cfg.channels, cfg.image_size, cfg.image_size)``
    float32 in ``[-1, 1]``. Augmentation is not applied here (see :func:`diffsat.data.transforms.augment`).
    """
    loaders = _loaders()
    try:
        loader = loaders[cfg.kind]
    except KeyError:
        raise DataError(f"data.kind '{cfg.kind}': unknown kind (one of {', '.join(loaders)})") from None
    return loader(cfg)
