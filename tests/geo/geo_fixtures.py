"""Rasters written by the tests themselves: GeoTIFFs with a CRS, transform, nodata, any dtype and band count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine, from_origin

UTM = "EPSG:32632"
ORIGIN = (500_000.0, 5_000_000.0)
OSCD_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "oscd"


def write_raster(path: Path, array: np.ndarray, crs: str | None = UTM, transform: Affine | None = None,
                 nodata: float | None = None, descriptions: tuple[str, ...] | None = None) -> Path:
    """``array`` ``(C, H, W)`` (its dtype kept) as a GeoTIFF; default grid: 10 m pixels at :data:`ORIGIN`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = array.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": str(array.dtype),
               "transform": transform or from_origin(*ORIGIN, 10, 10), "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array)
        for i, name in enumerate(descriptions or (), start=1):
            ds.set_band_description(i, name)
    return path


def reflectance(bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth uint16 'reflectance' ``(bands, height, width)`` in about [500, 4500] (band ``c`` offset by 100 c)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 2000 + 1500 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    out = np.stack([base + 100 * c + rng.normal(0, 30, (height, width)) for c in range(bands)])
    return np.clip(out, 0, 65535).astype(np.uint16)


def sentinel_folder(folder: Path, height: int = 60, width: int = 60, seed: int = 0,
                    origin: tuple[float, float] = ORIGIN) -> Path:
    """A Sentinel-2-like date: 13 single-band uint16 files ``T_<band>.tif`` at 10, 20 and 60 m (sizes
    ``H``, ``H/2`` and ``H/6``; band ``c`` holds ``1000 + 100 c + noise``) on one footprint."""
    res = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
           "B12": 20, "B01": 60, "B09": 60, "B10": 60}
    rng = np.random.default_rng(seed)
    for c, (band, r) in enumerate(sorted(res.items())):
        f = r // 10
        data = (1000 + 100 * c + rng.integers(0, 50, (1, height // f, width // f))).astype(np.uint16)
        write_raster(folder / f"T32TPP_{band}.tif", data, transform=from_origin(*origin, r, r))
    return folder
