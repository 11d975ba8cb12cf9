"""Decoding image files into equally sized uint8 tiles held in memory.

Shared by the image-folder and LEVIR-CD loaders. One pass reads only the file headers: the most common
``(width, height)`` becomes the *reference size*, and the memory the decoded tiles will need is checked
against the memory available. The second pass decodes every file (in the given order, until ``limit``
tiles) and applies, per file:

1. the size policy ``data.on_size_mismatch`` to an image whose size differs from the reference:
   ``resize`` it (step 3 as for any image), ``crop`` its centre to the reference size (keeps the ground
   resolution; images smaller than the reference are skipped), or ``skip`` it;
2. the channel conversion to RGB (``channels=3``) or grey (``channels=1``): alpha dropped (with a
   warning), palette expanded, 16-bit scaled to 8-bit;
3. the centre square crop and resampling to the held side (LANCZOS down, BICUBIC up).

Unreadable files (bad header or bad data) are skipped with a warning and counted, as are files skipped
by the size policy. Every file is decoded here, before training starts, so a bad file can never stop a
run mid-epoch.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data.dataset import DataError
from diffsat.progress import progress_bar

MODES = {1: "L", 3: "RGB"}
"""PIL mode of the tiles for each ``data.channels``."""
DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError
)
"""What PIL raises on a corrupt or truncated file."""
PROGRESS_THRESHOLD = 500
"""Show a decode progress bar when more than this many files are to be read."""
WARN_EACH = 10
"""At most this many per-file warnings of each kind (unreadable, skipped, adjusted); a summary follows."""
MEMORY_WARN_FRACTION = 0.5
"""Warn when the decoded tiles would take more than this fraction of the memory available."""

Size = tuple[int, int]


@dataclass(frozen=True)
class TilePlan:
    """How every file becomes a tile: ``channels`` 1/3, the ``reference`` (width, height), the ``held``
    side of the square tiles, and the size ``policy`` (crop/resize/skip) for other sizes."""

    channels: int
    reference: Size
    held: int
    policy: str


@dataclass
class Decoded:
    """Result of :func:`decode_tiles`: ``pixels`` uint8 ``(N, C, S, S)`` in ``[0, 255]``; ``kept`` the
    indices (into the file list) of its N tiles; the files ``unreadable``, ``skipped`` by the size policy,
    and ``adjusted`` (cropped, resized or alpha dropped)."""

    pixels: np.ndarray
    kept: list[int]
    unreadable: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    adjusted: list[Path] = field(default_factory=list)

    def summary(self) -> list[str]:
        """Short phrases for the dataset's ``source`` text, e.g. ``["1 unreadable file(s) skipped"]``."""
        parts = []
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable file(s) skipped")
        if self.skipped:
            parts.append(f"{len(self.skipped)} of another size skipped")
        if self.adjusted:
            parts.append(f"{len(self.adjusted)} cropped/resized/converted")
        return parts


# ------------------------------------------------------------------------------------------ one image


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` carries transparency (RGBA, LA, PA, or a palette with a transparent colour)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode`` ("RGB"/"L"): alpha dropped, palette expanded, 16-bit scaled to 8-bit (``>> 8``)."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """The central ``width x height`` window of ``img`` (which must be at least that large)."""
    w, h = img.size
    left, top = (w - width) // 2, (h - height) // 2
    return img.crop((left, top, left + width, top + height))


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``min(w, h)`` square, then resize to ``size`` (LANCZOS down, BICUBIC up)."""
    side = min(img.size)
    img = center_crop(img, side, side)
    if side == size:
        return img
    resample = Image.Resampling.LANCZOS if side > size else Image.Resampling.BICUBIC
    return img.resize((size, size), resample)


def tile_array(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """``img`` as uint8 ``(size, size, channels)`` in ``[0, 255]``: converted (:func:`to_mode`), its centre
    square resampled to ``size`` (:func:`center_crop_resize`)."""
    arr = np.asarray(center_crop_resize(to_mode(img, MODES[channels]), size), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_tile(path: Path, plan: TilePlan) -> tuple[np.ndarray | None, list[str]]:
    """Decode one file per ``plan``: ``(uint8 (S, S, C) tile or None when skipped, notes)``.

    ``notes`` say what was done to an odd image (e.g. ``"RGBA, alpha dropped"``,
    ``"768x384 centre-cropped to 256x256"``); empty for a regular one. Raises one of
    :data:`DECODE_ERRORS` on a corrupt file.
    """
    notes: list[str] = []
    with Image.open(path) as img:
        img.load()
        (w, h), (rw, rh) = img.size, plan.reference
        if (w, h) != (rw, rh):
            size = f"{w}x{h}, not {rw}x{rh}"
            if plan.policy == "skip":
                return None, [f"{size}: skipped (data.on_size_mismatch='skip')"]
            if plan.policy == "crop":
                if w < rw or h < rh:
                    return None, [f"{size}: too small to crop, skipped (data.on_size_mismatch='crop')"]
                img = center_crop(img, rw, rh)
                notes.append(f"{w}x{h} centre-cropped to {rw}x{rh}")
            else:
                notes.append(f"{w}x{h} resized (data.on_size_mismatch='resize')")
        if has_alpha(img):
            notes.insert(0, f"{img.mode}, alpha dropped")
        return tile_array(img, plan.channels, plan.held), notes


# ------------------------------------------------------------------------------------ the whole list


def read_sizes(files: list[Path]) -> list[Size | None]:
    """``(width, height)`` of each file from its header alone; ``None`` where the header is unreadable."""
    sizes: list[Size | None] = []
    for path in files:
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except DECODE_ERRORS:
            sizes.append(None)
    return sizes


def reference_size(sizes: list[Size | None]) -> Size | None:
    """The most common size (ties: the one seen first); ``None`` when no header was readable."""
    counts = Counter(s for s in sizes if s is not None)
    return max(counts, key=counts.__getitem__) if counts else None


def held_side(cfg: DataConfig, reference: Size, where: str) -> int:
    """Side of the held tiles: ``load_size``, else the stored side with ``random_crop``, else image_size."""
    if cfg.load_size is not None:
        return cfg.load_size
    if not cfg.random_crop:
        return cfg.image_size
    side = min(reference)
    if side < cfg.image_size:
        raise DataError(
            f"{where}: the images are {reference[0]}x{reference[1]}, smaller than data.image_size "
            f"{cfg.image_size}, so random crops are impossible; lower data.image_size or set data.load_size"
        )
    return side


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_memory(n: int, channels: int, side: int, where: str, available: int | None = None) -> int:
    """Check that ``n`` uint8 tiles ``(channels, side, side)`` fit in memory; returns their size in bytes.

    More than the available memory (``available``, default :func:`available_memory`) is a
    :class:`DataError` (decoding would end in the out-of-memory killer); more than
    :data:`MEMORY_WARN_FRACTION` of it is a warning, since training needs memory too.
    """
    need = n * channels * side * side
    avail = available_memory() if available is None else available
    if avail is None:
        return need
    fix = "set data.limit, a smaller data.load_size, or a list file with fewer images"
    if need > avail:
        raise DataError(
            f"{where}: holding {n} decoded images of {channels}x{side}x{side} needs {_gib(need)} of memory "
            f"but only {_gib(avail)} is available; {fix}"
        )
    if need > MEMORY_WARN_FRACTION * avail:
        warnings.warn(
            f"{where}: the {n} decoded images ({channels}x{side}x{side} uint8) take {_gib(need)}, more than "
            f"{MEMORY_WARN_FRACTION:.0%} of the {_gib(avail)} available; training may run out of memory "
            f"({fix})",
            stacklevel=3,
        )
    return need


class _Warner:
    """Per-file warnings of one kind, the first :data:`WARN_EACH` in full, then a count."""

    def __init__(self, what: str) -> None:
        self.what, self.files = what, []

    def add(self, path: Path, detail: str) -> None:
        self.files.append(path)
        if len(self.files) <= WARN_EACH:
            warnings.warn(f"{path}: {detail}", stacklevel=4)

    def finish(self, where: str) -> None:
        if self.files:
            more = f" ({len(self.files) - WARN_EACH} not named above)" if len(self.files) > WARN_EACH else ""
            warnings.warn(f"{where}: {len(self.files)} {self.what}{more}", stacklevel=4)


def plan_tiles(files: list[Path], cfg: DataConfig, where: str) -> TilePlan:
    """Read the headers of ``files`` and return the :class:`TilePlan` for ``cfg`` (memory checked)."""
    if cfg.channels not in MODES:
        raise DataError(f"data.channels={cfg.channels}: images load as 1 (grey) or 3 (RGB) channels")
    reference = reference_size(read_sizes(files))
    if reference is None:
        raise DataError(f"{where}: none of the {len(files)} image files could be read; check the files")
    held = held_side(cfg, reference, where)
    want = len(files) if cfg.limit is None else min(cfg.limit, len(files))
    check_memory(want, cfg.channels, held, where)
    return TilePlan(cfg.channels, reference, held, cfg.on_size_mismatch)


def describe_tiles(cfg: DataConfig, plan: TilePlan) -> str:
    """E.g. ``RGB 128x128 held at 128 px, random 64 px crops`` or ``RGB 128x128 resized to 64 px``."""
    w, h = plan.reference
    mode = MODES[plan.channels]
    if plan.held == cfg.image_size:
        as_is = (w, h) == (plan.held, plan.held)
        return f"{mode} {plan.held} px" if as_is else f"{mode} {w}x{h} resized to {plan.held} px"
    kind = "random" if cfg.random_crop else "centre"
    return f"{mode} {w}x{h} held at {plan.held} px, {kind} {cfg.image_size} px crops"


def decode_tiles(files: list[Path], plan: TilePlan, limit: int | None, where: str) -> Decoded:
    """Decode ``files`` in order per ``plan`` until ``limit`` tiles (all when ``None``).

    Returns :class:`Decoded` with ``pixels`` uint8 ``(N, C, S, S)``, ``S = plan.held``. Unreadable files
    and files skipped by the size policy are warned about (named) and counted; a :class:`DataError` when
    no tile results.
    """
    want = len(files) if limit is None else min(limit, len(files))
    side, c = plan.held, plan.channels
    pixels = np.empty((want, c, side, side), dtype=np.uint8)
    kept: list[int] = []
    bad, odd, skip = _Warner("unreadable image file(s) skipped"), _Warner("image(s) adjusted"), _Warner(
        "image(s) of another size skipped"
    )
    with progress_bar(want, "decoding images", enabled=want > PROGRESS_THRESHOLD) as bar:
        for i, path in enumerate(files):
            if len(kept) == want:
                break
            try:
                tile, notes = decode_tile(path, plan)
            except DECODE_ERRORS as err:
                bad.add(path, f"unreadable image skipped ({type(err).__name__}: {err})")
                continue
            if tile is None:
                skip.add(path, "; ".join(notes))
                continue
            if notes:
                odd.add(path, "; ".join(notes))
            pixels[len(kept)] = tile.transpose(2, 0, 1)
            kept.append(i)
            bar.update(1)
    for warner in (bad, skip, odd):
        warner.finish(where)
    if not kept:
        raise DataError(
            f"{where}: no usable image among {len(files)} files ({len(bad.files)} unreadable, "
            f"{len(skip.files)} of another size skipped); check the files or data.on_size_mismatch"
        )
    return Decoded(pixels[: len(kept)], kept, bad.files, skip.files, odd.files)
