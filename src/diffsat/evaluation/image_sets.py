"""The image sets ``diffsat evaluate`` compares: generated samples, real reference images, a training set.

Where images come from (each loaded whole into memory as ``(N, C, S, S)`` float32 in ``[-1, 1]``):

- an **image folder** (any depth): samples must all have one size (the ``grid.png`` that ``diffsat sample``
  writes beside them is left out); real images are centre-cropped and resized to the samples' size;
- an **MNIST idx folder** (``train-images-idx3-ubyte[.gz]`` ...): the ``split`` asked for (train/test);
- a **run directory** (``config.json`` + weights, as ``diffsat train`` writes it), for real sets only, read
  through its ``data`` config section at the training scale (:meth:`ImageDataset.model_view`: the crop the
  model saw): as a training set, exactly the images it trained on (split and limit as configured); as a
  reference, its held-out images (``data.split = "test"``, no limit: the MNIST test digits, or the
  ``data.holdout`` images of a folder). A run directory is not a set of samples: draw them first with
  ``diffsat sample RUN --out DIR``.

``limit`` keeps the first N images in file order. Bad paths, empty folders, mixed sample sizes and
unreadable samples are :class:`EvaluationError` (one line naming the path and the fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data import DataError, load_dataset
from diffsat.data.folder import (
    IMAGE_SUFFIXES,
    load_image,
    load_image_folder,
)
from diffsat.data.mnist import load_mnist_idx, resize_digits, resolve_mnist_source
from diffsat.data.tiles import DECODE_ERRORS
from diffsat.data.transforms import to_unit_range
from diffsat.geo.raster import RASTER_SUFFIXES, RasterError, open_raster
from diffsat.errors import DiffsatError
from diffsat.progress import progress_bar
from diffsat.rundir import is_run_dir, load_run_config
from diffsat.sample_folder import SampleFolderError, read_sample_labels, sample_files

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


class EvaluationError(DiffsatError):
    """Images or settings ``diffsat evaluate`` cannot use; the message names the path and the fix."""


@dataclass(repr=False)
class ImageSet:
    """``images``: ``(N, C, S, S)`` float32 in ``[-1, 1]``; ``labels``: ``(N,)`` int64 or None;
    ``source``: where they came from, for the report."""

    images: torch.Tensor
    labels: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __repr__(self) -> str:
        return f"ImageSet(n={len(self)}, channels={self.channels}, size={self.size}, source={self.source!r})"

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images (and labels) at ``index`` ``(K,)`` int64, same source text."""
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index], labels, self.source)


def is_mnist_idx_folder(path: Path) -> bool:
    """Whether ``path`` holds MNIST idx files (either split, gzipped or raw)."""
    try:
        return resolve_mnist_source(path).kind == "idx"
    except DataError:
        return False


def _existing_folder(path: str | Path, role: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise EvaluationError(f"{role} '{root}' does not exist: give a folder of images, MNIST idx files or a run")
    if not root.is_dir():
        raise EvaluationError(f"{role} '{root}' is a file: give the folder that holds the images")
    return root


def _limited(files: list, limit: int | None) -> list:
    return files if limit is None else files[:limit]


def _channels_of(path: Path) -> int:
    """1 for grey image files (L, LA, 1, I;16 ...), else 3."""
    with Image.open(path) as img:
        return 1 if img.mode in _GREY_MODES else 3


def _check_one_size(files: list[Path], root: Path) -> tuple[int, int]:
    """``(width, height)`` shared by all ``files`` (headers only); mixed sizes or unreadable files are errors."""
    first: tuple[int, int] | None = None
    for path in files:
        try:
            with Image.open(path) as img:
                size = img.size
        except DECODE_ERRORS as err:
            raise EvaluationError(f"{path}: unreadable image ({type(err).__name__}: {err}); remove it") from None
        if first is None:
            first, first_path = size, path
        elif size != first:
            raise EvaluationError(
                f"{root}: samples have different sizes ({first[0]}x{first[1]} {first_path.name}, "
                f"{size[0]}x{size[1]} {path.name}); evaluate one model's samples at one resolution per folder"
            )
    assert first is not None
    return first


def _decode(files: list[Path], channels: int, size: int, what: str) -> np.ndarray:
    """uint8 ``(N, C, size, size)`` of ``files`` (centre-cropped to a square); unreadable files are errors."""
    arrays = []
    with progress_bar(len(files), f"reading {what}", unit="img", enabled=len(files) > 500) as bar:
        for path in files:
            try:
                arrays.append(load_image(path, channels, size))
            except DECODE_ERRORS as err:
                raise EvaluationError(f"{path}: unreadable image ({type(err).__name__}: {err}); remove it") from None
            bar.update(1)
    return np.stack(arrays).transpose(0, 3, 1, 2)


def _mnist_set(root: Path, split: str, limit: int | None, size: int) -> ImageSet:
    """MNIST ``split`` from idx files, first ``limit`` digits, at ``size`` px (28 as is, 32 padded, else resized)."""
    try:
        images, labels = load_mnist_idx(root, split)  # type: ignore[arg-type]
    except DataError as err:
        raise EvaluationError(str(err)) from None
    total = len(images)
    images, labels = _limited(images, limit), _limited(labels, limit)
    pixels = resize_digits(images, size)[:, None]
    count = f"first {len(images)} of {total}" if len(images) < total else f"all {total}"
    return ImageSet(to_unit_range(pixels), torch.from_numpy(np.ascontiguousarray(labels)),
                    f"MNIST idx files in {root} ({split}, {count}, {size} px)")


def load_samples(path: str | Path, limit: int | None = None, split: str = "train") -> ImageSet:
    """Generated images from a folder (e.g. ``diffsat sample --out DIR``), or MNIST idx files (``split``)
    for real-against-real checks. Channels (grey or RGB) come from the first file, the size from all files,
    which must agree. ``limit``: keep the first N files in sorted path order."""
    root = _existing_folder(path, "SAMPLES")
    if is_run_dir(root):
        raise EvaluationError(
            f"SAMPLES '{root}' is a run directory, not a set of samples: draw samples first, e.g. "
            f"`diffsat sample {root} --out {root / 'generated'} --n 1000`, then evaluate that folder"
        )
    if is_mnist_idx_folder(root):
        return _mnist_set(root, split, limit, 28)
    files = _limited(sample_files(root), limit)
    if not files:
        raise EvaluationError(
            f"SAMPLES '{root}': no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) found; "
            "point it at the folder `diffsat sample --out` wrote"
        )
    try:
        labels = read_sample_labels(root, files)
    except SampleFolderError as err:
        raise EvaluationError(str(err)) from None
    if files[0].suffix.lower() in RASTER_SUFFIXES and _raster_dtype(files[0]) != "uint8":
        images = _read_raster_samples(files)
        return ImageSet(images, labels, f"raster folder {root} ({len(files)} files, {images.shape[1]} bands "
                                        f"{images.shape[-1]} px, model range)")
    width, height = _check_one_size(files, root)
    channels, size = _channels_of(files[0]), min(width, height)
    pixels = _decode(files, channels, size, "samples")
    crop = "" if width == height else f", centre-cropped from {width}x{height}"
    return ImageSet(to_unit_range(pixels), labels,
                    f"image folder {root} ({len(files)} files, {'grey' if channels == 1 else 'RGB'} {size} px{crop})")


def _raster_dtype(path: Path) -> str:
    try:
        with open_raster(path) as ds:
            return ds.dtypes[0]
    except RasterError as err:
        raise EvaluationError(str(err)) from None


def _read_raster_samples(files: list[Path]) -> torch.Tensor:
    """Multispectral samples (float GeoTIFFs in the model range, as ``diffsat sample`` writes them):
    float32 ``(N, C, S, S)``; files of other shapes are an error naming the file."""
    arrays = []
    with progress_bar(len(files), "reading samples", unit="img", enabled=len(files) > 500) as bar:
        for path in files:
            try:
                with open_raster(path) as ds:
                    array = ds.read().astype(np.float32)
            except RasterError as err:
                raise EvaluationError(str(err)) from None
            if arrays and array.shape != arrays[0].shape:
                raise EvaluationError(f"{path}: {array.shape} but {files[0].name} is {arrays[0].shape}; evaluate one "
                                      "model's samples at one size and band count per folder")
            if array.shape[1] != array.shape[2]:
                raise EvaluationError(f"{path}: {array.shape[2]}x{array.shape[1]}, not square; samples are square")
            arrays.append(array)
            bar.update(1)
    return torch.from_numpy(np.stack(arrays))


def _first(images: torch.Tensor, labels: torch.Tensor | None, limit: int | None):
    """``(images[:limit], labels[:limit])`` (all when ``limit`` is None)."""
    return images[:limit], None if labels is None else labels[:limit]


def _run_dir_set(root: Path, channels: int, size: int, limit: int | None, role: str, training: bool) -> ImageSet:
    """The training images (``training``) or held-out images of the run in ``root``, as the model saw them
    (:meth:`ImageDataset.model_view`), first ``limit``."""
    config = load_run_config(root)
    data = config.data
    if (data.channels, data.image_size) != (channels, size):
        raise EvaluationError(
            f"{role} '{root}': the run trained on {data.channels}-channel {data.image_size} px images but the "
            f"samples are {channels}-channel {size} px"
        )
    if not training:
        if data.kind != "mnist" and data.holdout is None:
            raise EvaluationError(
                f"{role} '{root}': the run holds no images out (data.holdout is unset), so it has no held-out "
                "reference: pass a folder of real images the model did not train on"
            )
        data = data.model_copy(update={"split": "test", "limit": None})
    dataset = load_dataset(data)
    images = dataset.model_view(data, seed=config.train.seed)
    what = "training" if training else "held-out"
    return ImageSet(*_first(images, dataset.labels, limit), f"{what} images of run {root}: {dataset.source}")


def load_real(
    path: str | Path,
    channels: int,
    size: int,
    split: str = "test",
    limit: int | None = None,
    role: str = "REFERENCE",
    training: bool = False,
) -> ImageSet:
    """Real images at the samples' ``channels`` (1 or 3) and ``size``, from an image folder (centre-cropped and
    resized), MNIST idx files (``split``) or a run directory (its training images when ``training``, else its
    held-out images; see the module docstring). ``role`` names the argument in error messages."""
    root = _existing_folder(path, role)
    if is_run_dir(root):
        return _run_dir_set(root, channels, size, limit, role, training)
    if is_mnist_idx_folder(root):
        if channels != 1:
            raise EvaluationError(f"{role} '{root}' holds MNIST (grey digits) but the samples are RGB")
        return _mnist_set(root, split, limit, size)
    if not sample_files(root):
        raise EvaluationError(
            f"{role} '{root}': no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) and no MNIST idx files found"
        )
    cfg = DataConfig(kind="folder", path=str(root), channels=channels, image_size=size, limit=limit)
    dataset = load_image_folder(cfg)
    return ImageSet(dataset.images, dataset.labels, dataset.source)
