"""Tile planning: reference size, held side, the memory check, capped per-file warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data import DataError, load_dataset, tiles
from diffsat.data.tiles import check_memory, held_side, reference_size


def test_reference_size_is_most_common_first_on_ties() -> None:
    assert reference_size([(8, 8), None, (4, 4), (4, 4)]) == (4, 4)
    assert reference_size([(8, 8), (4, 4)]) == (8, 8)
    assert reference_size([None, None]) is None


def test_held_side() -> None:
    assert held_side(DataConfig(image_size=64), (128, 128), "x") == 64
    assert held_side(DataConfig(image_size=64, random_crop=True), (128, 96), "x") == 96
    assert held_side(DataConfig(image_size=64, random_crop=True, load_size=80), (128, 128), "x") == 80
    with pytest.raises(DataError, match="x: the images are 32x32, smaller than data.image_size 64"):
        held_side(DataConfig(image_size=64, random_crop=True), (32, 32), "x")


def test_memory_check_sizes_and_thresholds() -> None:
    need = 1600 * 3 * 128 * 128  # UC Merced at 128 px, uint8
    assert check_memory(1600, 3, 128, "ucm", available=10 * need) == need == 78_643_200
    with pytest.warns(UserWarning, match=r"ucm: the 1600 decoded images \(3x128x128 uint8\) take 0.07 GiB"):
        check_memory(1600, 3, 128, "ucm", available=int(1.5 * need))
    refused = r"ucm: holding 1600 decoded images of 3x128x128 needs 0.07 GiB.*data.limit"
    with pytest.raises(DataError, match=refused):
        check_memory(1600, 3, 128, "ucm", available=need - 1)


def test_loader_refuses_before_decoding_when_memory_is_short(tmp_path: Path, monkeypatch) -> None:
    for i in range(3):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(tiles, "available_memory", lambda: 3 * 3 * 16 * 16 - 1)
    with pytest.raises(DataError, match="holding 3 decoded images of 3x16x16"):
        load_dataset(DataConfig(kind="folder", path=str(tmp_path), channels=3, image_size=16))
    monkeypatch.setattr(tiles, "available_memory", lambda: 2 * 3 * 16 * 16)  # limit=1: half of it, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(DataConfig(kind="folder", path=str(tmp_path), channels=3, image_size=16, limit=1))
    assert len(ds) == 1


def test_per_file_warnings_are_capped(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    for i in range(tiles.WARN_EACH + 5):
        (tmp_path / f"bad{i:02d}.png").write_bytes(b"junk")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = load_dataset(DataConfig(kind="folder", path=str(tmp_path), channels=3, image_size=8))
    messages = [str(w.message) for w in record]
    assert len(ds) == 1 and len(messages) == tiles.WARN_EACH + 1
    assert messages[-1].endswith("15 unreadable image file(s) skipped (5 not named above)")
