"""The sample-folder format: what ``diffsat sample`` writes and ``diffsat evaluate`` reads.

A folder holds ``sample_00000.png`` ... (one PNG per sample, uint8; for a multispectral model, one float32
GeoTIFF ``sample_00000.tif`` per sample with its bands named, values in the model range [-1, 1]: the run's
``normalisation.json`` maps them back to band units), ``grid.png`` (an overview of the first samples, RGB
bands for a multispectral model; never counted as a sample) and, for a class-conditional model,
``labels.txt`` (one ``FILE LABEL`` line per sample: the class each was drawn for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rasterio.transform import Affine

from .data.folder import list_image_files
from .data.transforms import to_uint8_hwc
from .errors import DiffsatError
from .fileio import atomic_write_text
from .geo.raster import Grid
from .geo.render import rgb_indices
from .geo.write import GeoTiffWriter

PREFIX = "sample"
GRID_NAME = "grid.png"
LABELS_NAME = "labels.txt"
GRID_PIXELS = 128
"""Small images are enlarged (nearest neighbour) in grids until they are at least this many pixels wide."""


class SampleFolderError(DiffsatError):
    """A sample folder whose ``labels.txt`` does not fit its images; the message names the file and the fix."""


def grid_scale(image_size: int) -> int:
    """The integer enlargement of ``image_size`` px images in a grid (1 for images of 128 px and more)."""
    return max(1, GRID_PIXELS // image_size)


def write_labels(labels: torch.Tensor, path: Path, prefix: str = PREFIX, suffix: str = ".png") -> Path:
    """``labels.txt`` beside the images: one ``prefix_00000.png <label>`` line per sample, ``labels`` ``(N,)``."""
    lines = [f"{prefix}_{i:05d}{suffix} {int(label)}" for i, label in enumerate(labels)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def save_pngs(images: torch.Tensor, out_dir: Path, prefix: str = PREFIX, start: int = 0) -> list[Path]:
    """Write (N, C, H, W) images in [-1, 1] as ``prefix_00000.png`` ...; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(to_uint8_hwc(images)):
        path = out_dir / f"{prefix}_{start + i:05d}.png"
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(path)
        paths.append(path)
    return paths


def save_rasters(images: torch.Tensor, out_dir: Path, bands: tuple[str, ...], prefix: str = PREFIX) -> list[Path]:
    """Write multispectral ``(N, C, H, W)`` images in [-1, 1] as float32 GeoTIFFs ``prefix_00000.tif`` ...
    (no georeferencing; band descriptions ``bands``)."""
    paths = []
    for i, img in enumerate(images.detach().float().cpu().numpy()):
        path = out_dir / f"{prefix}_{i:05d}.tif"
        with GeoTiffWriter(path, Grid(None, Affine.identity(), img.shape[2], img.shape[1]), img.shape[0], "float32",
                           None, bands) as w:
            w.write(img, 0, 0)
        paths.append(path)
    return paths


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2, rgb: tuple[int, int, int] | None = None) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one uint8 array (rows*H, nrow*W, C') with white gutters
    (C' = 1 or 3: multispectral images show their ``rgb`` bands)."""
    arr = to_uint8_hwc(images, rgb)  # (N, H, W, C')
    n, h, w, c = arr.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, scale: int = 1,
              rgb: tuple[int, int, int] | None = None) -> Path:
    """Save a square-ish grid of images; ``scale`` enlarges small images (nearest) for viewing; ``rgb``: the
    bands shown of multispectral images."""
    nrow = nrow or max(1, int(np.ceil(np.sqrt(images.shape[0]))))
    grid = image_grid(images, nrow, rgb=rgb)
    img = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_sample_folder(images: torch.Tensor, out_dir: Path, labels: torch.Tensor | None = None,
                        grid: int = 3, bands: tuple[str, ...] | None = None) -> None:
    """Write ``images`` ``(N, C, S, S)`` in [-1, 1] as a sample folder: the PNGs (GeoTIFFs for C other than 1
    and 3, their bands named ``bands``), ``labels.txt`` when ``labels`` ``(N,)`` are given, and ``grid.png``
    of the first ``grid`` x ``grid`` images."""
    c = images.shape[1]
    multispectral = c not in (1, 3)
    if multispectral:
        save_rasters(images, out_dir, bands or tuple(f"band{i}" for i in range(1, c + 1)))
    else:
        save_pngs(images, out_dir)
    if labels is not None:
        write_labels(labels, out_dir / LABELS_NAME, suffix=".tif" if multispectral else ".png")
    rgb = rgb_indices(bands) if bands is not None else None
    save_grid(images[: grid * grid], out_dir / GRID_NAME, nrow=grid, scale=grid_scale(images.shape[-1]), rgb=rgb)


def sample_files(root: Path) -> list[Path]:
    """Image files under ``root`` in sorted order, without the top-level ``grid.png``."""
    return [p for p in list_image_files(root) if p.relative_to(root).as_posix() != GRID_NAME]


def read_sample_labels(root: Path, files: list[Path]) -> torch.Tensor | None:
    """The requested class of each of ``files`` from ``root/labels.txt`` as ``(N,)`` int64, or None when the
    folder has no such file. A file it does not name, or a malformed line, is an :class:`SampleFolderError`."""
    path = root / LABELS_NAME
    if not path.is_file():
        return None
    table: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise SampleFolderError(f"{path}, line {number}: expected 'FILE LABEL', got {line!r}")
        table[parts[0]] = int(parts[1])
    missing = [f.relative_to(root).as_posix() for f in files if f.relative_to(root).as_posix() not in table]
    if missing:
        raise SampleFolderError(f"{path} names no class for {missing[0]} ({len(missing)} files): remove the "
                              "file or draw the samples again with diffsat sample")
    return torch.tensor([table[f.relative_to(root).as_posix()] for f in files], dtype=torch.int64)
