from pathlib import Path

import numpy as np
import pytest
import torch

from diffsat.cd.config import CDDataConfig, PairSource
from diffsat.cd.pairs import Crop, apply_crop, draw_crop, load_pairs
from diffsat.data.dataset import DataError
from diffsat.geo.normalise import uint8_normalisation

from cd_fixtures import make_pairs, write_png


def test_levir_and_open_cd_layouts_with_both_label_scales(tmp_path: Path) -> None:
    make_pairs(tmp_path / "levir", n=3, label_scale=255)
    make_pairs(tmp_path / "opencd", n=2, label_scale=1, open_cd_split="val")
    levir = load_pairs([PairSource(root=str(tmp_path / "levir"), list="all")]).pairs
    opencd = load_pairs([PairSource(root=str(tmp_path / "opencd"), list="val")]).pairs
    assert [p.name for p in levir] == ["p0.png", "p1.png", "p2.png"] and len(opencd) == 2
    for p in levir + opencd:
        assert p.before.pixels.shape == (3, 32, 32) and p.label.dtype == np.uint8 and p.grid is None
        assert set(np.unique(p.label)) == {0, 1}
        assert ((p.after.pixels != p.before.pixels).any(axis=0) == p.label.astype(bool)).all()
        loaded = p.load(uint8_normalisation(p.names))
        assert loaded.before.dtype == np.float32 and loaded.valid is None
        assert np.allclose(loaded.before, p.before.pixels / np.float32(127.5) - 1, atol=1e-6)


def test_rgb_label_and_names_subset(tmp_path: Path) -> None:
    make_pairs(tmp_path, n=2)
    label = np.zeros((32, 32, 3), dtype=np.uint8)
    label[:4] = 255
    write_png(tmp_path / "label" / "p1.png", label)
    pairs = load_pairs([PairSource(root=str(tmp_path), names=("p1.png",))]).pairs
    assert len(pairs) == 1 and pairs[0].label[:4].all() and not pairs[0].label[4:].any()


@pytest.mark.parametrize("defect, message", [
    ("no_b", "no matching B"), ("no_label", "no matching label"), ("sizes", "must have one size"),
    ("three_values", "label values 0, 1, 255"), ("colour_label", "colour label"), ("empty_list", "empty"),
    ("unknown_name", "not in its"), ("no_layout", "neither a LEVIR-CD folder"),
])
def test_each_bad_input_is_one_line_naming_the_file(tmp_path: Path, defect: str, message: str) -> None:
    make_pairs(tmp_path, n=2)
    source = PairSource(root=str(tmp_path))
    if defect == "no_b":
        (tmp_path / "B" / "p1.png").unlink()
    elif defect == "no_label":
        (tmp_path / "label" / "p1.png").unlink()
    elif defect == "sizes":
        write_png(tmp_path / "B" / "p1.png", np.zeros((16, 32, 3), dtype=np.uint8))
    elif defect == "three_values":
        write_png(tmp_path / "label" / "p1.png", np.array([[0, 1, 255]] * 32, dtype=np.uint8).repeat(11, 1)[:, :32])
    elif defect == "colour_label":
        write_png(tmp_path / "label" / "p1.png", np.stack([np.full((32, 32), 255, np.uint8),
                                                          np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)], 2))
    elif defect == "empty_list":
        (tmp_path / "list" / "empty.txt").write_text("\n")
        source = PairSource(root=str(tmp_path), list="empty")
    elif defect == "unknown_name":
        source = PairSource(root=str(tmp_path), names=("nope.png",))
    elif defect == "no_layout":
        source = PairSource(root=str(tmp_path / "A"))
    with pytest.raises(DataError, match=message) as err:
        load_pairs([source])
    assert "\n" not in str(err.value)
    if defect not in ("empty_list", "no_layout"):
        assert str(tmp_path) in str(err.value)


def test_unreadable_file_is_skipped_and_counted(tmp_path: Path) -> None:
    make_pairs(tmp_path, n=3)
    (tmp_path / "B" / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.warns(UserWarning, match="p1.png: pair skipped"):
        result = load_pairs([PairSource(root=str(tmp_path))])
    assert [p.name for p in result.pairs] == ["p0.png", "p2.png"]
    assert result.unreadable == [tmp_path / "A" / "p1.png"] and "1 unreadable" in result.describe()


def test_shared_levir_odd_rgba_pair(shared_data: Path) -> None:
    root = shared_data / "levir-cd256-samples"
    with pytest.raises(DataError, match="test_113_0256.png: no matching label"):
        load_pairs([PairSource(root=str(root))])
    with pytest.raises(DataError, match="768x383 but its A is 768x384"):
        load_pairs([PairSource(root=str(root), names=("test_113_0256.png",))], need_labels=False)


def test_crop_and_augmentation_keep_images_label_and_features_aligned() -> None:
    """Images whose 2x2 blocks are constant have an exact half-resolution "feature map" (the block values):
    every crop, flip and turn must give the same result on the image and on that map, and A, B, label alike."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.integers(0, 1000, (1, 16, 16))).float()
    image = coarse.repeat_interleave(2, -1).repeat_interleave(2, -2)  # (1, 32, 32)
    label = (image[0] > 500).long()
    cfg = CDDataConfig(crop_size=8)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        crop = draw_crop(32, 32, cfg, gen, align=2)
        assert crop.y % 2 == 0 and crop.x % 2 == 0 and crop.y + 8 <= 32
        seen.add((crop.k, crop.hflip, crop.vflip))
        a, b = apply_crop(image, crop), apply_crop(image.clone(), crop)
        feature = apply_crop(coarse, crop, factor=2)
        lab = apply_crop(label, crop)
        assert a.shape == (1, 8, 8) and feature.shape == (1, 4, 4) and lab.shape == (8, 8)
        assert torch.equal(a, b) and torch.equal(lab, (a[0] > 500).long())
        assert torch.equal(a[:, ::2, ::2], feature)
    assert len(seen) > 8  # turns and flips are drawn
    plain = apply_crop(image, Crop(4, 6, 8, 0, False, False))
    assert torch.equal(plain, image[:, 4:12, 6:14])
    assert torch.equal(apply_crop(image, Crop(4, 6, 8, 1, True, False)), torch.rot90(plain, 1, (-2, -1)).flip(-1))


def test_crop_larger_than_pair_is_an_error() -> None:
    with pytest.raises(DataError, match="smaller than data.crop_size"):
        draw_crop(16, 16, CDDataConfig(crop_size=32), torch.Generator())
