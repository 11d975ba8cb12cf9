"""Generic image folders (aerial / satellite tiles, any class-folder layout).

Every ``.png .jpg .jpeg .tif .tiff .bmp`` file (any case) under ``data.path``, recursively, in sorted path
order; files and folders whose name starts with ``.`` are ignored. With ``data.holdout`` every
``holdout``-th file is set aside as the ``test`` split (``data.split``); ``data.limit`` then takes the first
readable files of the split. Each image is decoded once into memory as a uint8 RGB (``channels=3``) or
grey (``channels=1``) tile, centre-cropped to a square and resampled to the held side (``data.load_size``;
default ``data.image_size``, or the stored size with ``data.random_crop``); see :mod:`diffsat.data.tiles`
for odd sizes, alpha and unreadable files (skipped with a warning and counted). When every image sits in a
sub-folder, the label is the index of its top-level sub-folder name among the sorted names (e.g. UC Merced
class folders).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data.dataset import DataError, ImageDataset
from diffsat.data.tiles import (
    Decoded,
    TilePlan,
    center_crop_resize,
    decode_tiles,
    describe_tiles,
    plan_tiles,
    tile_array,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "center_crop_resize",
    "folder_labels",
    "list_image_files",
    "load_image",
    "load_image_folder",
    "split_indices",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, any suffix case, no hidden names), sorted by path."""
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def folder_labels(root: Path, files: list[Path]) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """``(labels int64 (len(files),), class names)`` from the top-level sub-folder of each file.

    ``(None, None)`` when any file sits directly in ``root`` (no class structure).
    """
    tops = [p.relative_to(root).parts for p in files]
    if not tops or any(len(parts) < 2 for parts in tops):
        return None, None
    names = tuple(sorted({parts[0] for parts in tops}))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[parts[0]] for parts in tops], dtype=np.int64), names


def load_image(path: Path, channels: int, size: int) -> np.ndarray:
    """Decode one image file to uint8 ``(size, size, channels)`` in ``[0, 255]`` (alpha dropped, centre square
    resampled to ``size``); raises one of :data:`diffsat.data.tiles.DECODE_ERRORS` on a corrupt file."""
    with Image.open(path) as img:
        img.load()
        return tile_array(img, channels, size)


def split_indices(n: int, cfg: DataConfig, where: str) -> list[int]:
    """Indices (into ``n`` files in order) of ``cfg.split`` under ``cfg.holdout``: every ``holdout``-th file
    (indices ``holdout - 1, 2 * holdout - 1, ...``) is the ``test`` split, the others ``train``."""
    if cfg.holdout is None:
        if cfg.split == "test":
            raise DataError(
                f"{where}: data.split='test' needs data.holdout (e.g. 10: every 10th image held out)"
            )
        return list(range(n))
    held = cfg.split == "test"
    return [i for i in range(n) if ((i + 1) % cfg.holdout == 0) == held]


def _check_folder(cfg: DataConfig) -> Path:
    if cfg.path is None:
        raise DataError("data.kind 'folder' needs data.path: set it to a folder of images")
    root = Path(os.path.abspath(Path(cfg.path).expanduser()))
    if not root.is_dir():
        raise DataError(f"data.path '{root}' is not an existing folder: fix data.path")
    return root


def load_image_folder(cfg: DataConfig) -> ImageDataset:
    """All images under ``cfg.path`` as an :class:`ImageDataset`.

    Images: ``(N, cfg.channels, S, S)`` uint8 in ``[0, 255]``, ``S`` the held side (see the module
    docstring), where N is the number of usable files (at most ``cfg.limit``: the first ones in sorted
    path order). Labels: ``(N,)`` int64 sub-folder indices, or None when images sit directly in ``cfg.path``.
    """
    root = _check_folder(cfg)
    files = list_image_files(root)
    if not files:
        raise DataError(
            f"{root}: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) found; "
            "point data.path at a folder of images"
        )
    all_labels, names = folder_labels(root, files)
    keep = split_indices(len(files), cfg, str(root))
    files = [files[i] for i in keep]
    all_labels = None if all_labels is None else all_labels[keep]
    plan = plan_tiles(files, cfg, str(root))
    decoded = decode_tiles(files, plan, cfg.limit, str(root))
    labels = None if all_labels is None else torch.from_numpy(all_labels[decoded.kept])
    return ImageDataset(
        images=torch.from_numpy(decoded.pixels),
        labels=labels,
        source=_describe(root, cfg, plan, decoded, len(files), names),
        class_names=names,
    )


def _describe(
    root: Path, cfg: DataConfig, plan: TilePlan, decoded: Decoded, total: int, names: tuple[str, ...] | None
) -> str:
    """E.g. ``image folder /x/ucmerced-128 (40 of 1600 files, 16 classes, RGB 128x128 held at 128 px,
    random 64 px crops)``."""
    n = len(decoded.kept)
    parts = [f"{n} of {total} files" if n < total else f"all {total} files"]
    if cfg.holdout is not None:
        parts.append(f"split {cfg.split}: 1 in {cfg.holdout} files held out")
    parts.append(f"{len(names)} classes" if names else "no labels")
    parts.append(describe_tiles(cfg, plan))
    parts += decoded.summary()
    return f"image folder {root} ({', '.join(parts)})"

