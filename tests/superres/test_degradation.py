"""The degradation and its consistency metric in closed form."""

import math

import pytest
import torch

from diffsat.config import ConditionConfig
from diffsat.superres.degradation import (
    bring_down,
    condition_input,
    consistency_psnr,
    degrade,
    downsample,
    gaussian_blur,
    gaussian_kernel,
    upsample,
)


def blocks(low: torch.Tensor, scale: int) -> torch.Tensor:
    """Each low-resolution pixel as a ``scale x scale`` block."""
    return low.repeat_interleave(scale, -1).repeat_interleave(scale, -2)


def test_area_downsampling_is_the_block_mean_and_bicubic_keeps_constants() -> None:
    low = torch.rand(2, 3, 5, 7) * 2 - 1
    pattern = torch.tensor([[0.1, -0.1], [-0.1, 0.1]]).repeat(5, 7)  # zero mean in every 2 x 2 block
    assert torch.allclose(downsample(blocks(low, 2) + pattern, 2, "area"), low, atol=1e-6)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(downsample(flat, 4, "bicubic"), torch.full((1, 3, 4, 4), 0.3), atol=1e-6)
    assert torch.allclose(upsample(torch.full((1, 3, 4, 4), 0.3), 4), flat, atol=1e-6)
    with pytest.raises(ValueError, match="cannot be down-sampled by 4"):
        downsample(torch.zeros(1, 3, 10, 12), 4)


def test_gaussian_blur_keeps_constants_and_its_kernel_is_the_normalised_gaussian() -> None:
    k = gaussian_kernel(1.0)
    assert len(k) == 7 and math.isclose(float(k.sum()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(k[3] / k[4]), math.exp(0.5), rel_tol=1e-5)
    flat = torch.full((1, 2, 9, 9), -0.4)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat, atol=1e-6)
    x = torch.rand(1, 1, 9, 9)
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_consistency_in_closed_form() -> None:
    cond = ConditionConfig(scale=4, downsample="area")
    low = torch.rand(3, 3, 8, 8) * 1.6 - 0.8
    exact = blocks(low, 4)
    assert torch.allclose(consistency_psnr(exact, low, cond), torch.full((3,), 100.0))
    c = 0.1  # a constant offset of c on [-1, 1] is c / 2 on [0, 1]: PSNR = -10 log10((c / 2)^2)
    expected = -10 * math.log10((c / 2) ** 2)
    assert torch.allclose(consistency_psnr(exact + c, low, cond), torch.full((3,), expected), atol=1e-3)


def test_degrade_noise_is_seeded_sized_and_shards_like_one_process() -> None:
    cond = ConditionConfig(scale=2, downsample="area", noise_std=0.05)
    hr = torch.zeros(8, 3, 64, 64)
    low = degrade(hr, cond, torch.Generator().manual_seed(3))
    assert low.shape == (8, 3, 32, 32)
    assert abs(float(low.std()) - 0.05) < 0.002
    assert torch.equal(low, degrade(hr, cond, torch.Generator().manual_seed(3)))
    halves = [degrade(hr[r * 4 : (r + 1) * 4], cond, torch.Generator().manual_seed(3), shard=(r, 2)) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), low)
    with pytest.raises(ValueError, match="needs a generator"):
        degrade(hr, cond)
    assert torch.equal(bring_down(hr, cond), torch.zeros(8, 3, 32, 32))


def test_condition_input_is_sr3s_bicubic_upsampling_to_the_output_size() -> None:
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    up = condition_input(low, 4)
    assert up.shape == (2, 3, 32, 32) and float(up.abs().max()) <= 1.0
    ref = torch.nn.functional.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(up, ref)
