"""Cross-validation of change detection (``data.folds``): fold splits, per-fold band statistics, pooling."""

import json
from pathlib import Path

import numpy as np
import pytest

from cd_fixtures import cd_config, write_config
from diffsat.cd import cross_validate, load_cd_config, train_cd
from diffsat.cd.config import FoldConfig, parse_cd_config
from diffsat.cd.folds import fold_splits
from diffsat.cd.metrics import from_counts, scores
from diffsat.cd.pairs import load_pairs
from diffsat.cd.run import predict_run
from diffsat.cli import main
from diffsat.config import ConfigError, NormalisationConfig
from diffsat.data.bands import make_normalisation
from diffsat.data.dataset import DataError
from diffsat.rundir.bands import load_run_normalisation
from test_rasters import raster_pairs

OSCD_LABELLED = ("aguasclaras", "bercy", "bordeaux", "nantes", "paris", "rennes", "saclay_e", "hongkong", "pisa")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def folds(*tests_and_vals: tuple[tuple[str, ...], tuple[str, ...]]) -> list[FoldConfig]:
    return [FoldConfig(test=t, val=v) for t, v in tests_and_vals]


def test_a_fold_never_trains_on_the_pairs_it_scores_or_validates_on() -> None:
    pool = ["a", "b", "c", "d", "e", "f"]
    splits = fold_splits(pool, folds((("a", "b"), ("c",)), (("c", "d"), ("e",)), (("e", "f"), ("a",))))
    assert [s.train for s in splits] == [("d", "e", "f"), ("a", "b", "f"), ("b", "c", "d")]
    assert sorted(n for s in splits for n in s.test) == pool  # every pair scored exactly once
    for s in splits:
        assert not set(s.train) & (set(s.test) | set(s.val))


def test_the_shipped_oscd_folds_leave_every_labelled_city_out_once() -> None:
    cfg = load_cd_config(CONFIGS / "cd_oscd_cpu.json")
    splits = fold_splits(OSCD_LABELLED, cfg.data.folds)
    assert len(splits) == 3 and sorted(n for s in splits for n in s.test) == sorted(OSCD_LABELLED)
    for s in splits:
        assert len(s.test) == 3 and len(s.val) == 1 and len(s.train) == 5
        assert not set(s.train) & set(s.test) and not set(s.train) & set(s.val)
    assert {"bercy", "paris"} <= set(splits[0].test)  # the two Paris scenes are never on both sides


@pytest.mark.parametrize(("fold_list", "message"), [
    ([{"test": ["a"]}, {"test": ["b"], "val": ["x"]}], "names pair 'x', which data.train does not hold"),
    ([{"test": ["a"]}], "pair 'b' of data.train is in no fold's test"),
    ([{"test": ["a", "b"]}], "leaves no training pair"),
])
def test_bad_folds_are_one_line_naming_the_pair(fold_list: list, message: str) -> None:
    with pytest.raises(DataError, match=message):
        fold_splits(["a", "b"], [FoldConfig(**f) for f in fold_list])


def test_fold_configs_contradicting_themselves_are_config_errors(tmp_path: Path) -> None:
    base = cd_config(tmp_path, None)["cd"]
    with pytest.raises(ConfigError, match="in a fold's test and its val"):
        parse_cd_config({"cd": {**base, "data": {"folds": [{"test": ["a"], "val": ["a"]}]}}})
    with pytest.raises(ConfigError, match="scored by two folds"):
        parse_cd_config({"cd": {**base, "data": {"folds": [{"test": ["a"]}, {"test": ["a"]}]}}})
    with pytest.raises(ConfigError, match="leave data.val and data.test empty"):
        parse_cd_config({"cd": {**base, "data": {**base["data"], "folds": [{"test": ["p3.png"]}]}}})


def fold_run_config(root: Path) -> dict:
    """Three folds over six uint16 raster pairs, FC-Siam-diff and CVA, a few steps each."""
    names = raster_pairs(root, n=6, size=32)
    config = cd_config(root, None, max_steps=2, eval_every=2, save_every=2)
    config["cd"]["data"] = {
        "train": [{"root": str(root)}], "crop_size": 16, "window": 32, "margin": 4,
        "folds": [{"test": names[0:2], "val": [names[2]]}, {"test": names[2:4], "val": [names[4]]},
                  {"test": names[4:6], "val": [names[0]]}],
    }
    config["cd"]["head"]["compare"] = ["cva"]
    return config


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``(folder holding pairs/ and run/, the pooled document)`` of one cross-validation, shared by the tests."""
    tmp = tmp_path_factory.mktemp("folds")
    cfg = parse_cd_config(fold_run_config(tmp / "pairs"))
    return tmp, cross_validate(cfg, tmp / "run", progress=False)


def test_cross_validation_pools_one_confusion_matrix_that_the_pairs_sum_to(fold_run: tuple[Path, dict]) -> None:
    tmp_path, doc = fold_run
    cfg = load_cd_config(tmp_path / "run")
    assert [f["test"] for f in doc["folds"]] == [list(f.test) for f in cfg.data.folds]
    for name in ("fc_siam_diff", "cva"):
        result = doc["methods"][name]
        assert result["pairs"] == 6 and len(result["folds"]) == 3
        summed = sum(from_counts(row) for row in result["per_image"].values())
        np.testing.assert_array_equal(summed, from_counts(result))
        np.testing.assert_array_equal(summed, sum(from_counts(f) for f in result["folds"]))
        assert scores(summed)["f1"] == result["f1"]
        for pair, row in result["per_image"].items():
            assert pair in doc["folds"][row["fold"]]["test"]
            assert scores(from_counts(row))["f1"] == pytest.approx(row["f1"])
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert saved["methods"]["cva"]["per_image_f1"] == doc["methods"]["cva"]["per_image_f1"]
    assert "Change-F1 of each pair" in (tmp_path / "run" / "report.html").read_text()


def test_each_fold_is_an_ordinary_run_normalised_by_its_training_pairs_only(fold_run: tuple[Path, dict]) -> None:
    tmp_path, _ = fold_run
    cfg = load_cd_config(tmp_path / "run")
    pairs = {p.name: p for p in load_pairs(cfg.data.train).pairs}
    maps = []
    for k, fold in enumerate(cfg.data.folds):
        run = tmp_path / "run" / "folds" / str(k)
        fold_cfg = load_cd_config(run)
        train_names = [n for s in fold_cfg.data.train for n in s.names]
        assert [n for s in fold_cfg.data.test for n in s.names] == list(fold.test)
        assert not set(train_names) & (set(fold.test) | set(fold.val)) and len(train_names) == 3
        expected = make_normalisation(NormalisationConfig(),
                                      [im for n in train_names for im in (pairs[n].before, pairs[n].after)], False)
        stored = load_run_normalisation(run)
        np.testing.assert_allclose(stored.offset, expected.offset)
        np.testing.assert_allclose(stored.scale, expected.scale)
        maps.append(stored.offset)
        assert json.loads((run / "test_metrics.json").read_text())["split"]["test"] == list(fold.test)
    assert not np.allclose(maps[0], maps[1])  # the folds' statistics differ: none is taken from all pairs


def test_resume_keeps_finished_folds_and_predict_names_the_fold_runs(fold_run: tuple[Path, dict],
                                                                      tmp_path: Path) -> None:
    root, run, first = fold_run[0] / "pairs", fold_run[0] / "run", fold_run[1]
    cfg = load_cd_config(run)
    stamp = (run / "folds" / "1" / "test_metrics.json").stat().st_mtime_ns
    with pytest.raises(DataError, match="already holds a cross-validation run"):
        cross_validate(cfg, run, progress=False)
    assert cross_validate(cfg, run, resume=True, progress=False)["methods"] == first["methods"]
    assert (run / "folds" / "1" / "test_metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match=r"a cross-validation run, one model per fold: .*folds/1 scores t2.tif"):
        predict_run(run, root, tmp_path / "out")
    with pytest.raises(DataError, match="sets data.folds"):
        train_cd(cfg, tmp_path / "other", progress=False)
    n, result = predict_run(run / "folds" / "1", root, tmp_path / "out", names=("t2.tif", "t3.tif"), method_name="cva")
    assert n == 2 and result["pairs"] == 2


def test_cli_trains_the_folds_and_prints_each_pairs_f1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = fold_run_config(tmp_path / "pairs")
    config["cd"]["head"].update(kind="cva", compare=[])  # no training: the CLI's path, not the methods
    path = write_config(tmp_path / "cv.json", config)
    assert main(["cd", "train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cva: change-F1" in out and "(6 pairs)" in out and "per pair: t0.tif" in out
