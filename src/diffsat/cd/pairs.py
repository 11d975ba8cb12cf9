"""Change-detection pairs: before (A), after (B) and change label, read from LEVIR-CD or open-cd folders.

Layouts::

    LEVIR-CD (BIT_CD, ChangeFormer, DDPM-CD)      open-cd
    root/A/<name>.png      before                   root/<split>/A/<name>.png
    root/B/<name>.png      after, same name         root/<split>/B/<name>.png
    root/label/<name>.png  change mask              root/<split>/label/<name>.png
    root/list/<split>.txt  one name per line

Pairs may have any size (A, B and label of one pair alike). Images are read as RGB (alpha dropped with a
warning, grey expanded); labels as one channel with values 0/255 or 0/1 (grey, or RGB with equal channels,
as DDPM-CD reads them) and held as 0/1. An unreadable file skips its pair with a warning and is counted;
every other defect (an A without its B or label, sizes that differ, a label of more than two values, an
empty selection) is a :class:`~diffsat.data.dataset.DataError` naming the file.

Training crops (:func:`draw_crop`, :func:`apply_crop`) cut the same window out of every aligned array of a
pair (images, label, feature maps at 1/f of the resolution) and give all of them the same flips and
quarter turn.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.dataset import DataError
from ..data.folder import IMAGE_SUFFIXES
from ..data.levir import read_list
from ..data.tiles import DECODE_ERRORS, WARN_EACH, has_alpha, to_mode
from .config import CDDataConfig, PairSource


@dataclass
class Pair:
    """One pair: ``before`` / ``after`` uint8 ``(3, H, W)`` in [0, 255]; ``label`` uint8 ``(H, W)`` in {0, 1}
    or ``None`` (prediction input); ``name`` the file name (shared by A, B and label); ``root`` its folder."""

    name: str
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray | None
    root: Path

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.before.shape[1]), int(self.before.shape[2])


@dataclass
class PairSet:
    """The readable pairs of a selection, and the files that could not be read (their pairs skipped)."""

    pairs: list[Pair]
    unreadable: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        roots = sorted({str(p.root) for p in self.pairs})
        bad = f", {len(self.unreadable)} unreadable file(s) skipped" if self.unreadable else ""
        return f"{len(self.pairs)} pairs from {', '.join(roots)}{bad}"


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


def read_pair(base: Path, name: str, need_label: bool) -> Pair:
    """Read one pair (sizes checked); raises DECODE_ERRORS for an unreadable file, DataError for a bad one."""
    a_path, b_path, label_path = _files(base, name, need_label)
    before, after = read_rgb(a_path), read_rgb(b_path)
    if before.shape != after.shape:
        raise DataError(f"{b_path}: {after.shape[2]}x{after.shape[1]} but its A is "
                        f"{before.shape[2]}x{before.shape[1]}; A and B of a pair must have one size")
    label = read_label(label_path) if label_path is not None else None
    if label is not None and label.shape != before.shape[1:]:
        raise DataError(f"{label_path}: {label.shape[1]}x{label.shape[0]} but its A is "
                        f"{before.shape[2]}x{before.shape[1]}; the label must have the images' size")
    return Pair(name, before, after, label, base)


def load_pairs(sources: tuple[PairSource, ...] | list[PairSource], need_labels: bool = True,
               what: str = "pairs") -> PairSet:
    """Every selected pair of ``sources`` in order; unreadable files are warned about, skipped and counted."""
    if not sources:
        raise DataError(f"no {what}: the split lists no pair source; add one to the config's data section")
    pairs, unreadable = [], []
    for source in sources:
        base, names = pair_folder(source)
        for name in names:
            try:
                pairs.append(read_pair(base, name, need_labels))
            except DataError:  # a ValueError, as some decode errors are: not an unreadable file
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
