"""Generic image folders (aerial / satellite tiles, any class-folder layout).

Every ``.png .jpg .jpeg .tif .tiff .bmp`` file (any case) under ``data.path``, recursively, in sorted path
order; files and folders whose name starts with ``.`` are ignored. Each image is converted to RGB
(``channels=3``) or grey (``channels=1``), centre-cropped to a square and resized to ``image_size``.
Unreadable files are skipped with a warning. When every image sits in a sub-folder, the label is the index
of its top-level sub-folder name among the sorted names (e.g. UC Merced class folders).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data.dataset import DataError, ImageDataset, progress_bar
from diffsat.data.transforms import to_unit_range

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
PROGRESS_THRESHOLD = 500
"""Show a decode progress bar when more than this many files are to be read."""

_MODES = {1: "L", 3: "RGB"}
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError
)


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


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode`` ("RGB"/"L"): alpha dropped, palette expanded, 16-bit scaled to 8-bit (``>> 8``)."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``min(w, h)`` square, then resize to ``size`` (LANCZOS down, BICUBIC up)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side == size:
        return img
    resample = Image.Resampling.LANCZOS if side > size else Image.Resampling.BICUBIC
    return img.resize((size, size), resample)


def load_image(path: Path, channels: int, size: int) -> np.ndarray:
    """Decode one image file to uint8 ``(size, size, channels)`` in ``[0, 255]``; raises on corrupt files."""
    with Image.open(path) as img:
        img.load()
        out = center_crop_resize(_to_mode(img, _MODES[channels]), size)
    arr = np.asarray(out, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _check_folder(cfg: DataConfig) -> Path:
    if cfg.path is None:
        raise DataError("data.kind 'folder' needs data.path: set it to a folder of images")
    root = Path(os.path.abspath(Path(cfg.path).expanduser()))
    if not root.is_dir():
        raise DataError(f"data.path '{root}' is not an existing folder: fix data.path")
    if cfg.channels not in _MODES:
        raise DataError(f"data.channels={cfg.channels}: image folders load as 1 (grey) or 3 (RGB) channels")
    return root


def _decode_all(files: list[Path], cfg: DataConfig) -> tuple[list[np.ndarray], list[int], list[Path]]:
    """Decode in order until ``cfg.limit`` readable images: (arrays, their indices in ``files``, skipped)."""
    want = len(files) if cfg.limit is None else min(cfg.limit, len(files))
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[Path] = []
    with progress_bar(want, "decoding images", enabled=want > PROGRESS_THRESHOLD) as bar:
        for i, path in enumerate(files):
            if len(arrays) == want:
                break
            try:
                arrays.append(load_image(path, cfg.channels, cfg.image_size))
            except _DECODE_ERRORS as err:
                warnings.warn(f"{path}: unreadable image skipped ({type(err).__name__}: {err})", stacklevel=3)
                skipped.append(path)
                continue
            kept.append(i)
            bar.update(1)
    return arrays, kept, skipped


def load_image_folder(cfg: DataConfig) -> ImageDataset:
    """All images under ``cfg.path`` as an :class:`ImageDataset`.

    Images: ``(N, cfg.channels, cfg.image_size, cfg.image_size)`` float32 in ``[-1, 1]``, where N is the
    number of readable files (at most ``cfg.limit``: the first readable ones in sorted path order).
    Labels: ``(N,)`` int64 sub-folder indices, or None when images sit directly in ``cfg.path``.
    """
    root = _check_folder(cfg)
    files = list_image_files(root)
    if not files:
        raise DataError(
            f"{root}: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) found; "
            "point data.path at a folder of images"
        )
    all_labels, names = folder_labels(root, files)
    arrays, kept, skipped = _decode_all(files, cfg)
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable image file(s)", stacklevel=2)
    if not arrays:
        raise DataError(f"{root}: none of the {len(skipped)} image files could be read; check the files")
    pixels = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    labels = None if all_labels is None else torch.from_numpy(all_labels[kept])
    return ImageDataset(
        images=to_unit_range(pixels),
        labels=labels,
        source=_describe(root, cfg, len(arrays), len(files), names, len(skipped)),
        class_names=names,
    )


def _describe(
    root: Path, cfg: DataConfig, n: int, total: int, names: tuple[str, ...] | None, bad: int
) -> str:
    """E.g. ``image folder /x/ucmerced-128 (40 of 1600 files, 16 classes, RGB 64 px)``."""
    parts = [f"{n} of {total} files" if n < total else f"all {total} files"]
    parts.append(f"{len(names)} classes" if names else "no labels")
    parts.append(f"{_MODES[cfg.channels]} {cfg.image_size} px, centre-cropped")
    if bad:
        parts.append(f"{bad} unreadable file(s) skipped")
    return f"image folder {root} ({', '.join(parts)})"
