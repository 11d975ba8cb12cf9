"""LEVIR-CD / LEVIR-CD256 change-detection folders, read as an (unconditional) image dataset.

The layout, as the change-detection code (BIT_CD, ChangeFormer, DDPM-CD) ships it::

    root/A/<name>.png       image before the change (256x256 RGB in LEVIR-CD256)
    root/B/<name>.png       image after the change, same name
    root/label/<name>.png   change mask (not used here: generation needs images only)
    root/list/train.txt     one file name per line (also val.txt, test.txt, demo.txt)

``data.levir_images`` takes the ``A`` images, the ``B`` images or ``both`` (labels 0 = A, 1 = B, in name
order, A before B); ``data.levir_list`` takes the names in ``list/<name>.txt`` (in its order), or every
image in the chosen folders when ``None``; ``data.holdout`` then sets every ``holdout``-th of these aside
as the ``test`` split (``data.split``). A listed file that does not exist is skipped with a warning
and counted. Odd sizes, alpha channels and unreadable files are handled by :mod:`diffsat.data.tiles`
(``data.on_size_mismatch``), each named in a warning, so training never meets a bad file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from diffsat.config import DataConfig
from diffsat.data.dataset import DataError, ImageDataset
from diffsat.data.folder import IMAGE_SUFFIXES, split_indices
from diffsat.data.tiles import (
    WARN_EACH,
    Decoded,
    decode_tiles,
    describe_tiles,
    plan_tiles,
)

SIDES = {"A": ("A",), "B": ("B",), "both": ("A", "B")}
"""Folders read for each ``data.levir_images``; the label of an image is the index of its folder in
:data:`CLASS_NAMES`."""
CLASS_NAMES = ("A", "B")


def levir_root(cfg: DataConfig) -> Path:
    """``cfg.path`` as an absolute folder holding the ``A/`` / ``B/`` folders ``cfg.levir_images`` needs."""
    if cfg.path is None:
        raise DataError("data.kind 'levir' needs data.path: set it to a LEVIR-CD folder (A/, B/, list/)")
    root = Path(os.path.abspath(Path(cfg.path).expanduser()))
    if not root.is_dir():
        raise DataError(f"data.path '{root}' is not an existing folder: fix data.path")
    for side in SIDES[cfg.levir_images]:
        if not (root / side).is_dir():
            other = {"A": "B", "B": "A"}[side]
            hint = f" or set data.levir_images='{other}'" if (root / other).is_dir() else ""
            raise DataError(
                f"{root}: no {side}/ folder, so this is not a LEVIR-CD layout (A/, B/, label/, list/); "
                f"fix data.path{hint}"
            )
    return root


def list_file(root: Path, name: str) -> Path:
    """``root/list/<name>`` (``.txt`` added when missing); if absent a :class:`DataError` naming the lists."""
    path = root / "list" / (name if name.endswith(".txt") else f"{name}.txt")
    if not path.is_file():
        found = sorted(p.stem for p in (root / "list").glob("*.txt")) if (root / "list").is_dir() else []
        have = f"lists there: {', '.join(found)}" if found else f"{root / 'list'} holds no .txt lists"
        raise DataError(f"data.levir_list '{name}': {path} not found ({have}); fix or unset data.levir_list")
    return path


def read_list(path: Path) -> list[str]:
    """The file names in a list file, in order, blank lines and repeats dropped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable list file ({err})") from None
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def _folder_names(root: Path, sides: tuple[str, ...]) -> list[str]:
    """Sorted names of the image files in any of ``root/<side>`` (hidden files ignored)."""
    names = {
        p.name
        for side in sides
        for p in (root / side).iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    }
    return sorted(names)


def select_files(root: Path, cfg: DataConfig) -> tuple[list[Path], list[int], list[Path]]:
    """``(files, their labels 0 = A / 1 = B, listed files that are missing)`` for ``cfg``'s selection."""
    sides = SIDES[cfg.levir_images]
    listed = cfg.levir_list is not None
    names = read_list(list_file(root, cfg.levir_list)) if listed else _folder_names(root, sides)
    files, labels, missing = [], [], []
    for name in names:
        for side in sides:
            path = root / side / name
            if path.is_file():
                files.append(path)
                labels.append(CLASS_NAMES.index(side))
            elif listed:
                missing.append(path)
    return files, labels, missing


def _warn_missing(root: Path, missing: list[Path]) -> None:
    for path in missing[:WARN_EACH]:
        warnings.warn(f"{path}: listed in data.levir_list but missing; skipped", stacklevel=3)
    if missing:
        warnings.warn(f"{root}: {len(missing)} listed image file(s) missing, skipped", stacklevel=3)


def load_levir(cfg: DataConfig) -> ImageDataset:
    """The selected LEVIR-CD images as an :class:`ImageDataset`.

    Images: ``(N, cfg.channels, S, S)`` uint8 in ``[0, 255]`` (``S``: ``cfg.load_size``, default
    ``cfg.image_size``, or the stored 256 with ``cfg.random_crop``), N the usable files of the selection
    (at most ``cfg.limit``, the first in selection order). Labels ``(N,)`` int64: 0 for A, 1 for B.
    """
    root = levir_root(cfg)
    files, labels, missing = select_files(root, cfg)
    _warn_missing(root, missing)
    keep = split_indices(len(files), cfg, f"LEVIR-CD {root}")
    files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    what = f"list {cfg.levir_list}" if cfg.levir_list is not None else "all images"
    if not files:
        raise DataError(
            f"{root}: the selection is empty (data.levir_images='{cfg.levir_images}', {what}); "
            "check data.levir_list and data.levir_images"
        )
    where = f"LEVIR-CD {root}"
    plan = plan_tiles(files, cfg, where)
    decoded = decode_tiles(files, plan, cfg.limit, where)
    return ImageDataset(
        images=torch.from_numpy(decoded.pixels),
        labels=torch.tensor(labels, dtype=torch.int64)[decoded.kept],
        source=_describe(where, cfg, what, decoded, len(files), len(missing), describe_tiles(cfg, plan)),
        class_names=CLASS_NAMES,
    )


def _describe(
    where: str, cfg: DataConfig, what: str, decoded: Decoded, total: int, missing: int, tiles: str
) -> str:
    """E.g. ``LEVIR-CD /x/levir (list demo, A+B: all 14 images, RGB 256x256 resized to 64 px)``."""
    n = len(decoded.kept)
    sides = "A+B" if cfg.levir_images == "both" else cfg.levir_images
    count = f"{n} of {total} images" if n < total else f"all {total} images"
    parts = [f"{what}, {sides}: {count}" if cfg.levir_list is not None else f"{sides}: {count}", tiles]
    if cfg.holdout is not None:
        parts.insert(1, f"split {cfg.split}: 1 in {cfg.holdout} images held out")
    if missing:
        parts.append(f"{missing} listed file(s) missing")
    parts += decoded.summary()
    return f"{where} ({', '.join(parts)})"
