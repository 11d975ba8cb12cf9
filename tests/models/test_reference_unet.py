"""Numerical identity with the SR3 / DDPM-CD U-Net, ``UNet.forward(x, noise_level)``.

The reference is re-implemented here as plain functions of a DDPM-CD-layout state dict, written from the
maths alone (no module of diffsat and no reference code is used): it walks the checkpoint's keys in index
order, so the structure comes from the file, not from our network builder.

- noise-level embedding: ``e_k = level * exp(-ln(1e4) * k / half)``, ``k = 0..half-1``, ``[sin e, cos e]``;
  then the MLP ``noise_level_mlp.{1,3}``: Linear -> Swish -> Linear (``t``, (B, C));
- Block ``P``: GroupNorm(``P.block.0``) -> Swish -> (Dropout: identity in eval) -> Conv 3x3 (``P.block.3``);
- ResnetBlock: ``block2(block1(h) + noise_func(t)[:, :, None, None]) + res_conv(h)`` (1x1 conv or identity);
- attention: GroupNorm, a bias-free 1x1 conv to 3C channels split q | k | v, weights
  ``softmax_j(sum_c q_ci k_cj / sqrt(C))`` over all H*W positions, ``out`` 1x1 conv, plus the input;
- ``downs``: ``init_conv`` (DDPM-CD) or ``downs.0`` (SR3) conv 3x3; ``*.conv`` stride-2 conv 3x3; res blocks;
  every output pushed on a skip stack (the first conv's output first);
- ``mid``: two res blocks (attention where the keys have it);
- ``ups``: res blocks fed ``cat((x, skip.pop()), dim=1)``; ``*.conv``: nearest x2 (each pixel repeated 2x2)
  then conv 3x3; ``final_conv``: a Block.

``SR3UNet`` loaded from the same state dict (both layouts) must agree to float32 rounding: its error
against the float64 evaluation of this reference is compared with the reference's own float32 error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffsat.config import Config
from diffsat.config import config_from_ddpmcd
from diffsat.models.layers import (
    Block,
    Downsample,
    FeatureWiseAffine,
    PositionalEncoding,
    SelfAttention,
    Upsample,
)
from diffsat.rundir import load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_KEYS = REPO_ROOT.parent / "shared" / "reference" / "ddpm-cd-generator-keys.txt"
PREFIX = "denoise_fn."
GN_EPS = 1e-5  # torch.nn.GroupNorm's default, as in SR3
StateDict = dict[str, torch.Tensor]

# ------------------------------------------------------------------------------- the reference, as maths


def ref_embedding(level: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) or (B, 1) levels -> (B, dim): ``[sin(level f_k), cos(level f_k)]``, ``f_k = 1e4 ** (-k / half)``."""
    half = dim // 2
    k = torch.arange(half, dtype=level.dtype)
    e = level.reshape(-1, 1) * torch.exp(-math.log(1e4) * k / half)
    return torch.cat([torch.sin(e), torch.cos(e)], dim=1)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def ref_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Normalise each of ``groups`` channel groups over (C/G, H, W) by its mean and biased variance."""
    b, c = x.shape[:2]
    g = x.reshape(b, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + GN_EPS)).reshape(x.shape)
    return y * weight.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)


def ref_block(sd: StateDict, p: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    h = swish(ref_group_norm(x, groups, sd[f"{p}.block.0.weight"], sd[f"{p}.block.0.bias"]))
    return F.conv2d(h, sd[f"{p}.block.3.weight"], sd[f"{p}.block.3.bias"], padding=1)


def ref_affine(sd: StateDict, p: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """FeatureWiseAffine without affine level: ``x + (W t + b)`` broadcast over H, W."""
    shift = F.linear(t, sd[f"{p}.noise_func.0.weight"], sd[f"{p}.noise_func.0.bias"])
    return x + shift[:, :, None, None]


def ref_resnet(sd: StateDict, p: str, x: torch.Tensor, t: torch.Tensor, groups: int) -> torch.Tensor:
    h = ref_block(sd, f"{p}.block1", x, groups)
    h = ref_block(sd, f"{p}.block2", ref_affine(sd, f"{p}.noise_func", h, t), groups)
    skip = F.conv2d(x, sd[f"{p}.res_conv.weight"], sd[f"{p}.res_conv.bias"]) if f"{p}.res_conv.weight" in sd else x
    return h + skip


def ref_softmax(s: torch.Tensor) -> torch.Tensor:
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def ref_attention(sd: StateDict, p: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    n = ref_group_norm(x, groups, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"])
    qkv = F.conv2d(n, sd[f"{p}.qkv.weight"]).reshape(b, 3 * c, h * w)
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    weights = ref_softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c))  # (B, HW query, HW key)
    out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, h, w)
    return F.conv2d(out, sd[f"{p}.out.weight"], sd[f"{p}.out.bias"]) + x


def ref_nearest_x2(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def ref_res_attn(sd: StateDict, p: str, x: torch.Tensor, t: torch.Tensor, groups: int) -> torch.Tensor:
    x = ref_resnet(sd, f"{p}.res_block", x, t, groups)
    return ref_attention(sd, f"{p}.attn", x, groups) if f"{p}.attn.qkv.weight" in sd else x


def _indices(sd: StateDict, part: str) -> list[int]:
    return sorted({int(m[1]) for k in sd if (m := re.match(rf"{part}\.(\d+)\.", k))})


def reference_unet(state_dict: StateDict, x: torch.Tensor, noise_level: torch.Tensor, groups: int) -> torch.Tensor:
    """SR3 ``UNet.forward(x, noise_level)`` (eval mode) from a DDPM-CD or SR3 layout state dict.

    ``x``: (B, C_in, H, W); ``noise_level``: (B,) or (B, 1) = sqrt(alpha_bar). Returns (B, C_out, H, W).
    """
    sd = {k.removeprefix(PREFIX): v for k, v in state_dict.items()}
    t = ref_embedding(noise_level, sd["noise_level_mlp.1.weight"].shape[1])
    t = F.linear(swish(F.linear(t, sd["noise_level_mlp.1.weight"], sd["noise_level_mlp.1.bias"])),
                 sd["noise_level_mlp.3.weight"], sd["noise_level_mlp.3.bias"])
    feats = []
    if "init_conv.weight" in sd:  # DDPM-CD; SR3 has this conv as downs.0
        x = F.conv2d(x, sd["init_conv.weight"], sd["init_conv.bias"], padding=1)
        feats.append(x)
    for i in _indices(sd, "downs"):
        p = f"downs.{i}"
        if f"{p}.weight" in sd:
            x = F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], padding=1)
        elif f"{p}.conv.weight" in sd:
            x = F.conv2d(x, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], stride=2, padding=1)
        else:
            x = ref_res_attn(sd, p, x, t, groups)
        feats.append(x)
    for i in _indices(sd, "mid"):
        x = ref_res_attn(sd, f"mid.{i}", x, t, groups)
    for i in _indices(sd, "ups"):
        p = f"ups.{i}"
        if f"{p}.conv.weight" in sd:
            x = F.conv2d(ref_nearest_x2(x), sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=1)
        else:
            x = ref_res_attn(sd, p, torch.cat((x, feats.pop()), dim=1), t, groups)
    assert not feats, "every skip feature is consumed"
    return ref_block(sd, "final_conv", x, groups)


# ------------------------------------------------------------------------------------ state dicts


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """The 391M generator's U-Net keys and shapes (buffers left out), from the reference list."""
    if not REFERENCE_KEYS.is_file():
        pytest.skip(f"{REFERENCE_KEYS} not found: the reference key list lives in ../shared beside the repo")
    shapes = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        match = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip())
        if match and match[1].startswith(PREFIX):
            shapes[match[1]] = tuple(int(d) for d in match[2].split(",") if d.strip())
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> StateDict:
    """Random weights for every key: conv/linear ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.3^2), biases N(0, 0.3^2)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if len(shape) > 1:
            sd[key] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        else:
            norm_scale = ".block.0.weight" in key or ".norm.weight" in key
            sd[key] = float(norm_scale) + 0.3 * torch.randn(shape, generator=gen)
    return sd


def shrink(shapes: dict[str, tuple[int, ...]], factor: int) -> dict[str, tuple[int, ...]]:
    """Divide every channel width (the dims that are multiples of ``factor``) by ``factor``; image channels (3)
    and kernel sizes (3, 1) stay."""
    return {k: tuple(d // factor if d % factor == 0 else d for d in s) for k, s in shapes.items()}


def to_sr3_layout(sd: StateDict) -> StateDict:
    """DDPM-CD keys -> original SR3 keys: ``init_conv`` becomes ``downs.0``, ``downs.i`` becomes ``downs.{i+1}``."""
    out = {}
    for key, value in sd.items():
        rest = key.removeprefix(PREFIX)
        if rest.startswith("init_conv."):
            rest = "downs.0." + rest.removeprefix("init_conv.")
        elif match := re.match(r"downs\.(\d+)\.(.+)", rest):
            rest = f"downs.{int(match[1]) + 1}.{match[2]}"
        out[PREFIX + rest] = value
    return out


def ddpmcd_json(unet: dict, image_size: int) -> dict:
    sched = {"schedule": "linear", "n_timestep": 100, "linear_start": 1e-4, "linear_end": 2e-2}
    return {"model": {"which_model_G": "sr3", "unet": unet, "beta_schedule": {"train": sched, "val": sched},
                      "diffusion": {"image_size": image_size, "channels": unet["in_channel"], "conditional": False}}}


# The reference layout shrunk 16x in width (inner_channel 8, same keys, 5 levels, attention at the last
# level: 32 / 2**4 = 2 stands for the released 256 / 2**4 = 16).
SHRUNK_391M = dict(in_channel=3, out_channel=3, inner_channel=8, channel_multiplier=[1, 2, 4, 8, 8],
                   attn_res=[2], res_blocks=2, dropout=0.2, norm_groups=4)
# A different shape of network: one res block per level, attention at two resolutions, 1 channel.
TWO_ATTN = dict(in_channel=1, out_channel=1, inner_channel=12, channel_multiplier=[1, 2, 2],
                attn_res=[16, 4], res_blocks=1, dropout=0.1, norm_groups=3)


def case(name: str) -> tuple[Config, StateDict]:
    """(our config, a random DDPM-CD-layout state dict) for a named test network."""
    if name == "shrunk-391m":
        cfg = config_from_ddpmcd(ddpmcd_json(SHRUNK_391M, 32), name)
        return cfg, random_state_dict(shrink(reference_shapes(), 16))
    cfg = config_from_ddpmcd(ddpmcd_json(TWO_ATTN, 16), name)
    from diffsat.models.unet import build_unet  # keys only (shapes checked against the 391M list elsewhere)

    with torch.device("meta"):
        keys = {PREFIX + k: tuple(v.shape) for k, v in build_unet(cfg.model).state_dict().items()}
    return cfg, random_state_dict(keys, seed=1)


def inputs(cfg: Config, batch: int = 3, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    h, w = size or (cfg.model.image_size, cfg.model.image_size)
    x = torch.randn(batch, cfg.model.in_channels, h, w, generator=gen)
    return x, torch.tensor([0.999, 0.5, 0.01, 0.3][:batch])


def float64(sd: StateDict) -> StateDict:
    return {k: v.double() for k, v in sd.items()}


# ---------------------------------------------------------------------------------- whole network


@pytest.mark.parametrize("layout", ["ddpmcd", "sr3"])
@pytest.mark.parametrize("name", ["shrunk-391m", "two-attn"])
def test_sr3unet_equals_reference_to_float32_rounding(tmp_path: Path, name: str, layout: str) -> None:
    cfg, sd = case(name)
    sd = sd if layout == "ddpmcd" else to_sr3_layout(sd)
    torch.save(sd, tmp_path / "gen.pth")
    model = load_model(tmp_path / "gen.pth", cfg).network
    groups = cfg.model.norm_groups
    x, level = inputs(cfg)
    with torch.no_grad():
        ours = model(x, level)
        ref32 = reference_unet(sd, x, level, groups)
        exact = reference_unet(float64(sd), x.double(), level.double(), groups)
    scale = float(exact.abs().max())
    assert scale > 0.1 and ours.shape == exact.shape == x.shape
    err_ours, err_ref = float((ours.double() - exact).abs().max()), float((ref32.double() - exact).abs().max())
    # float32 rounding: within a small multiple of what the reference itself loses in float32 ...
    assert err_ours <= 4 * err_ref + 1e-6 * scale, (err_ours, err_ref)
    # ... and a few hundred float32 ulps of the output scale (a wrong scale, order or sign is O(scale)).
    assert err_ours <= 2e-5 * scale, (err_ours, scale)


def test_reference_conditioning_shape_and_non_square_input(tmp_path: Path) -> None:
    """SR3's GaussianDiffusion passes levels as (B, 1); any H, W that the down-samplings halve works."""
    cfg, sd = case("two-attn")
    torch.save(sd, tmp_path / "gen.pth")
    model = load_model(tmp_path / "gen.pth", cfg).network
    x, level = inputs(cfg, batch=2, size=(8, 20))
    with torch.no_grad():
        ours = model(x, level.reshape(-1, 1))
        exact = reference_unet(float64(sd), x.double(), level.double().reshape(-1, 1), cfg.model.norm_groups)
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=2e-5 * float(exact.abs().max()))


def test_each_sample_depends_on_its_own_level(tmp_path: Path) -> None:
    """The reference conditions each batch row on its own level: swapping levels changes the rows."""
    cfg, sd = case("two-attn")
    torch.save(sd, tmp_path / "gen.pth")
    model = load_model(tmp_path / "gen.pth", cfg).network
    x, level = inputs(cfg, batch=2)
    with torch.no_grad():
        a, b = model(x, level), model(x, level.flip(0))
    assert not torch.allclose(a, b, atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1], level[:1]), a[:1], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- pieces by hand


def test_embedding_by_hand() -> None:
    level = torch.tensor([0.5, 1.0], dtype=torch.float64)
    # dim 4: half = 2, frequencies exp(-ln(1e4) * k / 2) = 1, 1e-2
    expected = torch.tensor([[math.sin(0.5), math.sin(0.005), math.cos(0.5), math.cos(0.005)],
                             [math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)]], dtype=torch.float64)
    torch.testing.assert_close(ref_embedding(level, 4), expected, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(PositionalEncoding(4)(level), expected, rtol=1e-15, atol=1e-15)
    # the 391M network's width: dim 128, half 64; frequency k is 1e4 ** (-k / 64)
    emb = PositionalEncoding(128)(torch.tensor([0.7], dtype=torch.float64))
    for k in (0, 1, 32, 63):
        assert emb[0, k].item() == pytest.approx(math.sin(0.7 * 1e4 ** (-k / 64)), rel=1e-13)
        assert emb[0, 64 + k].item() == pytest.approx(math.cos(0.7 * 1e4 ** (-k / 64)), rel=1e-13)


def test_feature_wise_affine_is_additive_by_hand() -> None:
    affine = FeatureWiseAffine(3, 2)
    with torch.no_grad():
        affine.noise_func[0].weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]]))
        affine.noise_func[0].bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    emb = torch.tensor([[1.0, 2.0, 3.0]])  # -> shifts 1 + 6 + 0.5 = 7.5 and -2
    expected = x + torch.tensor([7.5, -2.0]).reshape(1, 2, 1, 1)
    sd = {"a.noise_func.0." + k: v for k, v in affine.noise_func[0].state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(affine(x, emb), expected)
        torch.testing.assert_close(ref_affine(sd, "a", x, emb), expected)


def _attention_by_hand(eps: float = GN_EPS) -> tuple[torch.Tensor, torch.Tensor, SelfAttention]:
    """C = 4 channels, 2 positions; channel c holds (-(c+1), c+1), so GroupNorm(4 groups) maps it to
    (-s_c, s_c) with ``s_c = (c+1) / sqrt((c+1)^2 + eps)``. q = n, k = 2n, v = 3n (qkv rows), out conv 0.5x + 0.1.

    Scores: ``q_i . k_j / sqrt(4) = 2 S n_i n_j / 2`` with ``S = sum s_c^2``, so position 0 weights itself by
    ``p = 1 / (1 + exp(-2 S))``; attention output at position 0 = ``3 s_c (1 - 2p)`` (position 1: negated).
    """
    c = 4
    attn = SelfAttention(c, norm_groups=c).double()
    eye = torch.eye(c, dtype=torch.float64).reshape(c, c, 1, 1)
    with torch.no_grad():
        attn.norm.weight.fill_(1.0)
        attn.norm.bias.zero_()
        attn.qkv.weight.copy_(torch.cat([eye, 2 * eye, 3 * eye]))
        attn.out.weight.copy_(0.5 * eye)
        attn.out.bias.fill_(0.1)
    x = torch.tensor([[-(i + 1.0), i + 1.0] for i in range(c)], dtype=torch.float64).reshape(1, c, 1, 2)
    s = [(i + 1) / math.sqrt((i + 1) ** 2 + eps) for i in range(c)]
    p = 1 / (1 + math.exp(-2 * sum(v * v for v in s)))
    expected = torch.tensor([[0.5 * 3 * s[i] * (1 - 2 * p) * sign + 0.1 for sign in (1, -1)] for i in range(c)],
                            dtype=torch.float64).reshape(1, c, 1, 2) + x
    return x, expected, attn


def test_attention_by_hand() -> None:
    x, expected, attn = _attention_by_hand()
    sd = {"a." + k: v for k, v in attn.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ref_attention(sd, "a", x, 4), expected, rtol=1e-12, atol=1e-12)
    # without the 1/sqrt(C) scaling the self-weight would be 1 / (1 + exp(-4 S)): a different answer
    s2 = sum(((i + 1) / math.sqrt((i + 1) ** 2 + GN_EPS)) ** 2 for i in range(4))
    unscaled = 0.5 * 3 * (1 / math.sqrt(1 + 1e-5)) * (1 - 2 / (1 + math.exp(-4 * s2))) + 0.1 - 1.0
    assert abs(attn(x)[0, 0, 0, 0].item() - unscaled) > 1e-3


def test_block_by_hand() -> None:
    """GroupNorm (1 group) -> Swish -> Conv 3x3 whose only tap is the centre (2x + 0.5)."""
    block = Block(1, 1, groups=1).double().eval()
    with torch.no_grad():
        block.block[0].weight.fill_(1.0)
        block.block[0].bias.zero_()
        block.block[3].weight.zero_()
        block.block[3].weight[0, 0, 1, 1] = 2.0
        block.block[3].bias.fill_(0.5)
    x = torch.tensor([[[[-3.0, 3.0]]]], dtype=torch.float64)
    s = 3 / math.sqrt(9 + GN_EPS)
    expected = torch.tensor([[[[2 * (-s) / (1 + math.exp(s)) + 0.5, 2 * s / (1 + math.exp(-s)) + 0.5]]]],
                            dtype=torch.float64)
    sd = {"b." + k: v for k, v in block.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ref_block(sd, "b", x, 1), expected, rtol=1e-12, atol=1e-12)


def _centre_tap(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.bias.zero_()


def test_nearest_upsample_and_strided_downsample_by_hand() -> None:
    up, down = Upsample(1), Downsample(1)
    _centre_tap(up.conv)
    _centre_tap(down.conv)
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    big = torch.tensor([[[[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]])
    with torch.no_grad():
        assert torch.equal(up(x), big) and torch.equal(ref_nearest_x2(x), big)
        grid = torch.arange(16.0).reshape(1, 1, 4, 4)
        assert torch.equal(down(grid), torch.tensor([[[[0.0, 2.0], [8.0, 10.0]]]]))  # rows/cols 0 and 2


def test_group_norm_reference_matches_torch() -> None:
    x = torch.randn(2, 6, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w, b = torch.linspace(0.5, 2, 6, dtype=torch.float64), torch.linspace(-1, 1, 6, dtype=torch.float64)
    torch.testing.assert_close(ref_group_norm(x, 3, w, b), F.group_norm(x, 3, w, b, GN_EPS), rtol=1e-12, atol=1e-12)
