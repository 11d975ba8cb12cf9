"""Generation on georeferenced rasters: tiles of multispectral scenes, the band normalisation stored in the run,
multispectral samples and their evaluation."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import tiny_config, train_tiny_run
from diffsat.cli import main
from diffsat.config import DataConfig, NormalisationConfig
from diffsat.data import DataError, load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "geo"))
from geo_fixtures import reflectance, write_raster  # noqa: E402

BANDS = ("B02", "B03", "B04", "B08")


def scenes(root: Path, n: int = 3, size: int = 48) -> Path:
    for i in range(n):
        data = reflectance(4, size, size, seed=i)
        if i == 1:
            data[:, :5, :5] = 0  # nodata in the first tile
        write_raster(root / f"scene{i}.tif", data, nodata=0, descriptions=BANDS)
    return root


def test_scenes_are_cut_into_valid_tiles_normalised_from_the_training_split(tmp_path: Path) -> None:
    root = scenes(tmp_path / "s")
    cfg = DataConfig(kind="rasters", path=str(root), channels=4, image_size=16, holdout=3)
    train = load_dataset(cfg)
    test = load_dataset(cfg.model_copy(update={"split": "test"}))
    assert train.tiles.shape == (2 * 9 - 1, 4, 16, 16) and train.tiles.dtype.is_floating_point
    assert test.tiles.shape == (9, 4, 16, 16)
    assert train.normalisation == test.normalisation and train.normalisation.names == BANDS
    assert float(train.tiles.abs().max()) <= 1.0 and "1 tiles with nodata skipped" in train.source
    picked = load_dataset(cfg.model_copy(update={"bands": ("B04", 2), "channels": 2}))
    assert picked.normalisation.names == ("B04", "B03")
    with pytest.raises(DataError, match=r"4 bands \(B02, B03, B04, B08\) but data.channels is 3"):
        load_dataset(cfg.model_copy(update={"channels": 3}))


def test_a_multispectral_run_trains_samples_geotiffs_and_evaluates(tmp_path: Path) -> None:
    root = scenes(tmp_path / "s", n=3, size=80)
    config = tiny_config(data={"kind": "rasters", "path": str(root), "channels": 4, "image_size": 16,
                               "limit": None, "holdout": 3},
                         model={"in_channels": 4, "out_channels": 4, "image_size": 16, "attn_resolutions": []})
    run = train_tiny_run(tmp_path, config)
    norm = json.loads((run / "normalisation.json").read_text())
    assert norm["names"] == list(BANDS) and norm["method"] == "percentile"
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--n", "12", "--steps", "3"]) == 0
    with rasterio.open(out / "sample_00000.tif") as ds:
        assert ds.count == 4 and ds.descriptions == BANDS and ds.dtypes[0] == "float32"
        assert np.abs(ds.read()).max() <= 1.0 + 1e-6
    assert (out / "grid.png").is_file()
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(out), "--reference", str(run), "--out", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["sets"]["samples"]["channels"] == 4 and doc["sets"]["samples"]["n"] == 12
    assert doc["metrics"]["swd"]["value"] > 0 and doc["metrics"]["swd"]["baseline"] > 0


def test_data_scenes_chooses_scenes_by_name_and_names_an_absent_one(tmp_path: Path) -> None:
    root = scenes(tmp_path / "s")
    fixed = NormalisationConfig(method="fixed", scale=1e-4, offset=5000.0)  # the same map for any selection
    cfg = DataConfig(kind="rasters", path=str(root), channels=4, image_size=16, normalisation=fixed)
    picked = load_dataset(cfg.model_copy(update={"scenes": ("scene2", "scene0")}))
    assert picked.tiles.shape[0] == 2 * 9 and "2 of 2 scenes" in picked.source
    np.testing.assert_array_equal(picked.tiles[:9].numpy(), load_dataset(cfg).tiles[-9:].numpy())  # scene2 first
    with pytest.raises(DataError, match=r"no raster file 'scene9' \(data.scenes\); it holds scene0, scene1, scene2"):
        load_dataset(cfg.model_copy(update={"scenes": ("scene9",)}))
