"""Image-folder loader: UC Merced (real), synthetic folders, odd files, held size, ImageDataset."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data import DataError, ImageDataset, load_dataset
from diffsat.data.folder import folder_labels, list_image_files, load_image
from diffsat.data.transforms import augment, to_uint8, to_unit_range


def _folder_cfg(path: Path, **kw) -> DataConfig:
    kw = {"channels": 3, "image_size": 8, **kw}
    return DataConfig(kind="folder", path=str(path), **kw)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _messages(record) -> list[str]:
    return [str(w.message) for w in record]


# ----------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ucmerced(shared_data: Path) -> Path:
    root = shared_data / "ucmerced-128"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


def test_ucmerced_limit_40_resized_to_64(ucmerced: Path) -> None:
    ds = load_dataset(_folder_cfg(ucmerced, limit=40, image_size=64))
    assert ds.tiles.shape == (40, 3, 64, 64) and ds.tiles.dtype == torch.uint8 and ds.tiles.is_contiguous()
    assert ds.images.shape == (40, 3, 64, 64) and ds.images.dtype == torch.float32
    assert (ds.resolution, ds.channels, len(ds)) == (64, 3, 40)
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0 and ds.images.std() > 0.1
    assert torch.equal(torch.from_numpy(to_uint8(ds.images)), ds.tiles)  # images == tiles in [-1, 1]
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0] * 40  # sorted: agricultural first
    assert ds.class_names is not None and len(ds.class_names) == 16 and ds.class_names[0] == "agricultural"
    assert "40 of 1600 files" in ds.source and "16 classes" in ds.source and "resized to 64 px" in ds.source

    labels, names = folder_labels(ucmerced, list_image_files(ucmerced))
    assert np.bincount(labels).tolist() == [100] * 16 and names == ds.class_names


def test_ucmerced_random_crops_hold_stored_tiles(ucmerced: Path) -> None:
    """random_crop keeps the 128 px tiles as stored; batches are 64 px windows of them."""
    cfg = _folder_cfg(ucmerced, limit=200, image_size=64, random_crop=True)
    ds = load_dataset(cfg)
    assert ds.tiles.shape == (200, 3, 128, 128) and ds.tiles.dtype == torch.uint8
    assert ds.labels.tolist() == [0] * 100 + [1] * 100  # agricultural, airplane
    assert "held at 128 px, random 64 px crops" in ds.source
    first = np.asarray(Image.open(list_image_files(ucmerced)[0]).convert("RGB"))
    np.testing.assert_array_equal(ds.tiles[0].permute(1, 2, 0).numpy(), first)  # stored pixels, untouched

    idx = torch.arange(0, 200, 25)
    batch = augment(ds.tiles[idx], cfg, torch.Generator().manual_seed(0))
    assert batch.shape == (8, 3, 64, 64) and batch.dtype == torch.float32
    crops = torch.from_numpy(to_uint8(batch))
    windows = ds.tiles[idx].unfold(2, 64, 1).unfold(3, 64, 1)  # (8, 3, 65, 65, 64, 64): every 64 px window
    for i in range(8):
        hits = (windows[i] == crops[i][:, None, None]).all(-1).all(-1).all(0)
        assert hits.any(), f"crop {i} is not a window of its tile"

    view = ds.model_view(cfg, seed=3)  # evaluation: one fixed random crop per tile, no flips
    assert view.shape == (200, 3, 64, 64) and torch.equal(view, ds.model_view(cfg, seed=3))
    assert torch.equal(view, augment(ds.tiles, cfg, torch.Generator().manual_seed(3)))
    resized = cfg.model_copy(update={"random_crop": False})
    assert torch.equal(ds.model_view(resized), ds.images[:, :, 32:96, 32:96])


def test_ucmerced_load_size(ucmerced: Path) -> None:
    ds = load_dataset(_folder_cfg(ucmerced, limit=3, image_size=32, load_size=48))
    assert ds.tiles.shape == (3, 3, 48, 48)
    assert "held at 48 px, centre 32 px crops" in ds.source
    batch = augment(ds.tiles, _folder_cfg(ucmerced, image_size=32, load_size=48), torch.Generator())
    assert torch.equal(batch, ds.images[:, :, 8:40, 8:40])


# ------------------------------------------------------------------------------------- synthetic folders


def test_corrupt_skipped_and_rgba_converted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 7, np.uint8)], axis=-1)
    _png(tmp_path / "a" / "1.png", rgb)
    _png(tmp_path / "b" / "2.PNG", rgba)  # upper-case suffix, RGBA
    (tmp_path / "a" / "0_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    _png(tmp_path / ".hidden" / "x.png", rgb)  # ignored
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(_folder_cfg(tmp_path))
    messages = _messages(record)
    assert any("0_broken.png: unreadable image skipped" in m for m in messages)
    assert any(m.endswith("1 unreadable image file(s) skipped") for m in messages)
    assert any("2.PNG: RGBA, alpha dropped" in m for m in messages)
    assert ds.tiles.shape == (2, 3, 8, 8)
    assert ds.labels.tolist() == [0, 1] and ds.class_names == ("a", "b")
    np.testing.assert_array_equal(ds.tiles[0].permute(1, 2, 0).numpy(), rgb)
    np.testing.assert_array_equal(ds.tiles[1].permute(1, 2, 0).numpy(), rgb)  # alpha dropped
    assert "1 unreadable file(s) skipped" in ds.source


def test_limit_counts_readable_images(tmp_path: Path) -> None:
    (tmp_path / "0.png").write_bytes(b"garbage")
    for i in range(1, 4):
        _png(tmp_path / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(_folder_cfg(tmp_path, limit=2))
    assert any("0.png" in m for m in _messages(record))
    assert len(ds) == 2 and ds.labels is None  # flat folder: no labels
    assert ds.tiles[:, 0, 0, 0].tolist() == [40, 80]


def test_grey_centre_crop_and_resize(tmp_path: Path) -> None:
    wide = np.zeros((8, 12, 3), np.uint8)
    wide[:, :2] = 255  # left and right 2-pixel stripes are cropped away
    wide[:, -2:] = 255
    wide[:, 2:10, 0] = 100
    _png(tmp_path / "wide.png", wide)
    ds = load_dataset(_folder_cfg(tmp_path, channels=1))
    assert ds.tiles.shape == (1, 1, 8, 8)
    assert (ds.tiles == round(0.299 * 100)).all()
    up = load_dataset(_folder_cfg(tmp_path, image_size=16))
    assert up.tiles.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(load_image(tmp_path / "wide.png", 3, 8)[..., 0], np.full((8, 8), 100))


def _mixed_folder(tmp_path: Path) -> np.ndarray:
    """Three 16x16 tiles (values 10, 20, 30) and one 24x20 image (w x h) whose centre 16x16 is 200."""
    for i in range(3):
        _png(tmp_path / f"t{i}.png", np.full((16, 16, 3), 10 * (i + 1), np.uint8))
    odd = np.zeros((20, 24, 3), np.uint8)
    odd[2:18, 4:20] = 200
    _png(tmp_path / "z_odd.png", odd)
    return odd


@pytest.mark.parametrize("policy", ["crop", "resize", "skip"])
def test_size_mismatch_policy(tmp_path: Path, policy: str) -> None:
    """The 24x20 image in a folder of 16x16 tiles is cropped (exactly its centre), resized, or skipped."""
    odd = _mixed_folder(tmp_path)
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(_folder_cfg(tmp_path, image_size=16, on_size_mismatch=policy))
    named = [m for m in _messages(record) if "z_odd.png" in m]
    assert len(named) == 1 and "24x20" in named[0]
    assert len(ds) == (3 if policy == "skip" else 4)
    if policy == "crop":
        assert (ds.tiles[3] == 200).all() and "centre-cropped to 16x16" in named[0]
    if policy == "resize":
        resized = Image.fromarray(odd[:, 2:22]).resize((16, 16), Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(ds.tiles[3].permute(1, 2, 0).numpy(), np.asarray(resized))
    if policy == "skip":
        assert "skipped" in named[0] and "1 of another size skipped" in ds.source


def test_crop_policy_skips_smaller_images(tmp_path: Path) -> None:
    for i in range(2):
        _png(tmp_path / f"big{i}.png", np.full((16, 16, 3), 9, np.uint8))
    _png(tmp_path / "small.png", np.full((8, 8, 3), 9, np.uint8))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(_folder_cfg(tmp_path, image_size=16, on_size_mismatch="crop"))
    assert any("small.png: 8x8, not 16x16: too small to crop, skipped" in m for m in _messages(record))
    assert len(ds) == 2


def test_random_crop_needs_large_enough_tiles(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"8x8, smaller than data.image_size 16.*random crops"):
        load_dataset(_folder_cfg(tmp_path, image_size=16, random_crop=True))


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an existing folder"):
        load_dataset(_folder_cfg(tmp_path / "missing"))
    with pytest.raises(DataError, match="no image files"):
        load_dataset(_folder_cfg(tmp_path))
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="could be read"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(_folder_cfg(tmp_path))
    with pytest.raises(DataError, match="data.path"):
        load_dataset(DataConfig(kind="folder"))
    with pytest.raises(DataError, match="data.channels=2"):
        load_dataset(_folder_cfg(tmp_path, channels=2))


def test_image_dataset_validates_and_converts() -> None:
    with pytest.raises(DataError):
        ImageDataset(torch.zeros(2, 3, 4, 5), None, "x")
    with pytest.raises(DataError):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.int32), None, "x")
    with pytest.raises(DataError, match="labels"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.tensor([1]), "x")
    floats = torch.zeros(2, 3, 4, 4)
    ds = ImageDataset(floats, torch.tensor([1, 0]), "x")
    assert (len(ds), ds.channels, ds.resolution) == (2, 3, 4)
    assert ds.images is ds.tiles and "n=2" in repr(ds)
    values = np.array([0, 255, 128], np.uint8)
    u8 = ImageDataset(images=torch.from_numpy(values).view(3, 1, 1, 1), labels=None, source="y")
    assert u8.images.dtype == torch.float32 and torch.equal(u8.images.flatten(), to_unit_range(values))
    assert u8.images is u8.images  # converted once


def test_holdout_split_is_class_balanced_and_disjoint(ucmerced: Path) -> None:
    from diffsat.data.folder import split_indices

    files = list_image_files(ucmerced)
    labels, _ = folder_labels(ucmerced, files)
    train = split_indices(len(files), _folder_cfg(ucmerced, holdout=10), "x")
    test = split_indices(len(files), _folder_cfg(ucmerced, holdout=10, split="test"), "x")
    assert (len(train), len(test)) == (1440, 160) and not set(train) & set(test)
    assert sorted(train + test) == list(range(1600)) and test[:2] == [9, 19]
    assert np.bincount(labels[test]).tolist() == [10] * 16


def test_holdout_split_loads(tmp_path: Path) -> None:
    for c in "ab":
        for i in range(4):
            _png(tmp_path / c / f"{i}.png", np.full((8, 8, 3), 10 * i + (c == "b"), np.uint8))
    test = load_dataset(_folder_cfg(tmp_path, holdout=2, split="test"))
    assert test.tiles[:, 0, 0, 0].tolist() == [10, 30, 11, 31] and test.labels.tolist() == [0, 0, 1, 1]
    assert "(all 4 files, split test: 1 in 2 files held out, 2 classes" in test.source
    train = load_dataset(_folder_cfg(tmp_path, holdout=2, limit=3))
    assert train.tiles[:, 0, 0, 0].tolist() == [0, 20, 1]
    with pytest.raises(DataError, match=r"data.split='test' needs data.holdout"):
        load_dataset(_folder_cfg(tmp_path, split="test"))
