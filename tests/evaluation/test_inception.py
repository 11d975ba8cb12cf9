"""FID Inception network: the key list and shapes of pytorch-fid's weights file, loading, input scaling.

No weights are downloaded: the expected keys are written out below from torchvision's Inception3 layer table
(pytorch-fid builds ``inception_v3(num_classes=1008, aux_logits=False)``, swaps in its FID blocks with the
same layers, and loads ``pt_inception-2015-12-05-6726825d.pth`` with strict key matching, so the file holds
exactly these tensors, with or without BatchNorm ``num_batches_tracked`` entries).
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffsat.errors import DiffsatError
from diffsat.evaluation.inception import (
    FIDInceptionV3,
    InceptionError,
    _avg_pool_same,
    load_inception,
    prepare_input,
)

# (name, in channels, out channels, kernel (h, w)) of every BasicConv2d, in torchvision's Inception3 order.
STEM = [("Conv2d_1a_3x3", 3, 32, (3, 3)), ("Conv2d_2a_3x3", 32, 32, (3, 3)), ("Conv2d_2b_3x3", 32, 64, (3, 3)),
        ("Conv2d_3b_1x1", 64, 80, (1, 1)), ("Conv2d_4a_3x3", 80, 192, (3, 3))]


def _a(c: int, pool: int) -> list:
    return [("branch1x1", c, 64, (1, 1)), ("branch5x5_1", c, 48, (1, 1)), ("branch5x5_2", 48, 64, (5, 5)),
            ("branch3x3dbl_1", c, 64, (1, 1)), ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3)),
            ("branch_pool", c, pool, (1, 1))]


def _b(c: int) -> list:
    return [("branch3x3", c, 384, (3, 3)), ("branch3x3dbl_1", c, 64, (1, 1)), ("branch3x3dbl_2", 64, 96, (3, 3)),
            ("branch3x3dbl_3", 96, 96, (3, 3))]


def _c(c: int, c7: int) -> list:
    return [("branch1x1", c, 192, (1, 1)), ("branch7x7_1", c, c7, (1, 1)), ("branch7x7_2", c7, c7, (1, 7)),
            ("branch7x7_3", c7, 192, (7, 1)), ("branch7x7dbl_1", c, c7, (1, 1)), ("branch7x7dbl_2", c7, c7, (7, 1)),
            ("branch7x7dbl_3", c7, c7, (1, 7)), ("branch7x7dbl_4", c7, c7, (7, 1)),
            ("branch7x7dbl_5", c7, 192, (1, 7)), ("branch_pool", c, 192, (1, 1))]


def _d(c: int) -> list:
    return [("branch3x3_1", c, 192, (1, 1)), ("branch3x3_2", 192, 320, (3, 3)), ("branch7x7x3_1", c, 192, (1, 1)),
            ("branch7x7x3_2", 192, 192, (1, 7)), ("branch7x7x3_3", 192, 192, (7, 1)),
            ("branch7x7x3_4", 192, 192, (3, 3))]


def _e(c: int) -> list:
    return [("branch1x1", c, 320, (1, 1)), ("branch3x3_1", c, 384, (1, 1)), ("branch3x3_2a", 384, 384, (1, 3)),
            ("branch3x3_2b", 384, 384, (3, 1)), ("branch3x3dbl_1", c, 448, (1, 1)),
            ("branch3x3dbl_2", 448, 384, (3, 3)), ("branch3x3dbl_3a", 384, 384, (1, 3)),
            ("branch3x3dbl_3b", 384, 384, (3, 1)), ("branch_pool", c, 192, (1, 1))]


BLOCKS = {"Mixed_5b": _a(192, 32), "Mixed_5c": _a(256, 64), "Mixed_5d": _a(288, 64), "Mixed_6a": _b(288),
          "Mixed_6b": _c(768, 128), "Mixed_6c": _c(768, 160), "Mixed_6d": _c(768, 160), "Mixed_6e": _c(768, 192),
          "Mixed_7a": _d(768), "Mixed_7b": _e(1280), "Mixed_7c": _e(2048)}


def expected_weights_file_keys() -> dict[str, tuple[int, ...]]:
    convs = STEM + [(f"{block}.{name}", i, o, k) for block, layers in BLOCKS.items() for name, i, o, k in layers]
    keys: dict[str, tuple[int, ...]] = {}
    for name, c_in, c_out, (kh, kw) in convs:
        keys[f"{name}.conv.weight"] = (c_out, c_in, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.bn.{stat}"] = (c_out,)
    keys["fc.weight"], keys["fc.bias"] = (1008, 2048), (1008,)
    return keys


@pytest.fixture(scope="module")
def model() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_every_key_and_shape_matches_the_pytorch_fid_weights_file(model: FIDInceptionV3) -> None:
    expected = expected_weights_file_keys()
    assert len(expected) == 94 * 5 + 2  # 94 conv+BN layers, the 1008-way fc
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours == expected
    # torchvision documents 27,161,264 parameters for Inception3 (1000 classes, with the auxiliary classifier
    # of 3,326,696); without it and with 1008 classes (+8 x 2049): 23,850,960.
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049


def test_pool3_features_have_2048_dims_for_any_size_and_grey_equals_rgb(model: FIDInceptionV3) -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 40, 40, generator=g) * 2 - 1
    feats = model.features(rgb, batch_size=1)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32 and (feats >= 0).all()
    grey = rgb[:, :1]
    torch.testing.assert_close(model.features(grey), model.features(grey.expand(-1, 3, -1, -1)))
    assert model.features(torch.zeros(0, 3, 32, 32)).shape == (0, 2048)


def test_input_is_prepared_as_pytorch_fid_does() -> None:
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    # pytorch-fid: ToTensor (/255) -> bilinear resize to 299 (align_corners=False) -> 2x - 1
    theirs = 2 * F.interpolate(pixels.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    ours = prepare_input(pixels.float() / 127.5 - 1)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        prepare_input(torch.zeros(1, 2, 8, 8))


def test_tensorflow_pooling_ignores_the_padding() -> None:
    ones = torch.ones(1, 2, 5, 5)
    torch.testing.assert_close(_avg_pool_same(ones), ones)  # counting the padding would give 4/9 at corners


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_weights_load_with_or_without_num_batches_tracked(model: FIDInceptionV3, tmp_path: Path) -> None:
    full = {k: v.clone() for k, v in model.state_dict().items()}
    bare = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    x = torch.rand(1, 3, 75, 75, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for state in (full, bare):
        loaded = load_inception(_save(state, tmp_path / "w.pth"))
        torch.testing.assert_close(loaded.features(x), model.features(x))
        assert not any(p.requires_grad for p in loaded.parameters())


def test_bad_weights_files_are_one_line_errors(model: FIDInceptionV3, tmp_path: Path) -> None:
    with pytest.raises(InceptionError, match="not found"):
        load_inception(tmp_path / "missing.pth")
    state = dict(model.state_dict())
    del state["fc.bias"]
    state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(1)
    state["AuxLogits.fc.weight"] = torch.zeros(1)
    with pytest.raises(InceptionError, match="missing: fc.bias.*unexpected: AuxLogits.*wrong shape: Mixed_7c"):
        load_inception(_save(state, tmp_path / "other.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a zip archive")
    with pytest.raises(DiffsatError, match="junk.pth: "):
        load_inception(tmp_path / "junk.pth")
    torch.save({"fc.weight": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # needs unpickling a class
    with pytest.raises(DiffsatError, match="refused for safety"):
        load_inception(tmp_path / "pickled.pth")
    torch.save({"model": {"nested": 1}}, tmp_path / "nested.pth")
    with pytest.raises(InceptionError, match="state dict of tensors"):
        load_inception(tmp_path / "nested.pth")
