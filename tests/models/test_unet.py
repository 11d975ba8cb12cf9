"""The SR3 U-Net: output shapes, the sizes it accepts, and the parameter counts of the presets."""

from pathlib import Path

import pytest
import torch

from diffsat.config import ModelConfig, load_config
from diffsat.models.unet import ModelShapeError, build_unet, count_parameters

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def small(**kw) -> ModelConfig:
    base = dict(base_channels=8, channel_mults=(1, 2, 2), res_blocks=1, attn_resolutions=(7,), norm_groups=4)
    return ModelConfig(**(base | kw))


@pytest.mark.parametrize("size, mults, attn", [(28, (1, 2, 2), (7,)), (32, (1, 2, 2, 2), (8,)), (64, (1, 2, 2, 2), (16,))])
def test_output_shape_matches_input(size: int, mults: tuple, attn: tuple) -> None:
    net = build_unet(small(image_size=size, channel_mults=mults, attn_resolutions=attn, in_channels=3, out_channels=3))
    x = torch.randn(2, 3, size, size)
    out = net(x, torch.tensor([0.3, 0.9]))
    assert out.shape == x.shape and out.dtype == torch.float32 and bool(torch.isfinite(out).all())


def test_noise_level_changes_the_output_and_accepts_b1() -> None:
    net = build_unet(small(image_size=28)).eval()
    x = torch.randn(1, 1, 28, 28)
    a, b = net(x, torch.tensor([0.1])), net(x, torch.tensor([[0.9]]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "attn, expected",
    [((7,), ["downs.4.attn", "mid.0.attn", "ups.0.attn", "ups.1.attn"]),  # 28 -> 14 -> 7: the lowest level
     ((14,), ["downs.2.attn", "mid.0.attn", "ups.3.attn", "ups.4.attn"]),
     ((), ["mid.0.attn"])],
)
def test_attention_sits_where_the_resolution_is_listed(attn: tuple, expected: list) -> None:
    net = build_unet(small(image_size=28, attn_resolutions=attn))
    assert [n for n, _ in net.named_modules() if n.endswith(".attn")] == expected


def test_invalid_size_is_one_clear_error() -> None:
    with pytest.raises(ModelShapeError, match=r"image size 30 cannot pass 2 down-samplings.*multiples of 4 \(4, 8"):
        build_unet(small(image_size=30))
    net = build_unet(small(image_size=28))
    with pytest.raises(ModelShapeError, match="image size 30x30 cannot pass the network"):
        net(torch.randn(1, 1, 30, 30), torch.tensor([0.5]))
    with pytest.raises(ModelShapeError, match=r"expected images of shape \(B, 1, H, W\), got \(1, 3, 28, 28\)"):
        net(torch.randn(1, 3, 28, 28), torch.tensor([0.5]))


def test_norm_groups_must_divide_channels() -> None:
    with pytest.raises(ModelShapeError, match="norm_groups 3 does not divide"):
        build_unet(small(image_size=28, norm_groups=3))


def _params(config_file: str) -> int:
    with torch.device("meta"):
        return count_parameters(build_unet(load_config(CONFIGS / config_file).model))


@pytest.mark.parametrize(
    "config_file, expected",
    [
        ("paper/mnist_45m.json", 45_020_097),  # 64 / [1,2,8] / 2 blocks: "45M"
        ("paper/satellite_55m.json", 55_405_507),  # 64 / [1,2,4,8] / 2 blocks at 256 px: "55M"
        ("paper/ddpmcd_391m.json", 391_048_067),  # the DDPM-CD generator (reference key list)
    ],
)
def test_preset_parameter_counts(config_file: str, expected: int) -> None:
    assert _params(config_file) == expected


# ------------------------------------------------------------------------------- class-conditional networks


def test_class_embedding_exists_only_for_conditional_networks() -> None:
    assert "label_emb.weight" not in build_unet(small(image_size=28)).state_dict()
    net = build_unet(small(image_size=28, num_classes=10))
    weight = net.state_dict()["label_emb.weight"]
    assert weight.shape == (11, 8) and bool((weight == 0).all())  # 10 classes + "no class", zero at the start
    assert net.null_label == 10


def test_a_new_conditional_network_is_the_unconditional_one_and_labels_act_once_learnt() -> None:
    torch.manual_seed(0)
    plain = build_unet(small(image_size=28)).eval()
    torch.manual_seed(0)
    cond = build_unet(small(image_size=28, num_classes=3)).eval()
    x, level = torch.randn(3, 1, 28, 28), torch.tensor([0.2, 0.5, 0.8])
    labels = torch.tensor([0, 1, 2])
    assert torch.equal(cond(x, level, labels), plain(x, level))  # zero-initialised embedding
    with torch.no_grad():
        cond.label_emb.weight.normal_()
    same_x = x[:1].expand(3, -1, -1, -1)
    out = cond(same_x, torch.full((3,), 0.5), labels)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    assert torch.equal(cond(x, level), cond(x, level, torch.full((3,), 3)))  # None = "no class"


@pytest.mark.parametrize(
    "num_classes, labels, message",
    [(None, torch.tensor([0]), "class labels given to an unconditional network"),
     (3, torch.tensor([4]), "class labels must be in 0..2 \\(or 3 = no class\\)"),
     (3, torch.tensor([-1]), "class labels must be in 0..2"),
     (3, torch.tensor([0, 1]), "2 class labels for a batch of 1 images")],
)
def test_wrong_labels_are_clear_errors(num_classes, labels, message) -> None:
    net = build_unet(small(image_size=28, num_classes=num_classes))
    with pytest.raises(ModelShapeError, match=message):
        net(torch.randn(1, 1, 28, 28), torch.tensor([0.5]), labels)
