"""Two dates onto one grid: the grid of the first (A), cut to where both images have pixels.

- Same CRS and pixel size, offsets of whole pixels: each date is read as a window of its own file.
- Another CRS, pixel size or a fractional offset: B is resampled onto A's grid (bilinear), with a warning
  naming both files.
- Neither image georeferenced: they must have the same size (pixel ``(i, j)`` of one is pixel ``(i, j)`` of
  the other); one georeferenced and the other not, or footprints that do not overlap, is a
  :class:`~diffsat.geo.raster.RasterError` naming both files.
"""

from __future__ import annotations

import math
import warnings

from rasterio.warp import transform_bounds

from diffsat.geo.raster import BandStack, Grid, RasterError


def _crs_name(grid: Grid) -> str:
    return grid.crs.to_string() if grid.crs is not None else "no CRS"


def intersection_grid(a: Grid, b: Grid, a_name: str, b_name: str) -> Grid:
    """A's grid cut (to whole pixels, inward) to the part of it that B's footprint covers."""
    if a.crs is None or b.crs is None:
        if a.crs is None and b.crs is None:
            if a.shape != b.shape:
                raise RasterError(f"{a_name} ({a.width}x{a.height}) and {b_name} ({b.width}x{b.height}): neither has "
                                  "a CRS and their sizes differ, so they cannot be put on one grid; georeference "
                                  "them or crop them to one size")
            return a
        bare = a_name if a.crs is None else b_name
        raise RasterError(f"{bare}: no CRS, but the other date has {_crs_name(a if a.crs else b)}; give both "
                          f"dates a CRS ({a_name}, {b_name})")
    left, bottom, right, top = transform_bounds(b.crs, a.crs, *b.bounds) if b.crs != a.crs else b.bounds
    al, ab, ar, at = a.bounds
    left, bottom, right, top = max(left, al), max(bottom, ab), min(right, ar), min(top, at)
    t = a.transform
    if t.b or t.d:
        raise RasterError(f"{a_name}: a rotated grid; warp it north-up (gdalwarp) first")
    cols = sorted(((left - t.c) / t.a, (right - t.c) / t.a))
    rows = sorted(((top - t.f) / t.e, (bottom - t.f) / t.e))
    c0, c1 = max(0, math.ceil(cols[0] - 1e-6)), min(a.width, math.floor(cols[1] + 1e-6))
    r0, r1 = max(0, math.ceil(rows[0] - 1e-6)), min(a.height, math.floor(rows[1] + 1e-6))
    if c1 <= c0 or r1 <= r0:
        raise RasterError(f"{a_name} and {b_name} do not overlap (bounds {tuple(round(v, 6) for v in a.bounds)} in "
                          f"{_crs_name(a)} against {tuple(round(v, 6) for v in b.bounds)} in {_crs_name(b)}); "
                          "give two images of one place")
    return a.window(r0, c0, r1 - r0, c1 - c0)


def align_pair(before: BandStack, after: BandStack) -> tuple[BandStack, BandStack]:
    """Both dates on the common grid (:func:`intersection_grid`); warns when B has to be resampled."""
    if before.names != after.names:
        raise RasterError(f"{after.source}: bands {', '.join(after.names)} but the other date {before.source} has "
                          f"{', '.join(before.names)}; give both dates the same bands")
    grid = intersection_grid(before.grid, after.grid, before.source, after.source)
    if after.grid.offset_in(grid) is None:
        warnings.warn(f"{after.source}: resampled (bilinear) onto the grid of {before.source} "
                      f"({_crs_name(after.grid)}, {after.grid.res[0]:.6g} px -> {_crs_name(grid)}, "
                      f"{grid.res[0]:.6g} px)", stacklevel=2)
    return before.on(grid), after.on(grid)
