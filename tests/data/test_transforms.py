"""Pixel-range conversions, per-batch crops and augmentation, and the data config keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsat.config import ConfigError, DataConfig, parse_config
from diffsat.data.transforms import augment, crop, to_model_range, to_uint8, to_unit_range


def test_unit_range_round_trip() -> None:
    values = np.arange(256, dtype=np.uint8)
    x = to_unit_range(values)
    assert x.dtype == torch.float32 and x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_array_equal(to_uint8(x), values)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]
    assert torch.equal(to_model_range(torch.from_numpy(values)), x)
    floats = torch.zeros(3)
    assert to_model_range(floats) is floats
    with pytest.raises(TypeError):
        to_model_range(torch.zeros(3, dtype=torch.int64))


def _batch(n: int = 32, size: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _tiles(n: int = 16, size: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


# ------------------------------------------------------------------------------------------------ crops


def test_random_crops_deterministic_per_generator() -> None:
    x = _tiles()
    a = crop(x, 5, torch.Generator().manual_seed(7))
    b = crop(x, 5, torch.Generator().manual_seed(7))
    c = crop(x, 5, torch.Generator().manual_seed(8))
    assert a.shape == (16, 3, 5, 5) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, _tiles())  # input untouched


def test_random_crops_are_windows_at_uniform_offsets() -> None:
    """Each crop is the window of its own image at offsets drawn by the generator: all 9 positions occur."""
    n, size, h = 400, 4, 6
    x = torch.arange(n * h * h, dtype=torch.float32).view(n, 1, h, h)  # every pixel value unique
    out = crop(x, size, torch.Generator().manual_seed(0))
    tops = ((out[:, 0, 0, 0] - x[:, 0, 0, 0]) // h).long()
    lefts = ((out[:, 0, 0, 0] - x[:, 0, 0, 0]) % h).long()
    for i in range(n):
        t, l = int(tops[i]), int(lefts[i])
        assert torch.equal(out[i], x[i, :, t : t + size, l : l + size])
    positions = torch.bincount(tops * 3 + lefts, minlength=9)
    assert positions.min() > 20 and (tops <= h - size).all() and (lefts <= h - size).all()


def test_centre_crop_and_pass_through() -> None:
    x = _tiles(4, 12)
    assert torch.equal(crop(x, 8, None), x[:, :, 2:10, 2:10])
    assert torch.equal(crop(x[:, :, :, :11], 8, None), x[:, :, 2:10, 1:9])  # non-square: offsets (2, 1)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert crop(x, 12, g) is x and torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="load_size must be at least"):
        crop(x, 13, None)


def test_augment_crops_uint8_tiles_to_float_batches() -> None:
    """The loop's call: held uint8 tiles -> (B, C, image_size, image_size) float32 in [-1, 1]."""
    tiles = _tiles(16, 12)
    cfg = DataConfig(image_size=8, load_size=12, random_crop=True, hflip=True, vflip=True, rot90=True)
    out = augment(tiles, cfg, torch.Generator().manual_seed(5))
    assert out.shape == (16, 3, 8, 8) and out.dtype == torch.float32 and out.is_contiguous()
    assert out.min() >= -1.0 and out.max() <= 1.0
    same = augment(to_unit_range(tiles.numpy()), cfg, torch.Generator().manual_seed(5))
    assert torch.equal(out, same)  # uint8 and float tiles give the same batch
    centre = augment(tiles, DataConfig(image_size=8), torch.Generator())
    assert torch.equal(to_model_range(tiles[:, :, 2:10, 2:10]), centre)


# ------------------------------------------------------------------------------------ flips and rotations


def test_augment_deterministic_per_generator() -> None:
    cfg, x = DataConfig(image_size=6, hflip=True, vflip=True, rot90=True), _batch()
    a = augment(x, cfg, torch.Generator().manual_seed(7))
    b = augment(x, cfg, torch.Generator().manual_seed(7))
    c = augment(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, _batch())  # input untouched


@pytest.mark.parametrize(("flag", "dim"), [("hflip", -1), ("vflip", -2)])
def test_flips_are_exact(flag: str, dim: int) -> None:
    x = _batch(64)
    out = augment(x, DataConfig(image_size=6, **{flag: True}), torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    flipped = [torch.equal(o, i.flip(dim)) for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 10 < sum(flipped) < 54


def test_rot90_uses_all_quarter_turns() -> None:
    x = _batch(64)
    out = augment(x, DataConfig(image_size=6, rot90=True), torch.Generator().manual_seed(0))
    ks = [
        next(k for k in range(4) if torch.equal(o, torch.rot90(i, k, dims=(-2, -1)))) for o, i in zip(out, x)
    ]
    assert set(ks) == {0, 1, 2, 3}


def test_no_augmentation_when_disabled() -> None:
    x, g = _batch(), torch.Generator().manual_seed(3)
    state = g.get_state()
    assert augment(x, DataConfig(image_size=6), g) is x
    assert torch.equal(g.get_state(), state)


def test_augment_rejects_bad_batches() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment(torch.zeros(3, 6, 6), DataConfig(image_size=6), torch.Generator())
    with pytest.raises(ValueError, match="cannot crop 6x6 images to 8x8"):
        augment(_batch(), DataConfig(image_size=8), torch.Generator())


# ------------------------------------------------------------------------------------------ config keys


def _config(**data) -> dict:
    data = {"channels": 3, "image_size": 64, **data}
    return {"model": {"in_channels": 3, "out_channels": 3, "image_size": data["image_size"]}, "data": data}


def test_data_config_keys() -> None:
    cfg = parse_config(_config(kind="levir", levir_images="A", levir_list="demo", random_crop=True))
    assert cfg.data.kind == "levir" and cfg.data.on_size_mismatch == "resize" and cfg.data.load_size is None
    with pytest.raises(ConfigError, match=r"data.load_size \(32\) must be at least data.image_size \(64\)"):
        parse_config(_config(load_size=32))
    with pytest.raises(ConfigError, match="data.levir_images"):
        parse_config(_config(levir_images="C"))
    with pytest.raises(ConfigError, match="data.on_size_mismatch"):
        parse_config(_config(on_size_mismatch="pad"))
    bad = _config(image_size=64)
    bad["model"]["image_size"] = 128
    with pytest.raises(ConfigError, match=r"model.image_size \(128\) must equal data.image_size \(64\)"):
        parse_config(bad)
