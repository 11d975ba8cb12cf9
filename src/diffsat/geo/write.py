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
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.features import shapes
from rasterio.warp import transform_geom
from rasterio.windows import Window
from scipy import ndimage

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
    ``mean_probability`` (from the probability GeoTIFF on the same grid, when given)."""
    with open_raster(mask_path) as ds:
        grid, mask = grid_of(ds), ds.read(1) == 1
    labels, count = ndimage.label(mask)
    labels = labels.astype(np.int32)
    pixels = np.bincount(labels.ravel(), minlength=count + 1)
    means = _component_means(probability_path, labels, count) if probability_path else None
    equal_area = equal_area_crs(grid) if grid.crs is not None else None
    features = []
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=grid.transform):
        i = int(value)
        area = polygon_area(geom, grid.crs, equal_area) if equal_area is not None else None
        out_geom = transform_geom(grid.crs, WGS84, geom) if wgs84 and grid.crs is not None else geom
        features.append({"type": "Feature", "geometry": out_geom,
                         "properties": {"id": i, "pixels": int(pixels[i]), "area_m2": area,
                                        "mean_probability": None if means is None else float(means[i])}})
    features.sort(key=lambda f: f["properties"]["id"])
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    crs = WGS84 if wgs84 else grid.crs
    if crs is not None and crs != WGS84:
        doc["crs"] = {"type": "name", "properties": {"name": crs.to_string()}}
    return doc


def _component_means(path: str | Path, labels: np.ndarray, count: int) -> np.ndarray:
    """Mean of the raster at ``path`` over each label ``0..count``, read in row blocks."""
    sums = np.zeros(count + 1, dtype=np.float64)
    with open_raster(path) as ds:
        if (ds.height, ds.width) != labels.shape:
            raise RasterError(f"{path}: {ds.width}x{ds.height} but the mask is {labels.shape[1]}x{labels.shape[0]}")
        for row in range(0, ds.height, BLOCK):
            h = min(BLOCK, ds.height - row)
            block = ds.read(1, window=Window(0, row, ds.width, h)).astype(np.float64)
            sums += np.bincount(labels[row : row + h].ravel(), weights=block.ravel(), minlength=count + 1)
    return sums / np.maximum(np.bincount(labels.ravel(), minlength=count + 1), 1)


def write_polygons(path: str | Path, mask_path: str | Path, probability_path: str | Path | None = None,
                   wgs84: bool = False) -> int:
    """:func:`change_polygons` written to ``path`` (atomically); returns the number of polygons."""
    doc = change_polygons(mask_path, probability_path, wgs84)
    atomic_write_text(path, json.dumps(doc) + "\n")
    return len(doc["features"])
