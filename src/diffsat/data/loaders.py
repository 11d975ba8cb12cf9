"""The loader registry: ``data.kind`` -> the function that loads that kind of data into memory."""

from __future__ import annotations

from collections.abc import Callable

from diffsat.config import DataConfig
from diffsat.data.dataset import DataError, ImageDataset
from diffsat.data.folder import load_image_folder
from diffsat.data.levir import load_levir
from diffsat.data.mnist import load_mnist_dataset
from diffsat.data.rasters import load_raster_tiles

LOADERS: dict[str, Callable[[DataConfig], ImageDataset]] = {
    "mnist": load_mnist_dataset,
    "folder": load_image_folder,
    "levir": load_levir,
    "rasters": load_raster_tiles,
}


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Load the dataset described by ``cfg`` (the ``data`` config section) into memory.

    Returns an :class:`ImageDataset` with ``tiles`` ``(N, cfg.channels, S, S)`` (uint8 or float32, see
    :mod:`diffsat.data.dataset`), ``S = cfg.load_size`` or its default. Cropping to ``cfg.image_size`` and
    augmentation happen per batch in :func:`diffsat.data.transforms.augment`.
    """
    try:
        loader = LOADERS[cfg.kind]
    except KeyError:
        raise DataError(f"data.kind '{cfg.kind}': unknown kind (one of {', '.join(LOADERS)})") from None
    return loader(cfg)
