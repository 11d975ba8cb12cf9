"""Change-detection pairs: before (A), after (B) and change label, from LEVIR-CD, open-cd or OSCD folders.

Layouts::

    LEVIR-CD (BIT_CD, ChangeFormer, DDPM-CD)      open-cd
    root/A/<name>.png      before                   root/<split>/A/<name>.png
    root/B/<name>.png      after, same name         root/<split>/B/<name>.png
    root/label/<name>.png  change mask              root/<split>/label/<name>.png
    root/list/<split>.txt  one name per line

    OSCD (:mod:`diffsat.geo.oscd`): root/Onera Satellite Change Detection dataset - Images/<city>/imgs_1, ...

A pair on disk is a :class:`PairInput`: 8-bit images (PNG, JPEG) decoded as RGB (alpha dropped with a
warning, grey expanded); rasters (GeoTIFF and any file GDAL reads, in A/ and B/ or OSCD's band folders)
opened with rasterio, their chosen bands stacked and both dates put on one grid (:mod:`diffsat.geo`), read
window by window. Labels are one channel of 0/255 or 0/1 (grey, or RGB with equal channels, as DDPM-CD reads
them), held as 0/1. :meth:`PairInput.load` brings a pair into memory as a :class:`Pair`, normalised to
[-1, 1] by the run's band normalisation, with nodata pixels marked :data:`IGNORE` in its label. An
unreadable 8-bit file skips its pair with a warning and is counted; every other defect (an A without its B
or label, sizes that differ, a label of more than two values, an empty selection, a raster GDAL cannot
read) is one error line naming the file.

Training crops (:func:`draw_crop`, :func:`apply_crop`) cut the same window out of every aligned array of a
pair (images, label, feature maps at 1/f of the resolution) and give all of them the same flips and
quarter turn.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rasterio.transform import Affine
from rasterio.windows import Window

from ..data.dataset import DataError
from ..data.folder import IMAGE_SUFFIXES
from ..data.levir import read_list
from ..data.tiles import DECODE_ERRORS, WARN_EACH, has_alpha, to_mode
from ..errors import DiffsatError
from ..geo.align import align_pair
from ..geo.normalise import BandNormalisation
from ..geo.oscd import is_oscd, oscd_cities, oscd_city, read_oscd_label
from ..geo.raster import RASTER_SUFFIXES, BandStack, DecodedImage, Grid, file_bands, open_raster, stack_from_path
from .config import CDDataConfig, PairSource


IGNORE = 255
"""Label value of pixels left out of losses and metrics (nodata in either date)."""
UNNAMED = re.compile(r"^(band\d+|red|green|blue)$", re.IGNORECASE)
"""Band names that carry no meaning (8-bit images, raster bands without a description)."""


ImageSource = DecodedImage | BandStack


@dataclass
class PairInput:
    """One pair as it lies on disk: both dates on one grid (``grid``: None when not georeferenced), the
    change label ``label`` uint8 ``(H, W)`` in {0, 1} or None (prediction input), ``name`` and ``root``."""

    name: str
    before: ImageSource
    after: ImageSource
    label: np.ndarray | None
    root: Path

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.before.grid.shape

    @property
    def grid(self) -> Grid | None:
        return self.before.grid if self.before.grid.crs is not None else None

    @property
    def names(self) -> tuple[str, ...]:
        return self.before.names

    @property
    def eight_bit(self) -> bool:
        return all(d == "uint8" for d in self.before.dtypes + self.after.dtypes)

    @contextmanager
    def windows(self, norm: BandNormalisation) -> Iterator["WindowReader"]:
        """Read normalised windows of both dates (files opened once)."""
        with self.before.reader() as a, self.after.reader() as b:
            yield WindowReader(self, a, b, norm)

    def load(self, norm: BandNormalisation) -> "Pair":
        """The whole pair in memory, normalised; label pixels where either date is nodata become IGNORE."""
        with self.windows(norm) as r:
            before, after, valid = r.window(0, 0, *self.size)
        label = None if self.label is None else np.where(valid, self.label, IGNORE).astype(np.uint8)
        return Pair(self.name, before, after, label, self.root, None if valid.all() else valid)


class WindowReader:
    """``window(y, x, h, w) -> (before, after, valid)``: float32 ``(C, h, w)`` in [-1, 1] and bool ``(h, w)``."""

    def __init__(self, pair: PairInput, before: Any, after: Any, norm: BandNormalisation) -> None:
        self.pair, self._a, self._b, self.norm = pair, before, after, norm

    def window(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        win = Window(x, y, w, h)
        (a, va), (b, vb) = self._a.read(win), self._b.read(win)
        valid = va & vb
        return self.norm.apply(a, valid), self.norm.apply(b, valid), valid


@dataclass
class Pair:
    """One pair in memory: ``before`` / ``after`` float32 ``(C, H, W)`` in [-1, 1]; ``label`` uint8 ``(H, W)``
    in {0, 1} (:data:`IGNORE` where a date is nodata) or ``None``; ``valid`` bool ``(H, W)`` or None (all
    valid); ``name`` the file name (or city); ``root`` its folder."""

    name: str
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray | None
    root: Path
    valid: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.before.shape[1]), int(self.before.shape[2])

    def window(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`WindowReader.window`."""
        cut = (slice(None), slice(y, y + h), slice(x, x + w))
        valid = np.ones((h, w), dtype=bool) if self.valid is None else self.valid[cut[1:]]
        return self.before[cut], self.after[cut], valid


@dataclass
class PairSet:
    """The readable pairs of a selection, and the files that could not be read (their pairs skipped)."""

    pairs: list[PairInput]
    unreadable: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        roots = sorted({str(p.root) for p in self.pairs})
        bad = f", {len(self.unreadable)} unreadable file(s) skipped" if self.unreadable else ""
        return f"{len(self.pairs)} pairs from {', '.join(roots)}{bad}"


def check_bands(norm: BandNormalisation, pair: PairInput) -> None:
    """One line naming the pair unless its bands are the run's (names compared where both carry meaning)."""
    named = not any(UNNAMED.match(n) for n in pair.names + norm.names)
    if pair.before.channels != norm.channels or (named and pair.names != norm.names):
        norm.check_bands(pair.names, f"{pair.root / pair.name}")


# ---------------------------------------------------------------------------------------- locating files


def _image_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def pair_folder(source: PairSource) -> tuple[Path, list[str]]:
    """``(folder holding A/, B/, label/, the selected file names)`` of one source, in order."""
    root = Path(source.root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: change-detection folder not found; fix the pair source's root")
    if (root / "A").is_dir():
        base = root
        if source.list is not None:
            path = root / "list" / (source.list if source.list.endswith(".txt") else f"{source.list}.txt")
            if not path.is_file():
                raise DataError(f"{path}: list file not found; fix the source's list (or unset it for every pair)")
            names = read_list(path)
        else:
            names = _image_names(root / "A")
    elif source.list is not None and (root / source.list / "A").is_dir():
        base = root / source.list
        names = _image_names(base / "A")
    else:
        raise DataError(f"{root}: neither a LEVIR-CD folder (A/, B/, label/, list/) nor an open-cd folder "
                        f"(<split>/A, <split>/B, <split>/label with list set to the split); fix the root")
    if source.names is not None:
        absent = [n for n in source.names if n not in names]
        if absent:
            raise DataError(f"{base / 'A' / absent[0]}: named in the pair source's names but not in its "
                            f"{'list ' + source.list if source.list and base == root else 'A/ folder'}; fix names")
        names = list(source.names)
    if not names:
        raise DataError(f"{base}: the selection of pairs is empty (list '{source.list}'); check the list and folder")
    return base, names


# ------------------------------------------------------------------------------------------- decoding


def read_rgb(path: Path) -> np.ndarray:
    """uint8 ``(3, H, W)``; alpha dropped with a warning. Raises one of DECODE_ERRORS on a corrupt file."""
    with Image.open(path) as img:
        img.load()
        if has_alpha(img):
            warnings.warn(f"{path}: {img.mode}, alpha dropped", stacklevel=3)
        return np.ascontiguousarray(np.asarray(to_mode(img, "RGB"), dtype=np.uint8).transpose(2, 0, 1))


def label_values(array: np.ndarray, path: Path) -> np.ndarray:
    """A label array ``(H, W)`` or ``(H, W, C)`` of 0/255 or 0/1 as uint8 ``(H, W)`` in {0, 1}."""
    if array.ndim == 3:
        if any(not np.array_equal(array[..., 0], array[..., c]) for c in range(1, min(3, array.shape[2]))):
            raise DataError(f"{path}: a colour label (its R, G, B differ); change masks are grey 0/255 or 0/1")
        array = array[..., 0]
    values = np.unique(array)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DataError(f"{path}: label values {shown}; a change mask holds two classes, 0/255 or 0/1")
    return (array > 0).astype(np.uint8)


def read_label(path: Path) -> np.ndarray:
    """A change mask file (PNG / JPEG, or a raster) as uint8 ``(H, W)`` in {0, 1}; a raster's nodata pixels
    (as in the masks ``diffsat cd predict`` writes) are :data:`IGNORE`."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        with open_raster(path) as ds:
            array, nodata = ds.read(1), ds.nodata
        if nodata is None:
            return label_values(array, path)
        valid = array != nodata
        out = np.full(array.shape, IGNORE, dtype=np.uint8)
        out[valid] = label_values(array[valid], path)
        return out
    with Image.open(path) as img:
        img.load()
        array = np.asarray(img.convert("L") if img.mode in ("P", "I;16", "I", "F") else img)
    return label_values(array, path)


def _files(base: Path, name: str, need_label: bool) -> tuple[Path, Path, Path | None]:
    a, b, lab = base / "A" / name, base / "B" / name, base / "label" / name
    if not a.is_file():
        raise DataError(f"{a}: listed pair without its A (before) image; fix the list or add the file")
    if not b.is_file():
        raise DataError(f"{a}: no matching B (after) image {b}; every A needs a B of the same name")
    if not lab.is_file():
        if need_label:
            raise DataError(f"{a}: no matching label {lab}; every training/evaluation pair needs a change mask")
        lab = None
    return a, b, lab


def _label_on(path: Path | None, grid: Grid, what: str) -> np.ndarray | None:
    """The label file read onto the pair's grid: a georeferenced raster label is resampled onto it (nearest;
    outside its footprint :data:`IGNORE`), any other must have the grid's size."""
    if path is None:
        return None
    if path.suffix.lower() in RASTER_SUFFIXES and grid.crs is not None and file_bands(path)[0].grid.crs is not None:
        values, valid = stack_from_path(path, (1,), "nearest", grid=grid).read()
        label = np.full(grid.shape, IGNORE, dtype=np.uint8)
        label[valid] = label_values(values[0][valid].astype(np.int64), path)
        return label
    label = read_label(path)
    if label.shape != grid.shape:
        raise DataError(f"{path}: {label.shape[1]}x{label.shape[0]} but {what} is {grid.width}x{grid.height}; the "
                        "label must have the images' size (or a CRS to be put on their grid)")
    return label


def read_pair(base: Path, name: str, need_label: bool, bands: tuple[str | int, ...] | None = None) -> PairInput:
    """One pair of a LEVIR-CD / open-cd folder: 8-bit images decoded with PIL (RGB), rasters (``.tif`` and
    co) opened with rasterio (the chosen ``bands``) and put on one grid. Raises DECODE_ERRORS for an
    unreadable 8-bit file, DataError / RasterError for a bad one."""
    a_path, b_path, label_path = _files(base, name, need_label)
    if a_path.suffix.lower() in RASTER_SUFFIXES:
        before, after = align_pair(stack_from_path(a_path, bands), stack_from_path(b_path, bands))
        label = _label_on(label_path, before.grid, f"the pair's common grid ({a_path}, {b_path})")
        return PairInput(name, before, after, label, base)
    if bands is not None and tuple(bands) != DecodedImage.names:
        raise DataError(f"{a_path}: an 8-bit RGB image, but data.bands asks for {list(bands)}; unset data.bands "
                        "for PNG / JPEG pairs")
    before, after = read_rgb(a_path), read_rgb(b_path)
    if before.shape != after.shape:
        raise DataError(f"{b_path}: {after.shape[2]}x{after.shape[1]} but its A is "
                        f"{before.shape[2]}x{before.shape[1]}; A and B of a pair must have one size")
    h, w = before.shape[1:]
    label = _label_on(label_path, Grid(None, Affine.identity(), w, h), f"its A {a_path.name}")
    return PairInput(name, DecodedImage(before, str(a_path)), DecodedImage(after, str(b_path)), label, base)


def oscd_pairs(source: PairSource, bands: tuple[str | int, ...] | None, need_labels: bool) -> list[PairInput]:
    """The cities of an OSCD source (``list``: ``train`` / ``test`` city list; ``names``: these cities)."""
    cities = list(source.names) if source.names is not None else oscd_cities(source.root, source.list)
    out = []
    for name in cities:
        city = oscd_city(source.root, name, bands)
        if city.label is None and need_labels:
            raise DataError(f"{Path(source.root) / name}: an OSCD city without a change map (only the train.txt "
                            "cities have labels); use it for pretraining or prediction, not for training or scoring")
        label = read_oscd_label(city.label, city.before.grid.shape) if city.label is not None else None
        out.append(PairInput(name, city.before, city.after, label, Path(source.root)))
    return out


def load_pairs(sources: tuple[PairSource, ...] | list[PairSource], need_labels: bool = True,
               what: str = "pairs", bands: tuple[str | int, ...] | None = None) -> PairSet:
    """Every selected pair of ``sources`` in order; unreadable 8-bit files are warned about, skipped and
    counted (a raster that cannot be read is an error naming it)."""
    if not sources:
        raise DataError(f"no {what}: the split lists no pair source; add one to the config's data section")
    pairs, unreadable = [], []
    for source in sources:
        if is_oscd(source.root):
            pairs += oscd_pairs(source, bands, need_labels)
            continue
        base, names = pair_folder(source)
        for name in names:
            try:
                pairs.append(read_pair(base, name, need_labels, bands))
            except DiffsatError:  # a ValueError, as some decode errors are: not an unreadable file
                raise
            except DECODE_ERRORS as err:
                path = base / "A" / name
                unreadable.append(path)
                if len(unreadable) <= WARN_EACH:
                    warnings.warn(f"{path}: pair skipped, a file is unreadable ({type(err).__name__}: {err})",
                                  stacklevel=2)
    if unreadable:
        warnings.warn(f"{what}: {len(unreadable)} pair(s) with an unreadable file skipped", stacklevel=2)
    if not pairs:
        raise DataError(f"no readable {what} among the selection ({len(unreadable)} unreadable); check the files")
    return PairSet(pairs, unreadable)


# --------------------------------------------------------------------------------------- crops, flips


@dataclass(frozen=True)
class Crop:
    """A training window: top-left ``(y, x)`` in image pixels, ``size``, quarter turns ``k`` and flips."""

    y: int
    x: int
    size: int
    k: int
    hflip: bool
    vflip: bool


def draw_crop(height: int, width: int, cfg: CDDataConfig, generator: torch.Generator, align: int = 1) -> Crop:
    """A random ``cfg.crop_size`` window (corner a multiple of ``align``) and random flips / turns per ``cfg``."""
    size = cfg.crop_size
    if size % align:
        raise DataError(f"data.crop_size {size} must be a multiple of {align} (the coarsest feature stride)")
    if height < size or width < size:
        raise DataError(f"a {width}x{height} pair is smaller than data.crop_size {size}; lower data.crop_size")
    r = torch.randint(0, 2**31 - 1, (5,), generator=generator).tolist()
    y = (r[0] % ((height - size) // align + 1)) * align
    x = (r[1] % ((width - size) // align + 1)) * align
    return Crop(y, x, size, r[2] % 4 if cfg.rot90 else 0, cfg.hflip and r[3] % 2 == 1, cfg.vflip and r[4] % 2 == 1)


def apply_crop(array: torch.Tensor, crop: Crop, factor: int = 1) -> torch.Tensor:
    """``array (..., H / factor, W / factor)`` cut to the crop (scaled by ``1 / factor``), then turned and
    flipped: ``(..., size / factor, size / factor)``. Every array of a pair gets the same geometry."""
    y, x, s = crop.y // factor, crop.x // factor, crop.size // factor
    out = array[..., y : y + s, x : x + s]
    if crop.k:
        out = torch.rot90(out, crop.k, dims=(-2, -1))
    if crop.hflip:
        out = out.flip(-1)
    if crop.vflip:
        out = out.flip(-2)
    return out
