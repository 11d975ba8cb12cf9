import json
from pathlib import Path

import numpy as np
import pytest

from diffsat.config import NormalisationConfig
from diffsat.data.bands import make_normalisation
from diffsat.rundir.bands import load_run_normalisation, save_run_normalisation
from diffsat.geo.normalise import BandNormalisation, fixed_normalisation, from_samples, uint8_normalisation
from diffsat.geo.raster import RasterError, stack_from_path

from geo_fixtures import reflectance, write_raster


def test_percentiles_map_to_the_range_ends_and_invert_exactly_inside_it() -> None:
    samples = np.stack([np.arange(101, dtype=np.float64), 10 * np.arange(101, dtype=np.float64) + 5])
    norm = from_samples(("a", "b"), samples, "percentile", (2.0, 98.0), 3.0, "test")
    assert norm.offset == pytest.approx((50.0, 505.0)) and norm.scale == pytest.approx((1 / 48, 1 / 480))
    values = np.array([[[2.0, 50.0, 98.0, 200.0]], [[25.0, 505.0, 985.0, -1e4]]], dtype=np.float32)
    x = norm.apply(values)
    assert np.allclose(x, [[[-1, 0, 1, 1]], [[-1, 0, 1, -1]]], atol=1e-6)
    inside = values[:, :, :3]
    assert np.allclose(norm.invert(norm.apply(inside)), inside, rtol=1e-5)


def test_mean_std_and_fixed_maps() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(100.0, 5.0, (1, 100_000))
    norm = from_samples(("a",), samples, "meanstd", (2, 98), 3.0, "test")
    assert norm.offset[0] == pytest.approx(100.0, abs=0.1) and 1 / norm.scale[0] == pytest.approx(15.0, rel=0.01)
    s2 = fixed_normalisation(("B02", "B03"), 1 / 5000, 5000)
    assert np.allclose(s2.apply(np.array([[[0.0, 5000, 10000]]] * 2, dtype=np.float32)), [[[-1, 0, 1]]] * 2)
    assert np.allclose(uint8_normalisation(("r",)).apply(np.array([[[0.0, 255.0]]])), [[[-1, 1]]])


def test_nodata_maps_to_zero_and_an_all_nodata_training_set_is_one_line(tmp_path: Path) -> None:
    norm = fixed_normalisation(("a",), 1.0, 0.0)
    out = norm.apply(np.array([[[0.5, 0.7]]], dtype=np.float32), np.array([[True, False]]))
    assert out.tolist() == [[[0.5, 0.0]]]
    blank = write_raster(tmp_path / "blank.tif", np.zeros((2, 8, 8), dtype=np.uint16), nodata=0)
    with pytest.raises(RasterError, match="no valid pixel to compute band statistics"):
        make_normalisation(NormalisationConfig(), [stack_from_path(blank)])


def test_statistics_come_from_the_given_images_and_are_stored_and_read_back(tmp_path: Path) -> None:
    low = write_raster(tmp_path / "low.tif", reflectance(3, 64, 64, seed=0))
    high = write_raster(tmp_path / "high.tif", reflectance(3, 64, 64, seed=1) + 20000)
    cfg = NormalisationConfig()
    only_low = make_normalisation(cfg, [stack_from_path(low)], progress=False)
    both = make_normalisation(cfg, [stack_from_path(low), stack_from_path(high)], progress=False)
    assert only_low.method == "percentile" and only_low.offset[0] < 5000 < both.offset[0]
    save_run_normalisation(both, tmp_path)
    assert load_run_normalisation(tmp_path) == both
    assert json.loads((tmp_path / "normalisation.json").read_text())["names"] == ["band1", "band2", "band3"]
    eight = write_raster(tmp_path / "rgb.tif", np.full((3, 4, 4), 7, dtype=np.uint8))
    assert make_normalisation(cfg, [stack_from_path(eight)]).detail.startswith("8-bit")


def test_a_damaged_stored_map_and_a_run_without_one_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "normalisation.json").write_text('{"method": "fixed"}')
    with pytest.raises(RasterError, match=r"normalisation\.json: not a band normalisation"):
        load_run_normalisation(tmp_path)
    with pytest.raises(RasterError, match=r"normalisation\.json: missing"):
        load_run_normalisation(tmp_path / "nothing")
    assert load_run_normalisation(tmp_path / "nothing", ("red", "green", "blue")).method == "fixed"
    norm = BandNormalisation("fixed", ("B02", "B03"), (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(RasterError, match=r"x\.tif: bands B02, B03, B04 but the run was trained on 2 band"):
        norm.check_bands(("B02", "B03", "B04"), "x.tif")
