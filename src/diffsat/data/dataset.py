"""The in-memory image dataset type and the data error.

Every loader (:mod:`diffsat.data.loaders`) returns an :class:`ImageDataset`. Its ``tiles`` are what is held in memory: a contiguous,
square ``(N, C, S, S)`` tensor, uint8 in ``[0, 255]`` (image folders, LEVIR-CD: a quarter of the memory of
float32) or float32 in ``[-1, 1]`` (MNIST), at ``S = data.load_size`` (default ``data.image_size``, or the
stored tile size with ``data.random_crop``). ``images`` is the same data as float32 in ``[-1, 1]``.
Training batches are cut to ``data.image_size`` and brought to float32 by
:func:`diffsat.data.transforms.augment`.
"""

from __future__ import annotations

import torch

from diffsat.config import DataConfig
from diffsat.data.transforms import crop, to_model_range
from diffsat.errors import DiffsatError
from diffsat.geo.normalise import BandNormalisation


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
    ``normalisation``: for raster tiles, the per-band map that made them (:mod:`diffsat.geo.normalise`),
    which the run stores; ``None`` for 8-bit images and MNIST.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        source: str,
        class_names: tuple[str, ...] | None = None,
        normalisation: BandNormalisation | None = None,
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
        self.normalisation = normalisation
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
