"""The training-time evaluator: which metrics for which data, determinism, and the no-classifier case."""

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, train_tiny_run

from diffsat.config import Config
from diffsat.data import ImageDataset
from diffsat.evaluation import (
    DigitClassifier,
    default_classifier_path,
    make_training_evaluator,
)
from diffsat.evaluation.classifier import save_classifier


def _config(channels: int, size: int, **data) -> Config:
    return Config.model_validate({"model": {"in_channels": channels, "out_channels": channels, "image_size": size},
                                  "data": {"kind": "folder", "channels": channels, "image_size": size, **data}})


def _smooth(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (F.avg_pool2d(torch.randn(n, channels, size, size, generator=g), 5, 1, 2) * 3).clamp(-1, 1)


@pytest.fixture()
def cached_classifier(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DIFFSAT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    return save_classifier(DigitClassifier().eval(), default_classifier_path(), 0.5, "00" * 32)


def test_digits_without_a_cached_classifier_give_none_and_one_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DIFFSAT_CACHE", str(tmp_path / "empty-cache"))
    dataset = ImageDataset(_smooth(20, 1, 28, 0), None, "digits")
    with pytest.warns(UserWarning, match="diffsat evaluate --train-classifier") as record:
        assert make_training_evaluator(_config(1, 28), dataset) is None
    assert len(record) == 1


@pytest.mark.parametrize("size", [28, 32])
def test_digit_metrics_against_the_dataset(cached_classifier: Path, size: int) -> None:
    dataset = ImageDataset(_smooth(300, 1, size, 0), None, "digits")
    evaluate = make_training_evaluator(_config(1, size), dataset, max_reference=200)
    same = evaluate(_smooth(100, 1, size, 1))
    assert set(same) == {"recognisable", "classes_present", "class_entropy", "fid_classifier"}
    assert all(isinstance(v, float) for v in same.values())
    assert 0 <= same["recognisable"] <= 1 and 0 <= same["classes_present"] <= 10
    other = evaluate(torch.rand(100, 1, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    assert other["fid_classifier"] > 2 * same["fid_classifier"]
    assert evaluate(_smooth(100, 1, size, 1)) == same  # deterministic
    assert math.isnan(evaluate(_smooth(1, 1, size, 1))["fid_classifier"])
    with pytest.raises(ValueError, match=f"\\(N, 1, {size}, {size}\\)"):
        evaluate(torch.zeros(4, 3, size, size))


def test_rgb_swd_against_a_fixed_subset_at_the_training_scale() -> None:
    tiles = ((_smooth(80, 3, 32, 0) + 1) * 127.5).round().to(torch.uint8)  # held like image folders: uint8
    config = _config(3, 16, random_crop=True)
    evaluate = make_training_evaluator(config, ImageDataset(tiles, None, "tiles"), swd_reference=50)
    crops = _smooth(60, 3, 32, 1)[..., 8:24, 8:24]  # 16 px windows of the same kind of tiles
    real = evaluate(crops)
    noise = evaluate(torch.rand(60, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    assert set(real) == {"swd"} and noise["swd"] > 1.5 * real["swd"]
    assert evaluate(crops) == real
    shrunk = evaluate(F.avg_pool2d(_smooth(60, 3, 32, 1), 2))  # whole tiles at half scale: not what it trained on
    assert shrunk["swd"] > real["swd"]


def test_images_too_small_for_swd_give_none() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert make_training_evaluator(_config(3, 8), ImageDataset(_smooth(10, 3, 8, 0), None, "tiny")) is None
    assert len(record) == 1 and "at least 16 px" in str(record[0].message)


def test_training_logs_quality_every_eval_every_steps_and_plots_it(cached_classifier: Path, tmp_path: Path) -> None:
    run = train_tiny_run(tmp_path, tiny_config(max_steps=5, eval_every=2, eval_samples=12, save_every=5))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    evaluated = {int(r["step"]): r for r in rows if r.get("recognisable") not in (None, "")}
    assert sorted(evaluated) == [2, 4, 5]  # every 2 steps, and once more at the end
    for row in evaluated.values():
        assert 0 <= float(row["recognisable"]) <= 1 and 1 <= float(row["classes_present"]) <= 10
        assert float(row["fid_classifier"]) > 0
    assert (run / "quality.png").stat().st_size > 0

