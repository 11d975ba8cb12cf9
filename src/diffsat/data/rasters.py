"""Georeferenced rasters as a training set (``data.kind: rasters``): scenes cut into tiles held in memory.

``data.path`` is one raster file, a folder of raster files (searched recursively; each file one scene with
all its bands), or an OSCD root (both dates of every city, each date's band files stacked onto its 10 m
grid). ``data.bands`` chooses bands by name or position, ``data.scenes`` scenes by name (OSCD cities, file
stems). With ``data.holdout`` every ``holdout``-th scene (in sorted order) is the ``test`` split. The band normalisation (``data.normalisation``) is always made from
the training split's scenes, so both splits are mapped alike, and the dataset carries it for the run to
store. Each scene is cut into non-overlapping ``load_size`` tiles (default ``image_size``; random crops
then cut ``image_size`` windows out of them); tiles with a nodata pixel are skipped and counted. Tiles are
float32 ``(N, C, S, S)`` in [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from diffsat.config import DataConfig
from diffsat.data.bands import make_normalisation
from diffsat.data.dataset import DataError, ImageDataset
from diffsat.data.folder import split_indices
from diffsat.data.tiles import check_memory
from diffsat.geo.normalise import BandNormalisation
from diffsat.geo.oscd import DATES, is_oscd, oscd_cities, oscd_folders
from diffsat.geo.raster import RASTER_SUFFIXES, BandStack, stack_from_path
from diffsat.progress import progress_bar


def raster_scenes(cfg: DataConfig) -> list[BandStack]:
    """Every scene of ``cfg.path`` (see the module docstring), with ``cfg.bands``, in sorted order."""
    if cfg.path is None:
        raise DataError("data.kind 'rasters' needs data.path: a GeoTIFF, a folder of them, or an OSCD folder")
    root = Path(os.path.abspath(Path(cfg.path).expanduser()))
    if is_oscd(root):
        images, _ = oscd_folders(root)
        cities = _chosen(oscd_cities(root), cfg.scenes, root, "OSCD city")
        return [stack_from_path(images / city / date, cfg.bands) for city in cities for date in DATES]
    if root.is_file():
        return [stack_from_path(root, cfg.bands)]
    if not root.is_dir():
        raise DataError(f"data.path '{root}' is neither a raster file nor a folder: fix data.path")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in RASTER_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"{root}: no raster files ({' '.join(sorted(RASTER_SUFFIXES))}); point data.path at "
                        "GeoTIFFs (PNG / JPEG folders are data.kind 'folder')")
    if cfg.scenes is not None:
        by_stem = {f.stem: f for f in files}
        files = [by_stem[s] for s in _chosen(list(by_stem), cfg.scenes, root, "raster file")]
    return [stack_from_path(f, cfg.bands) for f in files]


def _chosen(available: list[str], wanted: tuple[str, ...] | None, root: Path, what: str) -> list[str]:
    """``wanted`` (``data.scenes``) in its order, each checked against ``available``; ``None``: all of them."""
    if wanted is None:
        return available
    absent = [n for n in wanted if n not in available]
    if absent:
        raise DataError(f"{root}: no {what} '{absent[0]}' (data.scenes); it holds {', '.join(available[:8])}"
                        f"{' ...' if len(available) > 8 else ''}")
    return list(wanted)


def scene_tiles(scene: BandStack, norm: BandNormalisation, side: int) -> tuple[list[np.ndarray], int]:
    """``(fully valid tiles float32 (C, side, side) in [-1, 1], number skipped for nodata)`` of one scene."""
    h, w = scene.grid.shape
    kept, skipped = [], 0
    with scene.reader() as reader:
        for row in range(0, h - side + 1, side):
            values, valid = reader.read(Window(0, row, w, side))
            for col in range(0, w - side + 1, side):
                if valid[:, col : col + side].all():
                    kept.append(norm.apply(values[:, :, col : col + side]))
                else:
                    skipped += 1
    return kept, skipped


def load_raster_tiles(cfg: DataConfig) -> ImageDataset:
    """The tiles of ``cfg``'s split as an :class:`ImageDataset` (float32, with its band normalisation)."""
    scenes = raster_scenes(cfg)
    where = f"rasters {cfg.path}"
    names = scenes[0].names
    for s in scenes:
        if s.names != names:
            raise DataError(f"{s.source}: bands {', '.join(s.names)}, but {scenes[0].source} has {', '.join(names)}; "
                            "give every scene the same bands (data.bands)")
    if cfg.channels != len(names):
        raise DataError(f"{where}: {len(names)} bands ({', '.join(names)}) but data.channels is {cfg.channels}; "
                        f"set data.channels (and model.in_channels / out_channels) to {len(names)} or choose "
                        "data.bands")
    train = [scenes[i] for i in split_indices(len(scenes), cfg.model_copy(update={"split": "train"}), where)]
    chosen = [scenes[i] for i in split_indices(len(scenes), cfg, where)]
    if not chosen:
        raise DataError(f"{where}: the {cfg.split} split holds no scene ({len(scenes)} in all); lower data.holdout")
    norm = make_normalisation(cfg.normalisation, train)
    side = cfg.load_size or cfg.image_size
    estimate = sum((s.grid.height // side) * (s.grid.width // side) for s in chosen)
    check_memory(estimate, 4 * len(names), side, where)
    tiles, skipped = [], 0
    with progress_bar(len(chosen), "cutting tiles", "scene", enabled=len(chosen) > 4) as bar:
        for scene in chosen:
            kept, lost = scene_tiles(scene, norm, side)
            tiles += kept
            skipped += lost
            bar.update(1)
            if cfg.limit is not None and len(tiles) >= cfg.limit:
                break
    tiles = tiles[: cfg.limit]
    if not tiles:
        raise DataError(f"{where}: no {side} px tile without nodata in the {cfg.split} split; lower "
                        "data.load_size / data.image_size or check the nodata value")
    source = (f"rasters {cfg.path} ({len(chosen)} of {len(scenes)} scenes, split {cfg.split}, {len(tiles)} tiles of "
              f"{side} px, {len(names)} bands {', '.join(names)}, {skipped} tiles with nodata skipped; "
              f"normalisation: {norm.detail})")
    return ImageDataset(torch.from_numpy(np.stack(tiles)), None, source, normalisation=norm)
