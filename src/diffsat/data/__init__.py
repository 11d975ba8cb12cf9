"""Data loading: MNIST (idx files, PNG folders, bundled offline subset) and generic image folders.

``load_dataset(cfg.data)`` returns an :class:`ImageDataset` with ``(N, C, H, W)`` float32 images in
``[-1, 1]``; see :mod:`diffsat.data.mnist` for where MNIST is looked for by default.
"""

from diffsat.data.dataset import DataError, ImageDataset
from diffsat.data.loaders import load_dataset

__all__ = ["DataError", "ImageDataset", "load_dataset"]
