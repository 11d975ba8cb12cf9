from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from diffsat.cd.config import CDDataConfig, PairSource, parse_cd_config
from diffsat.cd.methods import ImageMethod
from diffsat.cd.pairs import load_pairs
from diffsat.cd.run import OutputOptions, predict_to_dir
from diffsat.data.dataset import DataError
from diffsat.config import DataConfig
from diffsat.data import load_dataset
from diffsat.geo.normalise import fixed_normalisation
from diffsat.geo.oscd import IMAGES, LABELS, oscd_cities, oscd_city, read_oscd_label
from diffsat.geo.raster import SENTINEL2_BANDS, RasterError

from geo_fixtures import OSCD_PATH, ORIGIN, sentinel_folder, write_raster


def fake_oscd(root: Path) -> Path:
    """Two labelled cities and one unlabelled one in OSCD's layout; ``b``'s second date is 1 px smaller on the
    same footprint (as hongkong and saclay_e are)."""
    images = root / IMAGES
    for i, city in enumerate(("a", "b", "u")):
        sentinel_folder(images / city / "imgs_1", seed=i)
        if city == "b":  # as OSCD's hongkong: the second date 1 px smaller at 10 m, on the same bounds
            folder = images / city / "imgs_2"
            for band in SENTINEL2_BANDS:
                r = {"B01": 60, "B09": 60, "B10": 60}.get(band, 20 if band in ("B05", "B06", "B07", "B8A", "B11",
                                                                                "B12") else 10)
                n = 600 // r - (1 if r == 10 else 0)
                data = np.full((1, n, n), 1500, dtype=np.uint16)
                write_raster(folder / f"T_{band}.tif", data, transform=from_origin(*ORIGIN, 600 / n, 600 / n))
        else:
            sentinel_folder(images / city / "imgs_2", seed=10 + i)
        if city != "u":
            label = np.ones((1, 60, 60), dtype=np.uint8)
            label[:, 10:20, 10:30] = 2
            write_raster(root / LABELS / city / "cm" / f"{city}-cm.tif", label, crs=None,
                         transform=rasterio.Affine.identity())
    (images / "train.txt").write_text("a,b")
    (images / "test.txt").write_text("u")
    return root


def test_the_oscd_layout_reads_every_band_and_date_onto_one_grid(tmp_path: Path) -> None:
    root = fake_oscd(tmp_path)
    assert oscd_cities(root, "train") == ["a", "b"] and oscd_cities(root, "test") == ["u"]
    assert oscd_cities(root / IMAGES) == ["a", "b", "u"]
    city = oscd_city(root, "a")
    assert city.before.names == SENTINEL2_BANDS and city.before.grid == city.after.grid
    assert city.before.grid.shape == (60, 60) and city.before.grid.res == (10.0, 10.0)
    with pytest.warns(UserWarning, match="imgs_2: resampled"):
        b = oscd_city(root, "b", ("B04", "B03", "B02"))
    assert b.after.grid == b.before.grid and b.after.read()[0].shape == (3, 60, 60)
    label = read_oscd_label(city.label, city.before.grid.shape)
    assert label.dtype == np.uint8 and label.sum() == 200 and set(np.unique(label)) == {0, 1}
    with pytest.raises(RasterError, match="a-cm.tif: 60x60 but the city's 10 m grid is 50x60"):
        read_oscd_label(city.label, (60, 50))


def test_oscd_sources_for_change_detection(tmp_path: Path) -> None:
    root = fake_oscd(tmp_path)
    pairs = load_pairs([PairSource(root=str(root), names=("a",))], bands=("B02", "B03", "B04", "B08")).pairs
    assert [p.name for p in pairs] == ["a"] and pairs[0].names == ("B02", "B03", "B04", "B08")
    assert pairs[0].label.sum() == 200 and pairs[0].grid is not None
    with pytest.raises(DataError, match="an OSCD city without a change map"):
        load_pairs([PairSource(root=str(root), list="test")])
    with pytest.raises(RasterError, match="not an OSCD folder|listed in"):
        (root / IMAGES / "train.txt").write_text("a,zz")
        load_pairs([PairSource(root=str(root), list="train")])


@pytest.fixture(scope="module")
def oscd() -> Path:
    if not OSCD_PATH.is_dir():
        pytest.skip("../shared/data/oscd not found: the OSCD tests need the shared data folder beside the repo")
    return OSCD_PATH


def test_every_real_oscd_city_has_13_bands_on_the_10m_grid_of_its_label(oscd: Path) -> None:
    for name in oscd_cities(oscd, "train"):
        city = oscd_city(oscd, name)
        b02 = next((city.before.bands[1].path.parent).glob("*_B02.tif"))
        with rasterio.open(b02) as ds, rasterio.open(city.label) as lab:
            assert city.before.grid.crs == ds.crs and city.before.grid.transform == ds.transform
            assert city.after.grid == city.before.grid and city.before.grid.shape == lab.shape == ds.shape
        assert city.before.names == SENTINEL2_BANDS


def test_a_predicted_oscd_mask_overlays_its_label(oscd: Path, tmp_path: Path) -> None:
    """Same CRS, transform and shape as the city's 10 m grid (the label's), polygons beside it."""
    cfg = parse_cd_config({"cd": {"head": {"kind": "fc_siam_diff", "compare": []}}})
    data = CDDataConfig(window=256, margin=32)
    pairs = load_pairs([PairSource(root=str(oscd), names=("bercy",))]).pairs
    norm = fixed_normalisation(SENTINEL2_BANDS, 1 / 5000, 5000)
    result = predict_to_dir(ImageMethod(cfg, channels=13), pairs, norm, data, tmp_path, OutputOptions(figures=False),
                            progress=False)
    label_path = oscd / LABELS / "bercy" / "cm" / "bercy-cm.tif"
    b02 = next((oscd / IMAGES / "bercy" / "imgs_1").glob("*_B02.tif"))
    with rasterio.open(tmp_path / "bercy.tif") as m, rasterio.open(b02) as ref, rasterio.open(label_path) as lab:
        assert m.crs == ref.crs and m.transform == ref.transform and m.shape == ref.shape == lab.shape
    assert (tmp_path / "bercy.geojson").is_file() and result["pairs"] == 1
    assert result["tn"] + result["fp"] + result["fn"] + result["tp"] == 360 * 395


def test_a_raster_training_set_takes_the_oscd_cities_of_data_scenes(tmp_path: Path) -> None:
    root = fake_oscd(tmp_path)
    cfg = DataConfig(kind="rasters", path=str(root), bands=("B04",), channels=1, image_size=20, scenes=("u",))
    tiles = load_dataset(cfg)
    assert tiles.tiles.shape == (2 * 9, 1, 20, 20) and "2 of 2 scenes" in tiles.source  # both dates of u
    assert load_dataset(cfg.model_copy(update={"scenes": None})).tiles.shape[0] == 5 * 9 + 4  # b's 59 px date: 2 x 2
    with pytest.raises(DataError, match="no OSCD city 'rio' \\(data.scenes\\); it holds a, b, u"):
        load_dataset(cfg.model_copy(update={"scenes": ("rio",)}))
