"""Reading rasters with rasterio: any file GDAL reads, any band count and dtype, onto one grid.

A :class:`BandStack` is an ordered list of :class:`Band` s (a band of a file: a multi-band GeoTIFF, or the
single-band files of a folder as Sentinel-2 and OSCD ship them) read onto one :class:`Grid` (CRS, affine
transform, size). A band whose file lies on the grid, or on a grid shifted by whole pixels, is read as a
window of the file; any other band (another pixel size, another CRS, a fractional offset) is resampled onto
the grid through a ``WarpedVRT`` (bilinear for reflectance, nearest for masks), window by window, so reading
never holds more than the window. Values come back as float32 ``(C, h, w)`` in the file's own units, with a
validity mask ``(h, w)`` that is False where any band is nodata or lies outside its file.

Every failure of rasterio or GDAL (missing, unreadable or truncated file, a band that does not exist) is a
:class:`RasterError`: one line naming the file and the fix.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from diffsat.errors import DiffsatError

RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".jp2", ".vrt", ".img"})
"""File suffixes read with rasterio (PNG / JPEG stay with PIL unless a reader asks for rasterio)."""
SENTINEL2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
"""Sentinel-2 MSI band names in wavelength order (B8A after B08), the order a folder of band files takes."""
_BAND_CODE = re.compile(r"(?:^|[_-])(B\d{1,2}A?)$", re.IGNORECASE)
RESAMPLING = {"bilinear": Resampling.bilinear, "nearest": Resampling.nearest}
GDAL_CACHE_BYTES = 128 << 20
"""GDAL's block cache while a stack is read (its default, 5 % of the machine's memory, would let a scene read
window by window fill that much memory). rasterio passes the value to GDAL in bytes."""


class RasterError(DiffsatError):
    """A raster that cannot be read or used; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Grid:
    """A pixel grid: ``crs`` (None for a raster without georeferencing), ``transform`` (pixel -> map
    coordinates of the pixel corners), ``width`` and ``height`` in pixels."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in map units, both positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in map units."""
        t = self.transform
        xs = [t.c, t.c + t.a * self.width, t.c + t.b * self.height, t.c + t.a * self.width + t.b * self.height]
        ys = [t.f, t.f + t.d * self.width, t.f + t.e * self.height, t.f + t.d * self.width + t.e * self.height]
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def window(self, row: int, col: int, height: int, width: int) -> "Grid":
        """The grid of the window whose top-left pixel is ``(row, col)``."""
        return Grid(self.crs, self.transform @ Affine.translation(col, row), width, height)

    def offset_in(self, other: "Grid") -> tuple[int, int] | None:
        """``(row, col)`` of this grid's top-left pixel in ``other`` when both share CRS, pixel size and
        axes and differ by whole pixels; else None (reading one onto the other needs resampling)."""
        if (self.crs is None) != (other.crs is None) or (self.crs is not None and self.crs != other.crs):
            return None
        a, b = self.transform, other.transform
        if not all(math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12) for u, v in
                   ((a.a, b.a), (a.b, b.b), (a.d, b.d), (a.e, b.e))):
            return None
        col, row = ~b @ (a.c, a.f)
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        return int(round(row)), int(round(col))


@contextmanager
def open_raster(path: str | Path) -> Iterator[Any]:
    """``rasterio.open(path)`` with every rasterio / GDAL failure turned into one :class:`RasterError`
    line; rasters without georeferencing open quietly (:attr:`Grid.crs` is None)."""
    path = Path(path)
    if not path.is_file():
        raise RasterError(f"{path}: raster file not found; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except RasterioError as err:
        raise RasterError(f"{path}: not a raster GDAL can read ({error_text(err)}); re-export it as GeoTIFF") from None
    try:
        yield dataset
    finally:
        dataset.close()


def error_text(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def grid_of(dataset: Any) -> Grid:
    """The :class:`Grid` of an open rasterio dataset (``crs`` None without georeferencing)."""
    return Grid(dataset.crs if dataset.crs else None, dataset.transform, dataset.width, dataset.height)


@dataclass(frozen=True)
class Band:
    """Band ``index`` (1-based) of the raster file ``path``, called ``name``; ``grid``, ``dtype`` and
    ``nodata`` as the file states them."""

    path: Path
    index: int
    name: str
    grid: Grid
    dtype: str
    nodata: float | None


def file_bands(path: str | Path, one_of_many: bool = False) -> list[Band]:
    """The bands of one raster file, named by their descriptions, by a Sentinel-2 code at the end of a
    single-band file's name (``..._B8A.tif``), by the file's stem when it is ``one_of_many`` band files of
    a folder, or ``band<i>``."""
    path = Path(path)
    with open_raster(path) as ds:
        grid, code = grid_of(ds), _BAND_CODE.search(path.stem)
        names = []
        for i, desc in enumerate(ds.descriptions, start=1):
            if desc:
                names.append(desc)
            elif ds.count == 1 and code:
                names.append(code.group(1).upper())
            elif ds.count == 1 and one_of_many:
                names.append(path.stem)
            else:
                names.append(f"band{i}")
        return [Band(path, i, name, grid, ds.dtypes[i - 1], ds.nodatavals[i - 1])
                for i, name in enumerate(names, start=1)]


def folder_bands(folder: str | Path) -> list[Band]:
    """The bands of every raster file in ``folder`` (not recursive): Sentinel-2 band files in wavelength
    order (:data:`SENTINEL2_BANDS`), other files in name order."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise RasterError(f"{folder}: no raster files ({', '.join(sorted(RASTER_SUFFIXES))}); point at a "
                          "folder of band files or at one multi-band file")
    bands = [band for f in files for band in file_bands(f, one_of_many=len(files) > 1)]
    order = {name: i for i, name in enumerate(SENTINEL2_BANDS)}
    if all(b.name in order for b in bands):
        bands.sort(key=lambda b: order[b.name])
    return bands


def select_bands(bands: Sequence[Band], wanted: Sequence[str | int] | None, where: str) -> list[Band]:
    """``wanted`` bands, in that order, by name (case-insensitive) or 1-based position; None: all."""
    if wanted is None:
        return list(bands)
    by_name = {b.name.lower(): b for b in bands}
    chosen = []
    for w in wanted:
        if isinstance(w, int):
            if not 1 <= w <= len(bands):
                raise RasterError(f"{where}: band {w} does not exist (it has {len(bands)}: "
                                  f"{', '.join(b.name for b in bands)}); fix the bands setting")
            chosen.append(bands[w - 1])
        elif w.lower() in by_name:
            chosen.append(by_name[w.lower()])
        else:
            raise RasterError(f"{where}: no band named '{w}' (it has {', '.join(b.name for b in bands)}); "
                              "fix the bands setting")
    return chosen


def finest_grid(bands: Sequence[Band]) -> Grid:
    """The grid of the band with the smallest pixel area (the first of equals)."""
    return min((b.grid for b in bands), key=lambda g: g.res[0] * g.res[1])


@dataclass(frozen=True)
class BandStack:
    """Bands read onto one ``grid`` with ``resampling`` (``bilinear`` or ``nearest``) where they are not
    on it. ``source``: a short description for messages."""

    bands: tuple[Band, ...]
    grid: Grid
    resampling: str = "bilinear"
    source: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(b.dtype for b in self.bands)

    def on(self, grid: Grid) -> "BandStack":
        """The same bands read onto another grid."""
        return replace(self, grid=grid)

    @contextmanager
    def reader(self) -> Iterator["StackReader"]:
        """Open every file once for many :meth:`StackReader.read` calls."""
        with ExitStack() as stack:
            yield StackReader(self, stack)

    def read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """One read: see :meth:`StackReader.read`."""
        with self.reader() as r:
            return r.read(window, out_shape)


class StackReader:
    """Open datasets of a :class:`BandStack` (each file opened once, a ``WarpedVRT`` where a band is not on
    the grid); made by :meth:`BandStack.reader`."""

    def __init__(self, stack: BandStack, exits: ExitStack) -> None:
        self.stack = stack
        self._sources: dict[Path, tuple[Any, tuple[int, int] | None]] = {}
        exits.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        for band in stack.bands:
            if band.path in self._sources:
                continue
            ds = exits.enter_context(open_raster(band.path))
            offset = band.grid.offset_in(stack.grid)
            if offset is None:
                ds = exits.enter_context(self._warped(ds, band))
            self._sources[band.path] = (ds, offset)

    def _warped(self, ds: Any, band: Band) -> Any:
        g = self.stack.grid
        if band.grid.crs is None or g.crs is None:
            raise RasterError(f"{band.path}: {band.grid.width}x{band.grid.height} px without a CRS, but it must be "
                              f"resampled onto a {g.width}x{g.height} grid ({self.stack.source}); give every file "
                              "a CRS or the same size")
        try:
            return WarpedVRT(ds, crs=g.crs, transform=g.transform, width=g.width, height=g.height,
                             resampling=RESAMPLING[self.stack.resampling], dtype="float32", nodata=np.nan,
                             src_nodata=band.nodata)
        except RasterioError as err:
            raise RasterError(f"{band.path}: cannot be resampled onto the grid of {self.stack.source} "
                              f"({error_text(err)})") from None

    def read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Values float32 ``(C, h, w)`` (the file units; 0 where invalid) and the validity mask bool
        ``(h, w)`` of ``window`` of the grid (default: all of it), at ``out_shape`` (``(h, w)``, a decimated
        read: nearest sampling) when given. Pixels outside a file or nodata in any band are invalid."""
        g = self.stack.grid
        window = window or Window(0, 0, g.width, g.height)
        shape = out_shape or (int(window.height), int(window.width))
        values = np.zeros((self.stack.channels, *shape), dtype=np.float32)
        valid = np.ones(shape, dtype=bool)
        for c, band in enumerate(self.stack.bands):
            ds, offset = self._sources[band.path]
            win = window if offset is None else Window(window.col_off - offset[1], window.row_off - offset[0],
                                                       window.width, window.height)
            outside = offset is not None and not (win.col_off >= 0 and win.row_off >= 0 and
                                                  win.col_off + win.width <= ds.width and
                                                  win.row_off + win.height <= ds.height)
            try:  # a boundless read costs a VRT per call: only for windows that leave the file
                data = ds.read(band.index, window=win, out_shape=shape, masked=True, boundless=outside,
                               resampling=Resampling.nearest)
            except RasterioError as err:
                raise RasterError(f"{band.path}: read failed ({error_text(err)}); the file is damaged or "
                                  "truncated: download or export it again") from None
            mask = np.ma.getmaskarray(data)
            if np.issubdtype(data.dtype, np.floating):
                mask = mask | np.isnan(np.ma.getdata(data))
            values[c] = np.where(mask, 0.0, np.ma.getdata(data))
            valid &= ~mask
        return values, valid


def stack_from_path(path: str | Path, bands: Sequence[str | int] | None = None, resampling: str = "bilinear",
                    grid: Grid | None = None) -> BandStack:
    """The chosen ``bands`` of one raster file, or of a folder of band files, onto ``grid`` (default: the
    finest chosen band's grid)."""
    path = Path(path)
    if path.is_dir():
        all_bands = folder_bands(path)
    else:
        all_bands = file_bands(path)
    chosen = select_bands(all_bands, bands, str(path))
    return BandStack(tuple(chosen), grid or finest_grid(chosen), resampling, str(path))


EIGHT_BIT_NAMES = {1: ("grey",), 3: ("red", "green", "blue")}


class DecodedImage:
    """An 8-bit image file decoded in memory (PNG, JPEG): ``pixels`` uint8 ``(C, H, W)``, read like a
    :class:`BandStack` (bands ``red``, ``green``, ``blue``, or ``grey`` for one channel; no georeferencing)."""

    def __init__(self, pixels: np.ndarray, source: str) -> None:
        self.pixels, self.source = pixels, source
        h, w = pixels.shape[1:]
        self.grid = Grid(None, Affine.identity(), w, h)
        self.names = EIGHT_BIT_NAMES.get(self.channels, tuple(f"band{i}" for i in range(1, self.channels + 1)))
        self.dtypes = ("uint8",) * self.channels

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[0])

    @contextmanager
    def reader(self) -> Iterator["DecodedImage"]:
        yield self

    def read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`StackReader.read` (a decimated ``out_shape`` read by striding)."""
        h, w = self.grid.shape
        r0, c0, rh, cw = (0, 0, h, w) if window is None else \
            (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
        part = self.pixels[:, r0 : r0 + rh, c0 : c0 + cw]
        if out_shape is not None:
            part = part[:, :: max(1, rh // out_shape[0]), :: max(1, cw // out_shape[1])]
        return part.astype(np.float32), np.ones(part.shape[1:], dtype=bool)
