"""Georeferenced outputs: GeoTIFFs written window by window, and change polygons as GeoJSON.

A :class:`GeoTiffWriter` writes a tiled, deflate-compressed GeoTIFF on a :class:`~diffsat.geo.raster.Grid`
(the input's CRS and transform) with its nodata value set, to a temporary name that becomes the file only
when every window is written (a crash leaves no half file). :func:`change_polygons` turns a written mask
into GeoJSON polygons (one per 4-connected changed region, holes kept) with each polygon's area in square
metres (measured in a Lambert azimuthal equal-area projection centred on the scene, so it is right in any
CRS, degrees included) and its mean change probability.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import geometry_mask, shapes
from rasterio.warp import transform_geom
from rasterio.windows import Window

from diffsat.fileio import atomic_write_text
from diffsat.geo.raster import Grid, RasterError, error_text, grid_of, open_raster

BLOCK = 256
"""Tile side of written GeoTIFFs."""
WGS84 = CRS.from_epsg(4326)


class GeoTiffWriter:
    """``with GeoTiffWriter(path, grid, count, dtype, nodata) as w: w.write(array, row, col)``."""

    def __init__(self, path: str | Path, grid: Grid, count: int, dtype: str, nodata: float | None,
                 descriptions: tuple[str, ...] | None = None) -> None:
        self.path, self.grid = Path(path), grid
        self.profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": count,
                        "dtype": dtype, "nodata": nodata, "transform": grid.transform, "tiled": True,
                        "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate"}
        if grid.crs is not None:
            self.profile["crs"] = grid.crs
        self.descriptions = descriptions
        self._tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        self._dataset: Any = None

    def __enter__(self) -> "GeoTiffWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # an image without georeferencing (samples) is written as such
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dataset = rasterio.open(self._tmp, "w", **self.profile)
        except RasterioError as err:
            raise RasterError(f"{self.path}: cannot be written ({error_text(err)}); check the folder") from None
        for i, name in enumerate(self.descriptions or (), start=1):
            self._dataset.set_band_description(i, name)
        return self

    def write(self, array: np.ndarray, row: int, col: int) -> None:
        """``array`` ``(count, h, w)`` or ``(h, w)`` at pixel ``(row, col)`` of the grid."""
        data = array if array.ndim == 3 else array[None]
        self._dataset.write(data.astype(self.profile["dtype"], copy=False),
                            window=Window(col, row, data.shape[2], data.shape[1]))

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._dataset.close()
        if kind is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_geotiff(path: str | Path, array: np.ndarray, grid: Grid, nodata: float | None) -> Path:
    """A whole ``(count, H, W)`` or ``(H, W)`` array on ``grid`` as one GeoTIFF."""
    data = array if array.ndim == 3 else array[None]
    with GeoTiffWriter(path, grid, data.shape[0], str(data.dtype), nodata) as w:
        w.write(data, 0, 0)
    return Path(path)


def ring_area(ring: list[list[float]] | list[tuple[float, float]]) -> float:
    """Planar area of a closed ring of ``(x, y)`` points (shoelace), positive."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def equal_area_crs(grid: Grid) -> CRS:
    """Lambert azimuthal equal-area (metres) centred on the grid's centre."""
    left, bottom, right, top = grid.bounds
    lon, lat = transform_geom(grid.crs, WGS84, {"type": "Point", "coordinates": ((left + right) / 2,
                                                                                 (bottom + top) / 2)})["coordinates"]
    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +datum=WGS84 +units=m +no_defs")


def polygon_area(geom: dict, crs: CRS, equal_area: CRS) -> float:
    """Area in square metres of a GeoJSON polygon in ``crs``: outer ring minus holes, in ``equal_area``."""
    projected = transform_geom(crs, equal_area, geom)
    rings = projected["coordinates"]
    return ring_area(rings[0]) - sum(ring_area(r) for r in rings[1:])


def change_polygons(mask_path: str | Path, probability_path: str | Path | None = None,
                    wgs84: bool = False) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the changed regions (value 1) of a mask GeoTIFF, in its CRS (or EPSG:4326
    with ``wgs84``). Properties: ``id``, ``pixels``, ``area_m2`` (None without a CRS) and
    ``mean_probability`` (from the probability GeoTIFF on the same grid, when given). GDAL traces the regions
    from the file itself and each polygon's statistics are read in its bounding box, so memory follows the
    largest region, not the scene."""
    with open_raster(mask_path) as ds, ExitStack() as stack:
        grid = grid_of(ds)
        prob = stack.enter_context(open_raster(probability_path)) if probability_path else None
        if prob is not None and (prob.height, prob.width) != (ds.height, ds.width):
            raise RasterError(f"{probability_path}: {prob.width}x{prob.height} but the mask is {ds.width}x{ds.height}")
        equal_area = equal_area_crs(grid) if grid.crs is not None else None
        features = []
        for geom, value in shapes(rasterio.band(ds, 1), connectivity=4, transform=grid.transform):
            if int(value) != 1:
                continue
            window, inside = _footprint(ds, geom)
            mean = None if prob is None else float(prob.read(1, window=window)[inside].mean())
            area = polygon_area(geom, grid.crs, equal_area) if equal_area is not None else None
            out_geom = transform_geom(grid.crs, WGS84, geom) if wgs84 and grid.crs is not None else geom
            features.append({"type": "Feature", "geometry": out_geom,
                             "properties": {"id": len(features) + 1, "pixels": int(inside.sum()), "area_m2": area,
                                            "mean_probability": mean}})
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    crs = WGS84 if wgs84 else grid.crs
    if crs is not None and crs != WGS84:
        doc["crs"] = {"type": "name", "properties": {"name": crs.to_string()}}
    return doc


def _footprint(ds: Any, geom: dict) -> tuple[Window, np.ndarray]:
    """The pixel window of a polygon's bounding box and the polygon's pixels in it (bool)."""
    xs, ys = zip(*geom["coordinates"][0])
    rows, cols = rasterio.transform.rowcol(ds.transform, [min(xs), max(xs)], [max(ys), min(ys)], op=round)
    r0, r1 = max(0, min(rows)), min(ds.height, max(rows))
    c0, c1 = max(0, min(cols)), min(ds.width, max(cols))
    window = Window(c0, r0, max(1, c1 - c0), max(1, r1 - r0))
    inside = geometry_mask([geom], out_shape=(int(window.height), int(window.width)),
                           transform=ds.window_transform(window), invert=True)
    return window, inside


def write_polygons(path: str | Path, mask_path: str | Path, probability_path: str | Path | None = None,
                   wgs84: bool = False) -> int:
    """:func:`change_polygons` written to ``path`` (atomically); returns the number of polygons."""
    doc = change_polygons(mask_path, probability_path, wgs84)
    atomic_write_text(path, json.dumps(doc) + "\n")
    return len(doc["features"])
