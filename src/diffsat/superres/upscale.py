"""Upscaling images of any size with a super-resolution run, window by window.

An input (PNG / JPEG, or any raster GDAL reads) is read in low-resolution windows of side ``S / scale``
(``S`` the run's training size) that overlap by ``2 * margin``; each window's outputs are made at ``S`` and
only their inner parts are kept, so the windows partition the output (:mod:`diffsat.geo.windows`) and memory
is bounded by the window. With ``draws > 1`` a diffusion run draws that many outputs per window: their mean
and the per-pixel standard deviation (mean over bands, in output units: the model's uncertainty) are
written beside the first draw.

Outputs: a PNG per input (first draw, and mean) for an 8-bit image that is not georeferenced and small
enough to hold (:data:`MAX_PNG_PIXELS`); otherwise GeoTIFFs written window by window on the input's grid with
the pixel size divided by the scale (CRS and origin kept). Values: 8-bit for 8-bit inputs; for a run trained
on rasters, the run's band normalisation inverted (float32, file units). The standard deviation map is a
float32 GeoTIFF.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rasterio.transform import Affine
from rasterio.windows import Window
from tqdm.auto import tqdm

from ..config import Config
from ..data.folder import IMAGE_SUFFIXES
from ..data.tiles import DECODE_ERRORS, has_alpha
from ..errors import DiffsatError
from ..geo.normalise import BandNormalisation, uint8_normalisation
from ..geo.raster import RASTER_SUFFIXES, BandStack, DecodedImage, Grid, stack_from_path
from ..geo.windows import Tile, pad_to, tiles
from ..geo.write import GeoTiffWriter
from ..sampling import SampleSettings
from .outputs import upscale_tiles

MAX_PNG_PIXELS = 64_000_000
"""Largest output (pixels) written as a PNG, which is assembled in memory; larger ones are GeoTIFFs."""
MARGIN_FRACTION = 8
"""Windows overlap by ``2 * max(MIN_MARGIN, window / MARGIN_FRACTION)`` low-resolution pixels."""
MIN_MARGIN = 2
"""Low-resolution pixels of context kept at least at a window's inner edge: the reach of bicubic upsampling."""


class UpscaleError(DiffsatError):
    """An input the run cannot upscale (one line naming the file and the fix)."""


Source = DecodedImage | BandStack


def decode_image(path: Path) -> DecodedImage:
    """An 8-bit PNG / JPEG as ``(C, H, W)`` uint8: grey stays one channel, RGB three (alpha dropped with a
    warning, palettes expanded); 16-bit and other modes are refused in one line."""
    try:
        with Image.open(path) as img:
            img.load()
            alpha = has_alpha(img)
            mode = {"L": "L", "LA": "L", "1": "L", "RGB": "RGB", "RGBA": "RGB", "P": "RGB", "PA": "RGB",
                    "CMYK": "RGB", "YCbCr": "RGB"}.get(img.mode)
            if mode is None:
                raise UpscaleError(f"{path}: {img.mode} pixels; give an 8-bit grey or RGB image, or a GeoTIFF")
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    except DECODE_ERRORS as err:
        raise UpscaleError(f"{path}: not a readable image ({type(err).__name__}: {err}); re-export it as PNG") from None
    if alpha:
        warnings.warn(f"{path}: transparency dropped", stacklevel=2)
    return DecodedImage(np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)),
                        str(path))


def open_source(path: Path, bands: tuple[str | int, ...] | None = None) -> Source:
    """The image at ``path``: a raster (GeoTIFF and GDAL's formats, ``bands`` chosen) or an 8-bit PNG / JPEG."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        return stack_from_path(path, bands)
    if bands is not None:
        raise UpscaleError(f"{path}: --bands applies to rasters (GeoTIFF), not to {path.suffix} images")
    return decode_image(path)


def input_paths(path: Path) -> list[Path]:
    """``path`` itself, or the images and rasters of the folder ``path`` in name order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UpscaleError(f"{path}: no such file or folder (--input takes an image, a GeoTIFF or a folder of them)")
    suffixes = IMAGE_SUFFIXES | RASTER_SUFFIXES
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise UpscaleError(f"{path}: holds no images ({', '.join(sorted(suffixes))}): give a folder of inputs")
    return found


def check_source(source: Source, path: Path, config: Config, norm: BandNormalisation | None) -> None:
    """One line naming ``path`` when its bands or values do not fit the run (``norm``: a raster run's band
    normalisation; ``None`` for a run on 8-bit images)."""
    channels = config.data.channels
    if source.channels != channels:
        kind = {1: "grey", 3: "RGB"}.get(channels, f"{channels}-band")
        raise UpscaleError(f"{path}: {source.channels} band(s) ({', '.join(source.names)}) but the run's model "
                           f"takes {kind} images of {channels} band(s): convert the input to {kind} (or pick "
                           f"{channels} bands of a raster with --bands)")
    if norm is not None:
        norm.check_bands(source.names, str(path))
    elif any(d != "uint8" for d in source.dtypes):
        raise UpscaleError(f"{path}: {'/'.join(sorted(set(source.dtypes)))} values, but the run was trained on "
                           "8-bit images: give 8-bit inputs (or train on rasters, data.kind 'rasters')")


@dataclass(frozen=True)
class UpscaleOptions:
    """``draws`` outputs per window (mean and standard deviation written when > 1), ``seed``, the sampler
    ``settings``, ``format`` (``auto``: PNG where possible, ``png``, ``tif``), ``window``: the low-resolution
    window side (``None``: the run's training size / scale; a multiple of ``2 ** (levels - 1) / scale``
    the network takes) and ``progress``."""

    settings: SampleSettings
    draws: int = 1
    seed: int = 0
    format: str = "auto"
    window: int | None = None
    progress: bool = True

    def window_for(self, config: Config) -> int:
        """The low-resolution window side for ``config``'s run (checked against what the network takes)."""
        scale, levels = config.condition.scale, len(config.model.channel_mults)
        window = self.window or config.data.image_size // scale
        factor = 2 ** (levels - 1)
        if (window * scale) % factor or window < 3 * MIN_MARGIN:
            raise UpscaleError(f"--window {window}: the network takes outputs of multiples of {factor} px, so "
                               f"low-resolution windows of multiples of {max(1, factor // scale)} px (at least "
                               f"{3 * MIN_MARGIN}) at x{scale}")
        return window


@dataclass(frozen=True)
class Upscaled:
    """What :func:`upscale_file` wrote: ``output`` (first draw), ``mean`` / ``std`` with several draws."""

    output: Path
    mean: Path | None
    std: Path | None


class ArrayTarget:
    """An output held in memory: ``(C, H, W)`` float32 in output units."""

    def __init__(self, path: Path, channels: int, height: int, width: int) -> None:
        self.path, self.array = path, np.zeros((channels, height, width), dtype=np.float32)

    def write(self, values: np.ndarray, row: int, col: int) -> None:
        self.array[:, row : row + values.shape[1], col : col + values.shape[2]] = values

    def close(self, failed: bool = False) -> None:
        """Write the PNG (nothing when upscaling failed)."""
        if failed:
            return
        pixels = np.clip(np.round(self.array), 0, 255).astype(np.uint8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        image = pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(image)).save(self.path)


class TiffTarget:
    """An output GeoTIFF written window by window."""

    def __init__(self, path: Path, grid: Grid, channels: int, dtype: str, names: tuple[str, ...] | None) -> None:
        self.path, self.dtype = path, dtype
        self.writer = GeoTiffWriter(path, grid, channels, dtype, None, descriptions=names)
        self.writer.__enter__()

    def write(self, values: np.ndarray, row: int, col: int) -> None:
        if self.dtype == "uint8":
            values = np.clip(np.round(values), 0, 255)
        self.writer.write(values.astype(self.dtype), row, col)

    def close(self, failed: bool = False) -> None:
        """Finish the file (a failed run leaves none: the temporary file is removed)."""
        err = RuntimeError("upscaling stopped") if failed else None
        self.writer.__exit__(type(err) if err else None, err, None)


def output_grid(grid: Grid, scale: int) -> Grid:
    """``grid`` with ``scale`` times the pixels: the same footprint, CRS and origin, pixel size / scale."""
    return Grid(grid.crs, grid.transform @ Affine.scale(1 / scale), grid.width * scale, grid.height * scale)


def input_windows(height: int, width: int, window: int, margin: int) -> list[Tile]:
    """The windows of a ``height x width`` input (padded to at least one window) whose kept part lies in it."""
    padded = tiles(max(height, window), max(width, window), window, margin)
    return [t for t in padded if t.y0 < height and t.x0 < width]


def _read_windows(source: Source, norm: BandNormalisation, windows: list[Tile], window: int
                  ) -> Iterator[tuple[Tile, np.ndarray]]:
    """Each of ``windows``' low-resolution values ``(C, window, window)`` in [-1, 1] (an input smaller than a
    window is padded by reflection)."""
    height, width = source.grid.shape
    with source.reader() as reader:
        if height < window or width < window:
            values, valid = reader.read()
            whole = pad_to(torch.from_numpy(norm.apply(values, valid)), max(height, window), max(width, window))
            read = lambda t: whole[:, t.y : t.y + window, t.x : t.x + window].numpy()  # noqa: E731
        else:
            read = lambda t: norm.apply(*reader.read(Window(t.x, t.y, window, window)))  # noqa: E731
        for t in windows:
            yield t, read(t)


def _batches(items: Iterator, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def upscale_file(network: torch.nn.Module, config: Config, path: Path, out_dir: Path, options: UpscaleOptions,
                 norm: BandNormalisation | None = None, bands: tuple[str | int, ...] | None = None) -> Upscaled:
    """Upscale the image at ``path`` into ``out_dir`` (``<stem>_x<scale>``, ``_mean``, ``_std``). ``norm``: a
    raster run's band normalisation (``None``: a run on 8-bit images); ``bands``: a raster input's bands."""
    source = open_source(path, bands)
    check_source(source, path, config, norm)
    raster_run = norm is not None
    norm = norm or uint8_normalisation(source.names)
    scale = config.condition.scale
    window, (height, width) = options.window_for(config), source.grid.shape
    margin = max(MIN_MARGIN, window // MARGIN_FRACTION)
    grid = output_grid(source.grid, scale)
    fmt = _format(options.format, source, grid, path)
    stem = out_dir / f"{path.stem}_x{scale}"
    targets = _targets(stem, fmt, grid, source, options.draws, raster_run)
    unit = (lambda x: norm.invert(x)) if raster_run else (lambda x: (x + 1) * 127.5)  # noqa: E731
    windows = input_windows(height, width, window, margin)
    per_batch = max(1, options.settings.batch_size // options.draws)
    bar = tqdm(total=len(windows), desc=f"upscaling {path.name} x{scale}", unit="window", disable=not options.progress)
    done, failed = 0, True
    try:
        for batch in _batches(_read_windows(source, norm, windows, window), per_batch):
            low = torch.from_numpy(np.stack([values for _, values in batch]))
            outs = upscale_tiles(network, config, low, options.seed + done * options.draws, options.settings,
                                 options.draws).numpy()
            for (t, _), draws in zip(batch, outs):
                _write_window(targets, t, draws, scale, (height, width), unit)
            done += len(batch)
            bar.update(len(batch))
        failed = False
    finally:
        bar.close()
        for target in targets.values():
            target.close(failed)
    return Upscaled(targets["output"].path, *(targets[k].path if k in targets else None for k in ("mean", "std")))


def _format(asked: str, source: Source, grid: Grid, path: Path) -> str:
    """``png`` or ``tif`` for this input (see the module docstring); a PNG asked of an input that cannot be
    one is a one-line error."""
    eight_bit = all(d == "uint8" for d in source.dtypes) and source.channels in (1, 3)
    too_big = grid.width * grid.height > MAX_PNG_PIXELS
    if asked == "png" and (too_big or not eight_bit):
        why = (f"its {grid.width} x {grid.height} output is over {MAX_PNG_PIXELS // 10**6} MP, too large to hold "
               "in memory" if too_big else "its values are not 8-bit grey or RGB")
        raise UpscaleError(f"{path}: cannot be written as PNG: {why}; use --format tif (written window by window)")
    if asked == "auto":
        return "png" if eight_bit and not too_big and not grid.georeferenced else "tif"
    return asked


def _targets(stem: Path, fmt: str, grid: Grid, source: Source, draws: int, raster_run: bool) -> dict:
    c = source.channels
    dtype = "float32" if raster_run else "uint8"
    names = tuple(source.names)

    def image(suffix: str) -> ArrayTarget | TiffTarget:
        if fmt == "png":
            return ArrayTarget(stem.with_name(stem.name + suffix + ".png"), c, grid.height, grid.width)
        return TiffTarget(stem.with_name(stem.name + suffix + ".tif"), grid, c, dtype, names)

    targets = {"output": image("")}
    if draws > 1:
        targets["mean"] = image("_mean")
        targets["std"] = TiffTarget(stem.with_name(stem.name + "_std.tif"), grid, 1, "float32", ("std",))
    return targets


def _write_window(targets: dict, t: Tile, draws: np.ndarray, scale: int, size: tuple[int, int], unit) -> None:
    """The kept part of one window's ``draws`` ``(K, C, S, S)`` (model range) into the targets, in output units."""
    height, width = size
    y0, y1, x0, x1 = t.y0, min(t.y1, height), t.x0, min(t.x1, width)
    rows = slice((y0 - t.y) * scale, (y1 - t.y) * scale)
    cols = slice((x0 - t.x) * scale, (x1 - t.x) * scale)
    values = np.stack([unit(d[:, rows, cols]) for d in draws])
    targets["output"].write(values[0], y0 * scale, x0 * scale)
    if "mean" in targets:
        targets["mean"].write(values.mean(0), y0 * scale, x0 * scale)
        targets["std"].write(values.std(0).mean(0, keepdims=True), y0 * scale, x0 * scale)
