"""Change detection on georeferenced multispectral rasters: training, windowed prediction, outputs on the map."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from cd_fixtures import cd_config, make_pairs, tiny_backbone  # noqa: F401  (fixture)
from diffsat.cd import train_cd
from diffsat.cd.config import CDDataConfig, PairSource, parse_cd_config
from diffsat.cd.cva import cva
from diffsat.cd.methods import ImageMethod
from diffsat.cd.pairs import load_pairs
from diffsat.cd.predict import ArrayOutput, predict
from diffsat.cd.run import OutputOptions, predict_run, predict_to_dir
from diffsat.cli import main
from diffsat.geo.normalise import fixed_normalisation, uint8_normalisation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "geo"))
from geo_fixtures import reflectance, write_raster  # noqa: E402

BANDS = ("B02", "B03", "B04", "B08")


def raster_pairs(root: Path, n: int = 4, size: int = 48, bands: int = 4, nodata_rows: int = 0) -> list[str]:
    """``n`` uint16 GeoTIFF pairs in LEVIR-CD layout: B is A plus a bright square (the label); A's first
    ``nodata_rows`` rows are nodata (0)."""
    names = []
    for i in range(n):
        a = reflectance(bands, size, size, seed=i)
        b = a.copy()
        label = np.zeros((1, size, size), dtype=np.uint8)
        y, x = 8 + 3 * i, 10 + 2 * i
        b[:, y : y + 14, x : x + 14] += 3000
        label[:, y : y + 14, x : x + 14] = 1
        a[:, :nodata_rows] = 0
        name = f"t{i}.tif"
        write_raster(root / "A" / name, a, nodata=0, descriptions=BANDS[:bands])
        write_raster(root / "B" / name, b, nodata=0, descriptions=BANDS[:bands])
        write_raster(root / "label" / name, label)
        names.append(name)
    return names


def raster_config(root: Path, **train: object) -> dict:
    config = cd_config(root, None, **train)
    src = lambda names: [{"root": str(root), "names": names}]  # noqa: E731
    config["cd"]["data"].update(train=src(["t0.tif", "t1.tif"]), val=src(["t2.tif"]), test=src(["t3.tif"]))
    config["cd"]["head"]["compare"] = ["cva"]
    return config


def test_a_multispectral_geotiff_run_trains_predicts_and_writes_outputs_on_the_map(tmp_path: Path) -> None:
    raster_pairs(tmp_path / "pairs", nodata_rows=3)
    doc = train_cd(parse_cd_config(raster_config(tmp_path / "pairs")), tmp_path / "run", progress=False)
    assert doc["bands"] == list(BANDS) and doc["normalisation"].startswith("percentiles 2-98")
    norm = json.loads((tmp_path / "run" / "normalisation.json").read_text())
    assert norm["names"] == list(BANDS) and norm["method"] == "percentile"
    assert set(doc["methods"]) == {"fc_siam_diff", "cva"}
    test = tmp_path / "run" / "test"
    with rasterio.open(tmp_path / "pairs" / "A" / "t3.tif") as a, rasterio.open(test / "t3.tif") as m, \
            rasterio.open(test / "probability" / "t3.tif") as p:
        assert m.crs == a.crs and m.transform == a.transform and m.shape == a.shape and m.nodata == 255
        mask, prob = m.read(1), p.read(1)
        assert (mask[:3] == 255).all() and set(np.unique(mask[3:])) <= {0, 1}
        assert (prob[:3] == -1).all() and ((prob[3:] >= 0) & (prob[3:] <= 1)).all()
    polygons = json.loads((test / "t3.geojson").read_text())
    assert polygons["type"] == "FeatureCollection" and polygons["crs"]["properties"]["name"] == "EPSG:32632"
    assert (test / "figures" / "t3.png").is_file()
    # the CVA baseline finds the bright square: change-F1 high, nodata rows left out of the counts
    cva_doc = doc["methods"]["cva"]
    assert cva_doc["f1"] > 0.9 and cva_doc["tn"] + cva_doc["fp"] + cva_doc["fn"] + cva_doc["tp"] == 45 * 48


def test_prediction_refuses_inputs_with_other_bands_in_one_line(tmp_path: Path, capsys) -> None:
    raster_pairs(tmp_path / "pairs", n=4)
    train_cd(parse_cd_config(raster_config(tmp_path / "pairs", max_steps=1)), tmp_path / "run", progress=False)
    raster_pairs(tmp_path / "five", n=1, bands=3)
    code = main(["cd", "predict", str(tmp_path / "run"), "--pairs", str(tmp_path / "five"), "--out",
                 str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "t0.tif: bands B02, B03, B04 but the run was trained on 4 band(s) B02, B03, B04, B08" in err


class TinyDiff(nn.Module):
    """``conv(|conv(a) - conv(b)|)``: receptive radius 2 px."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encode, self.classify = nn.Conv2d(channels, 6, 3, padding=1), nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.classify((self.encode(a) - self.encode(b)).abs())


def test_windowed_scene_prediction_equals_the_whole_image_prediction(tmp_path: Path) -> None:
    """A 100 x 90 GeoTIFF pair predicted through 32 px windows (margin 4 >= the net's radius), read and
    written window by window, gives exactly the network's output on the whole image."""
    root = tmp_path / "pairs"
    a, b = reflectance(4, 100, 90, seed=0), reflectance(4, 100, 90, seed=1)
    write_raster(root / "A" / "s.tif", a)
    write_raster(root / "B" / "s.tif", b)
    cfg = parse_cd_config(raster_config(root))
    cfg = cfg.model_copy(update={"data": CDDataConfig(window=32, margin=4)})
    method = ImageMethod(cfg, channels=4)
    method.net, method.align = TinyDiff(4).eval(), 1
    norm = fixed_normalisation(BANDS, 1 / 2500, 2500)
    pairs = load_pairs([PairSource(root=str(root))], need_labels=False).pairs
    predict_to_dir(method, pairs, norm, cfg.data, tmp_path / "out", OutputOptions(figures=False), progress=False)
    with torch.no_grad():
        x = lambda v: torch.from_numpy(norm.apply(v.astype(np.float32)))[None]  # noqa: E731
        whole = torch.softmax(method.net(x(a), x(b)), dim=1)[0, 1].numpy()
    with rasterio.open(tmp_path / "out" / "s.tif") as m, rasterio.open(tmp_path / "out" / "probability" / "s.tif") as p:
        assert np.allclose(p.read(1), whole, atol=1e-6)
        assert np.array_equal(m.read(1), (whole > 0.5).astype(np.uint8))


def test_streamed_cva_equals_cva_of_the_whole_image(tmp_path: Path) -> None:
    make_pairs(tmp_path, n=1, size=70)
    pair = load_pairs([PairSource(root=str(tmp_path))]).pairs[0]
    kept = ArrayOutput(pair.size)
    with pair.windows(uint8_normalisation(pair.names)) as reader:
        predict(None, reader, pair.size, CDDataConfig(window=32, margin=4), kept)
    mask, magnitude = cva(pair.before.pixels / 127.5 - 1, pair.after.pixels / 127.5 - 1)
    assert np.array_equal(kept.mask, mask) and np.allclose(kept.probability, magnitude, atol=1e-5)


def test_an_all_nodata_window_predicts_nodata_and_no_crash(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    raster_pairs(root, n=1, size=64, nodata_rows=40)
    cfg = parse_cd_config(raster_config(root)).model_copy(update={"data": CDDataConfig(window=32, margin=4)})
    pairs = load_pairs([PairSource(root=str(root))], need_labels=True).pairs
    norm = fixed_normalisation(BANDS, 1 / 2500, 2500)
    for method in (None, ImageMethod(cfg, channels=4)):
        out = tmp_path / ("cva" if method is None else "net")
        result = predict_to_dir(method, pairs, norm, cfg.data, out, progress=False)
        with rasterio.open(out / "t0.tif") as m:
            mask = m.read(1)
        assert (mask[:40] == 255).all() and set(np.unique(mask[40:])) <= {0, 1}
        assert result["tn"] + result["fp"] + result["fn"] + result["tp"] == 24 * 64


def test_a_backbone_of_other_channels_is_one_line(tiny_backbone: Path, tmp_path: Path) -> None:
    raster_pairs(tmp_path / "pairs")
    config = raster_config(tmp_path / "pairs")
    config["cd"]["head"]["kind"] = "ddpmcd"
    config["cd"]["features"]["backbone"] = str(tiny_backbone)
    with pytest.raises(Exception, match="a backbone of 3 input channels, but the pairs have 4 bands"):
        train_cd(parse_cd_config(config), tmp_path / "run", progress=False)


def test_predict_run_on_png_pairs_is_unchanged(tmp_path: Path) -> None:
    make_pairs(tmp_path / "pairs", n=4)
    cfg = cd_config(tmp_path / "pairs", None, max_steps=1)
    train_cd(parse_cd_config(cfg), tmp_path / "run", progress=False)
    n, result = predict_run(tmp_path / "run", tmp_path / "pairs", tmp_path / "out", progress=False)
    assert n == 4 and result["pairs"] == 4
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["p0.png", "p1.png", "p2.png", "p3.png"]


def test_predict_takes_another_window_and_checks_its_margin(tmp_path: Path, monkeypatch, capsys) -> None:
    """``window`` / ``margin`` replace the run's ``data.window`` / ``data.margin`` for one prediction (the run's
    config is left as it was); a margin of half the window or more is one line."""
    make_pairs(tmp_path / "pairs", n=4)
    train_cd(parse_cd_config(cd_config(tmp_path / "pairs", None, max_steps=1)), tmp_path / "run", progress=False)
    sides: list[tuple[int, int]] = []
    original = ImageMethod.window_logits
    monkeypatch.setattr(ImageMethod, "window_logits",
                        lambda self, a, b, y, x: sides.append(tuple(a.shape[1:])) or original(self, a, b, y, x))
    predict_run(tmp_path / "run", tmp_path / "pairs", tmp_path / "run32", progress=False, names=("p0.png",))
    assert sides == [(32, 32)]  # the run's window: a 32 px pair is one window
    sides.clear()
    n, result = predict_run(tmp_path / "run", tmp_path / "pairs", tmp_path / "out16", progress=False,
                            names=("p0.png",), window=16, margin=2)
    assert n == 1 and sides == [(16, 16)] * 9 and result["tn"] + result["fp"] + result["fn"] + result["tp"] == 32 * 32
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cd"]["data"]["window"] == 32
    code = main(["cd", "predict", str(tmp_path / "run"), "--pairs", str(tmp_path / "pairs"), "--out",
                 str(tmp_path / "bad"), "--window", "16", "--margin", "8", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "data.margin (8) must be less than half of data.window (16)" in err


def test_an_unreadable_raster_pair_is_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    make_pairs(tmp_path / "pairs", n=4)
    train_cd(parse_cd_config(cd_config(tmp_path / "pairs", None, max_steps=1)), tmp_path / "run", progress=False)
    bad = tmp_path / "bad"
    write_raster(bad / "B" / "x.tif", reflectance(3, 32, 32))
    (bad / "A").mkdir()
    (bad / "A" / "x.tif").write_bytes(b"II*\x00 truncated")
    code = main(["cd", "predict", str(tmp_path / "run"), "--pairs", str(bad), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "A/x.tif: not a raster GDAL can read" in err[0]


def test_a_georeferenced_label_is_put_on_the_pair_grid(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    raster_pairs(root, n=1, size=40)
    coarse = np.zeros((1, 20, 20), dtype=np.uint8)
    coarse[:, 5:10, 5:10] = 1  # 20 m pixels: 10 x 10 px of 10 m from (10, 10)
    write_raster(root / "label" / "t0.tif", coarse, transform=rasterio.transform.from_origin(500_000, 5_000_000, 20, 20))
    label = load_pairs([PairSource(root=str(root))]).pairs[0].label
    assert label.shape == (40, 40) and label.sum() == 100 and label[10:20, 10:20].all()
