import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from diffsat.geo.align import align_pair
from diffsat.geo.raster import RasterError, SENTINEL2_BANDS, stack_from_path

from geo_fixtures import ORIGIN, UTM, reflectance, sentinel_folder, write_raster


def test_a_13_band_uint16_geotiff_reads_with_its_crs_transform_and_nodata(tmp_path: Path) -> None:
    data = reflectance(13, 40, 50)
    data[:, 0, :5] = 0  # nodata
    path = write_raster(tmp_path / "scene.tif", data, nodata=0, descriptions=SENTINEL2_BANDS)
    stack = stack_from_path(path)
    assert stack.names == SENTINEL2_BANDS and stack.dtypes == ("uint16",) * 13
    assert stack.grid.crs.to_string() == UTM and stack.grid.transform == from_origin(*ORIGIN, 10, 10)
    assert stack.grid.shape == (40, 50)
    values, valid = stack.read()
    assert values.dtype == np.float32 and values.shape == (13, 40, 50)
    assert not valid[0, :5].any() and valid[0, 5:].all() and valid[1:].all()
    assert np.array_equal(values[:, valid], data[:, valid].astype(np.float32))
    window = Window(7, 3, 20, 11)
    part, part_valid = stack.read(window)
    assert np.array_equal(part, values[:, 3:14, 7:27]) and np.array_equal(part_valid, valid[3:14, 7:27])


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_every_dtype_reads_as_float32_in_file_units(tmp_path: Path, dtype: str) -> None:
    data = (np.arange(2 * 6 * 7).reshape(2, 6, 7) - (20 if dtype != "uint8" else 0)).astype(dtype)
    values, valid = stack_from_path(write_raster(tmp_path / "x.tif", data)).read()
    assert np.array_equal(values, data.astype(np.float32)) and valid.all()


def test_bands_chosen_by_name_or_position_and_a_bad_choice_names_the_file(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "s.tif", reflectance(4, 8, 8), descriptions=("B02", "B03", "B04", "B08"))
    assert stack_from_path(path, ("b04", 1)).names == ("B04", "B02")
    with pytest.raises(RasterError, match=r"s\.tif: no band named 'B11' \(it has B02, B03, B04, B08\)"):
        stack_from_path(path, ("B11",))
    with pytest.raises(RasterError, match=r"s\.tif: band 5 does not exist"):
        stack_from_path(path, (5,))


def test_band_files_of_three_resolutions_stack_onto_the_finest_grid(tmp_path: Path) -> None:
    folder = sentinel_folder(tmp_path / "imgs_1")
    stack = stack_from_path(folder)
    assert stack.names == SENTINEL2_BANDS  # wavelength order, B8A after B08
    assert stack.grid.res == (10.0, 10.0) and stack.grid.shape == (60, 60)
    values, valid = stack.read()
    assert values.shape == (13, 60, 60) and valid.all()
    with rasterio.open(folder / "T32TPP_B01.tif") as ds:  # 60 m: 10 x 10 pixels
        b01 = ds.read(1).astype(np.float32)
    # bilinear onto 10 m: the centre of each 60 m pixel keeps its value exactly (pixel centres coincide
    # at offsets 2.5 px; the two 10 m pixels around it average to it only on a flat field, so test the mean)
    assert abs(values[0].mean() - b01.mean()) < 2.0
    assert values[0].min() >= b01.min() - 1e-3 and values[0].max() <= b01.max() + 1e-3
    nearest = stack_from_path(folder, ("B01",), resampling="nearest", grid=stack.grid).read()[0][0]
    assert np.array_equal(nearest, np.repeat(np.repeat(b01, 6, axis=0), 6, axis=1))


def test_a_pair_one_pixel_apart_in_size_reads_onto_one_grid_without_resampling(tmp_path: Path) -> None:
    a = write_raster(tmp_path / "a.tif", reflectance(3, 30, 40, seed=1))
    b_data = reflectance(3, 31, 41, seed=2)
    b = write_raster(tmp_path / "b.tif", b_data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before, after = align_pair(stack_from_path(a), stack_from_path(b))
    assert before.grid == after.grid and before.grid.shape == (30, 40)
    assert np.array_equal(after.read()[0], b_data[:, :30, :40].astype(np.float32))


def test_a_shifted_pair_is_cut_to_its_intersection(tmp_path: Path) -> None:
    a_data, b_data = reflectance(2, 30, 30, seed=1), reflectance(2, 30, 30, seed=2)
    a = write_raster(tmp_path / "a.tif", a_data)
    b = write_raster(tmp_path / "b.tif", b_data, transform=from_origin(ORIGIN[0] + 50, ORIGIN[1] - 30, 10, 10))
    before, after = align_pair(stack_from_path(a), stack_from_path(b))
    assert before.grid.shape == (27, 25)
    assert np.array_equal(before.read()[0], a_data[:, 3:, 5:].astype(np.float32))
    assert np.array_equal(after.read()[0], b_data[:, :27, :25].astype(np.float32))


def test_a_pair_in_two_crss_puts_b_on_a_grid_with_a_warning(tmp_path: Path) -> None:
    a_data = reflectance(2, 64, 64, seed=3).astype(np.float32)
    a = write_raster(tmp_path / "a.tif", a_data)
    src = dict(src_transform=from_origin(*ORIGIN, 10, 10), src_crs=UTM)
    transform, w, h = calculate_default_transform(UTM, "EPSG:3857", 64, 64, *_bounds(src["src_transform"], 64, 64))
    b_data = np.zeros((2, h, w), dtype=np.float32)
    reproject(a_data, b_data, **src, dst_transform=transform, dst_crs="EPSG:3857", resampling=Resampling.bilinear,
              dst_nodata=np.nan)
    b = write_raster(tmp_path / "b.tif", b_data, crs="EPSG:3857", transform=transform, nodata=np.nan)
    with pytest.warns(UserWarning, match=r"b\.tif: resampled \(bilinear\) onto the grid of .*a\.tif"):
        before, after = align_pair(stack_from_path(a), stack_from_path(b))
    assert after.grid.crs.to_string() == UTM
    values, valid = after.read()
    inner = valid.copy()
    inner[:4], inner[-4:], inner[:, :4], inner[:, -4:] = False, False, False, False
    assert inner.sum() > 0.7 * inner.size
    # there and back again, bilinear both ways: within the field's local variation
    assert np.abs(values[:, inner] - before.read()[0][:, inner]).mean() < 60.0


def _bounds(transform, width: int, height: int) -> tuple[float, float, float, float]:
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    return left, bottom, right, top


def test_pairs_that_cannot_share_a_grid_name_both_files(tmp_path: Path) -> None:
    a = write_raster(tmp_path / "a.tif", reflectance(1, 10, 10))
    far = write_raster(tmp_path / "far.tif", reflectance(1, 10, 10),
                       transform=from_origin(ORIGIN[0] + 10_000, ORIGIN[1], 10, 10))
    bare = write_raster(tmp_path / "bare.tif", reflectance(1, 10, 10), crs=None, transform=rasterio.Affine.identity())
    bare_big = write_raster(tmp_path / "bare_big.tif", reflectance(1, 12, 10), crs=None,
                            transform=rasterio.Affine.identity())
    with pytest.raises(RasterError, match=r"a\.tif and .*far\.tif do not overlap"):
        align_pair(stack_from_path(a), stack_from_path(far))
    with pytest.raises(RasterError, match=r"bare\.tif: no CRS, but the other date has EPSG:32632"):
        align_pair(stack_from_path(a), stack_from_path(bare))
    with pytest.raises(RasterError, match=r"neither has a CRS and their sizes differ"):
        align_pair(stack_from_path(bare), stack_from_path(bare_big))
    before, after = align_pair(stack_from_path(bare), stack_from_path(bare))  # same size: pixel for pixel
    assert before.grid.shape == (10, 10)


def test_unreadable_and_truncated_rasters_are_one_line_naming_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(RasterError, match=r"junk\.tif: not a raster GDAL can read") as err:
        stack_from_path(junk)
    assert "\n" not in str(err.value)
    good = write_raster(tmp_path / "good.tif", reflectance(3, 300, 300))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(RasterError, match=r"cut\.tif: ") as err:
        stack_from_path(cut).read()
    assert "\n" not in str(err.value)
    with pytest.raises(RasterError, match=r"missing\.tif: raster file not found"):
        stack_from_path(tmp_path / "missing.tif")
