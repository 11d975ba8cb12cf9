"""PSNR, SSIM and luma against hand-computed values."""

import math

import pytest
import torch

from diffsat.evaluation.fidelity import fidelity, luma, psnr, shave, ssim


def test_psnr_of_a_constant_difference() -> None:
    a, b = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.1)
    # 0.1 on [-1, 1] is 0.05 on [0, 1]: PSNR = -10 log10(0.05^2) = 26.0206 dB
    assert torch.allclose(psnr(a, b), torch.full((2,), 26.0206), atol=1e-3)
    assert torch.equal(psnr(a, a), torch.full((2,), 100.0))


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    mx, my = 0.02, 0.05  # on [0, 1], dark enough for C1 to matter; both flat: contrast, structure terms 1
    a, b = torch.full((1, 1, 16, 16), mx * 2 - 1), torch.full((1, 1, 16, 16), my * 2 - 1)
    c1 = 0.01**2
    expected = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    assert math.isclose(float(ssim(a, b)[0]), expected, rel_tol=1e-3)  # 0.700 (0.763 with the wrong K1 0.03)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_luma_is_bt601_studio_range_and_shave_cuts_the_border() -> None:
    white, black = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert torch.allclose(luma(white), torch.full((1, 1, 2, 2), 235 / 255), atol=1e-4)
    assert torch.allclose(luma(black), torch.full((1, 1, 2, 2), 16 / 255))
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1
    assert math.isclose(float(luma(red)), (16 + 65.481) / 255, rel_tol=1e-5)
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert torch.equal(shave(x, 2), x[..., 2:4, 2:4])


def test_fidelity_reports_rgb_and_shaved_luma_per_image() -> None:
    truth = torch.rand(3, 3, 24, 24) * 2 - 1
    output = truth.clone()
    output[0, :, :2] = -1  # damage inside the 4 px border of image 0 only
    scores = fidelity(output, truth, border=4)
    assert set(scores) == {"psnr", "ssim", "psnr_y", "ssim_y"} and scores["psnr"].shape == (3,)
    assert float(scores["psnr_y"][0]) == 100.0 and float(scores["psnr"][0]) < 40
    assert set(fidelity(output[:, :1], truth[:, :1])) == {"psnr", "ssim"}
