"""LEVIR-CD loader on the real samples (11 pairs + the malformed test_113 pair) and synthetic layouts."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data import DataError, load_dataset

ODD = "test_113_0256.png"  # A: 768x384 RGBA, B: 768x383 RGBA, no label, not in list/demo.txt
DEMO = [  # list/demo.txt, in its order
    "test_77_0512_0256.png", "test_102_0512_0000.png", "test_121_0768_0256.png", "test_2_0000_0000.png",
    "test_2_0000_0512.png", "test_7_0256_0512.png", "test_55_0256_0000.png",
]


def _cfg(path: Path, **kw) -> DataConfig:
    kw = {"channels": 3, "image_size": 32, **kw}
    return DataConfig(kind="levir", path=str(path), **kw)


@pytest.fixture(scope="module")
def levir(shared_data: Path) -> Path:
    root = shared_data / "levir-cd256-samples"
    if not (root / "A").is_dir():
        pytest.skip(f"{root} has no A/ folder")
    return root


def _load(cfg: DataConfig) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = load_dataset(cfg)
    return ds, [str(w.message) for w in record]


# ----------------------------------------------------------------------------------------- real samples


@pytest.mark.parametrize(("side", "label", "size"), [("A", 0, "768x384"), ("B", 1, "768x383")])
def test_one_side_all_images(levir: Path, side: str, label: int, size: str) -> None:
    ds, messages = _load(_cfg(levir, levir_images=side, on_size_mismatch="crop"))
    assert ds.tiles.shape == (12, 3, 32, 32) and ds.tiles.dtype == torch.uint8
    assert ds.labels.tolist() == [label] * 12 and ds.class_names == ("A", "B")
    named = [m for m in messages if f"{side}/{ODD}" in m]
    assert len(named) == 1 and f"RGBA, alpha dropped; {size} centre-cropped to 256x256" in named[0]
    assert f"{side}: all 12 images" in ds.source and "1 cropped/resized/converted" in ds.source


def test_both_sides_pairs_in_name_order(levir: Path) -> None:
    ds, messages = _load(_cfg(levir))
    assert len(ds) == 24 and ds.labels.tolist() == [0, 1] * 12
    assert sum(ODD in m for m in messages) == 2 and "A+B: all 24 images" in ds.source
    a_only, _ = _load(_cfg(levir, levir_images="A"))
    assert torch.equal(ds.tiles[0::2], a_only.tiles)


def test_list_file_selects_pairs_in_list_order(levir: Path) -> None:
    ds, messages = _load(_cfg(levir, levir_list="demo", image_size=256))
    assert messages == []  # the malformed pair is not listed
    assert ds.tiles.shape == (14, 3, 256, 256) and ds.labels.tolist() == [0, 1] * 7
    assert "list demo, A+B: all 14 images, RGB 256 px" in ds.source
    first_b = np.asarray(Image.open(levir / "B" / DEMO[0]))
    np.testing.assert_array_equal(ds.tiles[1].permute(1, 2, 0).numpy(), first_b)  # stored pixels exactly
    same, _ = _load(_cfg(levir, levir_list="demo.txt", levir_images="B", image_size=256))
    assert len(same) == 7 and torch.equal(same.tiles, ds.tiles[1::2])


def test_malformed_pair_cropped_exactly(levir: Path) -> None:
    """Policy crop keeps the ground resolution: the tile is the centre 256x256 of the RGB pixels."""
    ds, _ = _load(_cfg(levir, levir_images="A", image_size=256, limit=2, on_size_mismatch="crop"))
    rgb = np.asarray(Image.open(levir / "A" / ODD).convert("RGB"))  # (384, 768, 3); tiles: test_102, test_113
    np.testing.assert_array_equal(ds.tiles[1].permute(1, 2, 0).numpy(), rgb[64:320, 256:512])
    assert "A: 2 of 12 images" in ds.source


def test_malformed_pair_resized(levir: Path) -> None:
    ds, messages = _load(_cfg(levir, levir_images="A", image_size=256, limit=2))  # default: resize
    rgb = Image.open(levir / "A" / ODD).convert("RGB").crop((192, 0, 576, 384))  # centre 384 square
    expected = np.asarray(rgb.resize((256, 256), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(ds.tiles[1].permute(1, 2, 0).numpy(), expected)
    assert any(f"A/{ODD}: RGBA, alpha dropped; 768x384 resized" in m for m in messages)


def test_malformed_pair_skipped(levir: Path) -> None:
    ds, messages = _load(_cfg(levir, on_size_mismatch="skip"))
    assert len(ds) == 22 and ds.labels.tolist() == [0, 1] * 11
    for side, size in (("A", "768x384"), ("B", "768x383")):
        assert any(f"{side}/{ODD}: {size}, not 256x256: skipped" in m for m in messages)
    assert "A+B: 22 of 24 images" in ds.source and "2 of another size skipped" in ds.source


def test_random_crop_holds_256_tiles(levir: Path) -> None:
    ds, _ = _load(_cfg(levir, levir_list="demo", levir_images="A", image_size=64, random_crop=True))
    assert ds.tiles.shape == (7, 3, 256, 256) and ds.resolution == 256
    assert "held at 256 px, random 64 px crops" in ds.source


def test_real_layout_errors(levir: Path) -> None:
    missing = r"data.levir_list 'train': .*list/train.txt not found \(lists there: demo\)"
    with pytest.raises(DataError, match=missing):
        load_dataset(_cfg(levir, levir_list="train"))
    with pytest.raises(DataError, match="data.path"):
        load_dataset(DataConfig(kind="levir", channels=3))


# ------------------------------------------------------------------------------------- synthetic layouts


def _png(path: Path, value: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_unreadable_and_missing_files_skipped_and_counted(tmp_path: Path) -> None:
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        _png(tmp_path / "A" / name, 10 * (i + 1))
        _png(tmp_path / "B" / name, 100 + i)
    good = (tmp_path / "A" / "b.png").read_bytes()
    (tmp_path / "A" / "b.png").write_bytes(good[: len(good) // 2])  # truncated: header fine, data not
    (tmp_path / "B" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "list").mkdir()
    listed = "a.png\nb.png\n\nc.png\nd.png\na.png\n"  # d.png missing, a.png twice
    (tmp_path / "list" / "train.txt").write_text(listed)
    ds, messages = _load(_cfg(tmp_path, image_size=16, levir_list="train"))
    assert ds.tiles[:, 0, 0, 0].tolist() == [10, 100, 101, 30] and ds.labels.tolist() == [0, 1, 1, 0]
    for name in ("A/b.png: unreadable image skipped", "B/c.png: unreadable image skipped",
                 "A/d.png: listed in data.levir_list but missing", "B/d.png: listed in data.levir_list"):
        assert sum(name in m for m in messages) == 1, name
    assert any(m.endswith("2 unreadable image file(s) skipped") for m in messages)
    assert "A+B: 4 of 6 images" in ds.source and "2 listed file(s) missing" in ds.source
    assert "2 unreadable file(s) skipped" in ds.source


def test_synthetic_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an existing folder"):
        load_dataset(_cfg(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"no A/ folder, so this is not a LEVIR-CD layout"):
        load_dataset(_cfg(tmp_path))
    _png(tmp_path / "A" / "x.png", 5)
    with pytest.raises(DataError, match=r"no B/ folder.*or set data.levir_images='A'"):
        load_dataset(_cfg(tmp_path, levir_images="B"))
    with pytest.raises(DataError, match=r"no \.txt lists"):
        load_dataset(_cfg(tmp_path, levir_images="A", levir_list="val"))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"selection is empty \(data.levir_images='A', list val\)"):
        load_dataset(_cfg(tmp_path, levir_images="A", levir_list="val"))
    (tmp_path / "list" / "val.txt").write_text("gone.png\n")
    with pytest.raises(DataError, match="selection is empty"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(_cfg(tmp_path, levir_images="A", levir_list="val"))
    (tmp_path / "A" / "x.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="none of the 1 image files could be read"):
        load_dataset(_cfg(tmp_path, levir_images="A"))


def test_holdout_split(levir: Path) -> None:
    test, _ = _load(_cfg(levir, levir_list="demo", holdout=7, split="test"))
    train, _ = _load(_cfg(levir, levir_list="demo", holdout=7))
    assert (len(test), len(train)) == (2, 12) and test.labels.tolist() == [0, 1]  # entries 7 and 14
    full, _ = _load(_cfg(levir, levir_list="demo"))
    assert torch.equal(test.tiles, full.tiles[[6, 13]])
    assert "list demo, A+B: all 2 images, split test: 1 in 7 images held out" in test.source
