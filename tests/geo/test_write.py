import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from diffsat.geo.raster import Grid
from diffsat.geo.write import GeoTiffWriter, change_polygons, write_geotiff, write_polygons

from geo_fixtures import ORIGIN, UTM

GRID = Grid(rasterio.crs.CRS.from_string(UTM), from_origin(*ORIGIN, 10, 10), 100, 80)


def test_geotiffs_keep_the_grid_are_tiled_compressed_and_have_nodata(tmp_path: Path) -> None:
    data = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
    with GeoTiffWriter(tmp_path / "p.tif", GRID, 1, "float32", -1.0) as w:
        w.write(data[:40], 0, 0)
        w.write(data[40:], 40, 0)
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.crs == GRID.crs and ds.transform == GRID.transform and ds.nodata == -1.0
        assert ds.profile["tiled"] and ds.compression.value == "DEFLATE"
        assert np.array_equal(ds.read(1), data)
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]


def test_a_failure_while_writing_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with GeoTiffWriter(tmp_path / "m.tif", GRID, 1, "uint8", 255) as w:
            w.write(np.zeros((10, 10), dtype=np.uint8), 0, 0)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_polygon_areas_of_a_known_square_and_their_mean_probability(tmp_path: Path) -> None:
    mask = np.zeros((80, 100), dtype=np.uint8)
    mask[10:30, 20:40] = 1  # 20 x 20 px of 10 m: 40,000 m2
    mask[50:60, 50:70] = 1
    mask[53:56, 55:58] = 0  # a hole of 3 x 3 px
    mask[0, :] = 255  # nodata row: not a change
    prob = np.where(mask == 1, 0.8, 0.1).astype(np.float32)
    prob[10:20, 20:40] = 0.6
    write_geotiff(tmp_path / "m.tif", mask, GRID, 255)
    write_geotiff(tmp_path / "p.tif", prob, GRID, -1.0)
    assert write_polygons(tmp_path / "c.geojson", tmp_path / "m.tif", tmp_path / "p.tif") == 2
    doc = json.loads((tmp_path / "c.geojson").read_text())
    assert doc["crs"]["properties"]["name"] == UTM
    square, holed = (f["properties"] for f in doc["features"])
    assert square["pixels"] == 400 and square["area_m2"] == pytest.approx(40_000, rel=0.01)
    assert square["mean_probability"] == pytest.approx(0.7)
    assert holed["pixels"] == 191 and holed["area_m2"] == pytest.approx(19_100, rel=0.01)
    assert len(doc["features"][1]["geometry"]["coordinates"]) == 2  # outer ring and the hole


def test_areas_are_square_metres_in_a_geographic_crs_too(tmp_path: Path) -> None:
    step = 1e-4  # degrees, about 11 m at 45 N
    grid = Grid(rasterio.crs.CRS.from_epsg(4326), from_origin(10.0, 45.0, step, step), 50, 50)
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[10:40, 5:45] = 1
    write_geotiff(tmp_path / "m.tif", mask, grid, 255)
    doc = change_polygons(tmp_path / "m.tif")
    radius = 6_371_007.2  # authalic sphere
    lat_top, lat_bottom = math.radians(45.0 - 10 * step), math.radians(45.0 - 40 * step)
    truth = radius**2 * math.radians(40 * step) * (math.sin(lat_top) - math.sin(lat_bottom))
    assert doc["features"][0]["properties"]["area_m2"] == pytest.approx(truth, rel=0.01)
    assert "crs" not in doc  # EPSG:4326 is GeoJSON's own CRS
    corners = doc["features"][0]["geometry"]["coordinates"][0]
    assert min(x for x, _ in corners) == pytest.approx(10.0 + 5 * step)


def test_wgs84_output_of_a_utm_mask(tmp_path: Path) -> None:
    mask = np.zeros((80, 100), dtype=np.uint8)
    mask[10:30, 20:40] = 1
    write_geotiff(tmp_path / "m.tif", mask, GRID, 255)
    doc = change_polygons(tmp_path / "m.tif", wgs84=True)
    lon, lat = doc["features"][0]["geometry"]["coordinates"][0][0]
    assert 8.9 < lon < 9.1 and 45.0 < lat < 45.2 and "crs" not in doc  # UTM 32N, 500 km E, 5000 km N
    assert doc["features"][0]["properties"]["area_m2"] == pytest.approx(40_000, rel=0.01)
