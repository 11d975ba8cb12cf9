"""Image-folder loader, pixel-range transforms and augmentation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data import DataError, ImageDataset, load_dataset
from diffsat.data.folder import folder_labels, list_image_files
from diffsat.data.transforms import augment, to_uint8, to_unit_range


def _folder_cfg(path: Path, **kw) -> DataConfig:
    kw = {"channels": 3, "image_size": 8, **kw}
    return DataConfig(kind="folder", path=str(path), **kw)


# ----------------------------------------------------------------------------------------- real data


def test_ucmerced_limit_40_at_64(shared_data: Path) -> None:
    root = shared_data / "ucmerced-128"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = load_dataset(_folder_cfg(root, limit=40, image_size=64))
    assert ds.images.shape == (40, 3, 64, 64) and ds.images.dtype == torch.float32
    assert ds.images.is_contiguous() and (ds.resolution, ds.channels, len(ds)) == (64, 3, 40)
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0 and ds.images.std() > 0.1
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0] * 40  # sorted: agricultural first
    assert ds.class_names is not None and len(ds.class_names) == 16 and ds.class_names[0] == "agricultural"
    assert "40 of 1600 files" in ds.source and "16 classes" in ds.source

    labels, names = folder_labels(root, list_image_files(root))
    assert np.bincount(labels).tolist() == [100] * 16 and names == ds.class_names


# ------------------------------------------------------------------------------------- synthetic folders


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


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
    messages = [str(w.message) for w in record]
    assert any("0_broken.png" in m for m in messages)
    assert any("skipped 1 unreadable" in m for m in messages)
    assert ds.images.shape == (2, 3, 8, 8)
    assert ds.labels.tolist() == [0, 1] and ds.class_names == ("a", "b")
    np.testing.assert_array_equal(to_uint8(ds.images[0]).transpose(1, 2, 0), rgb)
    np.testing.assert_array_equal(to_uint8(ds.images[1]).transpose(1, 2, 0), rgb)  # alpha dropped
    assert "1 unreadable" in ds.source


def test_limit_counts_readable_images(tmp_path: Path) -> None:
    (tmp_path / "0.png").write_bytes(b"garbage")
    for i in range(1, 4):
        _png(tmp_path / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(_folder_cfg(tmp_path, limit=2))
    assert any("0.png" in str(w.message) for w in record)
    assert len(ds) == 2 and ds.labels is None  # flat folder: no labels
    assert to_uint8(ds.images[:, 0, 0, 0]).tolist() == [40, 80]


def test_grey_centre_crop_and_resize(tmp_path: Path) -> None:
    wide = np.zeros((8, 12, 3), np.uint8)
    wide[:, :2] = 255  # left and right 2-pixel stripes are cropped away
    wide[:, -2:] = 255
    wide[:, 2:10, 0] = 100
    _png(tmp_path / "wide.png", wide)
    ds = load_dataset(_folder_cfg(tmp_path, channels=1))
    assert ds.images.shape == (1, 1, 8, 8)
    grey = round(0.299 * 100)
    assert (to_uint8(ds.images) == grey).all()
    up = load_dataset(_folder_cfg(tmp_path, image_size=16))
    assert up.images.shape == (1, 3, 16, 16)


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


def test_image_dataset_validates_shape() -> None:
    with pytest.raises(DataError):
        ImageDataset(torch.zeros(2, 3, 4, 5), None, "x")
    ds = ImageDataset(torch.zeros(2, 3, 4, 4), torch.tensor([1, 0]), "x")
    assert (len(ds), ds.channels, ds.resolution) == (2, 3, 4)
    assert "n=2" in repr(ds)


# ------------------------------------------------------------------------------------------ transforms


def test_unit_range_round_trip() -> None:
    values = np.arange(256, dtype=np.uint8)
    x = to_unit_range(values)
    assert x.dtype == torch.float32 and x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_array_equal(to_uint8(x), values)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]


def _batch(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def test_augment_deterministic_per_generator() -> None:
    cfg, x = DataConfig(hflip=True, vflip=True, rot90=True), _batch()
    a = augment(x, cfg, torch.Generator().manual_seed(7))
    b = augment(x, cfg, torch.Generator().manual_seed(7))
    c = augment(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, _batch())  # input untouched


@pytest.mark.parametrize(("flag", "dim"), [("hflip", -1), ("vflip", -2)])
def test_flips_are_exact(flag: str, dim: int) -> None:
    x = _batch(64)
    out = augment(x, DataConfig(**{flag: True}), torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    flipped = [torch.equal(o, i.flip(dim)) for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 10 < sum(flipped) < 54


def test_rot90_uses_all_quarter_turns() -> None:
    x = _batch(64)
    out = augment(x, DataConfig(rot90=True), torch.Generator().manual_seed(0))
    ks = [
        next(k for k in range(4) if torch.equal(o, torch.rot90(i, k, dims=(-2, -1)))) for o, i in zip(out, x)
    ]
    assert set(ks) == {0, 1, 2, 3}


def test_no_augmentation_when_disabled() -> None:
    x, g = _batch(), torch.Generator().manual_seed(3)
    state = g.get_state()
    assert augment(x, DataConfig(), g) is x
    assert torch.equal(g.get_state(), state)
