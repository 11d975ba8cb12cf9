"""Georeferenced rasters: reading any GDAL raster (bands, dtype, nodata, CRS, transform) with rasterio,
per-band normalisation, pairs of dates on one grid, the OSCD layout, windows over whole scenes, and
georeferenced outputs (GeoTIFF, GeoJSON polygons).

Below :mod:`diffsat.data` and :mod:`diffsat.cd`: it imports nothing of diffsat but :mod:`diffsat.errors`,
:mod:`diffsat.fileio` and :mod:`diffsat.progress`.
"""

from diffsat.geo.raster import Band, BandStack, Grid, RasterError, open_raster, stack_from_path

__all__ = ["Band", "BandStack", "Grid", "RasterError", "open_raster", "stack_from_path"]
