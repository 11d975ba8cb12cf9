"""The in-memory image dataset type, the data error, and ``load_dataset`` (dispatch on ``data.kind``).

Every loader returns an :class:`ImageDataset`. Its ``tiles`` are what is held in memory: a contiguous,
square ``(N, C, S, S)`` tensor, uint8 in ``[0, 255]`` (image folders, LEVIR-CD: a quarter of the memory of
float32) or float32 in ``[-1, 1]`` (MNIST), at ``S = data.load_size`` (default ``data.image_size``, or the
stored tile size with ``data.random_crop``). ``images`` is the same data as float32 in ``[-1, 1]``.
Training batches are cut to ``data.image_size`` and brought to float32 by
:func:`diffsat.data.transforms.augment`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffsat.config import DataConfig
from diffsat.data.transforms import crop, to_model_range
from diffsat.errors import DiffsatError


class DataError(DiffsatError):
    """Data that cannot be loaded; the message is one line naming the file/folder and the fix."""


class ImageDataset:
    """A whole dataset held in memory.

    ``tiles``: ``(N, C, S, S)``, contiguous, uint8 in ``[0, 255]`` or float32 in ``[-1, 1]``, as given to
    the constructor (argument ``images``). ``S`` may exceed ``data.image_size`` (random crops): index
    ``tiles`` and pass the batch to :func:`diffsat.data.transforms.augment` to get training images.
    ``images``: the tiles as float32 ``(N, C, S, S)`` in ``[-1, 1]`` (the tiles themselves when float32;
    for uint8 tiles a converted copy, made on first use and kept).
    ``labels``: ``(N,)`` int64 class indices, or ``None`` when the source has no classes.
    ``source``: human-readable description of where the images came from (logged into run directories).
    ``class_names``: optional names of the label indices (``class_names[label]``), or ``None``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        source: str,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        x = images
        if x.ndim != 4 or x.dtype not in (torch.float32, torch.uint8) or x.shape[-1] != x.shape[-2]:
            raise DataError(
                f"{source}: images must be a square (N, C, H, W) float32 or uint8 tensor, "
                f"got {tuple(x.shape)} {x.dtype}"
            )
        if labels is not None:
            labels = labels.to(torch.int64).contiguous()
            if labels.shape != (x.shape[0],):
                raise DataError(
                    f"{source}: labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}"
                )
        self.tiles = x.contiguous()
        self.labels = labels
        self.source = source
        self.class_names = class_names
        self._float: torch.Tensor | None = None

    @property
    def images(self) -> torch.Tensor:
        """The tiles as float32 ``(N, C, S, S)`` in ``[-1, 1]``."""
        if self._float is None:
            self._float = to_model_range(self.tiles)
        return self._float

    def model_view(self, cfg: DataConfig, seed: int = 0) -> torch.Tensor:
        """The images at the model's size, cut as training cuts them, without flips or rotations.

        Returns float32 ``(N, C, cfg.image_size, cfg.image_size)`` in ``[-1, 1]``: with ``cfg.random_crop``
        one random window per image drawn from ``seed`` (so the same set every call), else the centre
        window. Use it for real images in evaluation (e.g. SWD against held-out tiles) so that they have
        the scale the model was trained at.
        """
        generator = torch.Generator().manual_seed(seed) if cfg.random_crop else None
        return to_model_range(crop(self.tiles, cfg.image_size, generator)).contiguous()

    @property
    def resolution(self) -> int:
        """Side ``S`` of the held tiles in pixels (training crops may be smaller: ``data.image_size``)."""
        return int(self.tiles.shape[-1])

    @property
    def channels(self) -> int:
        """Number of channels ``C`` (1 grey, 3 RGB)."""
        return int(self.tiles.shape[1])

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    def __repr__(self) -> str:
        labels = "None" if self.labels is None else f"int64 ({len(self.labels)},)"
        dtype = str(self.tiles.dtype).removeprefix("torch.")
        return (
            f"ImageDataset(n={len(self)}, channels={self.channels}, resolution={self.resolution}, "
            f"tiles={dtype}, labels={labels}, source={self.source!r})"
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
    from diffsat.data.levir import load_levir
    from diffsat.data.mnist import load_mnist_dataset

    return {"mnist": load_mnist_dataset, "folder": load_image_folder, "levir": load_levir}


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Load the dataset described by ``cfg`` (the ``data`` config section) into memory.

    Returns an :class:`ImageDataset` with ``images`` ``(N, cfg.channels, S, S)`` (uint8 or float32, see the
    module docstring), ``S = cfg.load_size`` or its default. Cropping to ``cfg.image_size`` and augmentation
    happen per batch in :func:`diffsat.data.transforms.augment`.
    """
    loaders = _loaders()
    try:
        loader = loaders[cfg.kind]
    except KeyError:
        raise DataError(f"data.kind '{cfg.kind}': unknown kind (one of {', '.join(loaders)})") from None
    return loader(cfg)
