"""The autoencoder network, its loss terms and the reconstruction measures (closed forms, round trips)."""

import math

import pytest
import torch

from diffsat.autoencoder.losses import (
    AutoencoderLoss,
    fft_amplitude_l1,
    hinge_discriminator_loss,
    kl_to_standard_normal,
)
from diffsat.evaluation.fidelity import psnr, ssim
from diffsat.autoencoder.quality import bicubic_round_trip, bicubic_side, reconstruct, reconstruction_quality
from diffsat.config import AutoencoderLossConfig, AutoencoderModelConfig, parse_autoencoder_config
from diffsat.errors import ConfigError
from diffsat.models.autoencoder import Autoencoder, PatchDiscriminator, interior
from diffsat.models.unet import ModelShapeError


def small(mults=(1, 2, 2), **kw) -> AutoencoderModelConfig:
    return AutoencoderModelConfig(base_channels=8, channel_mults=mults, norm_groups=4, latent_channels=3,
                                  image_size=32, **kw)


@pytest.mark.parametrize("mults, factor", [((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_latent_shapes_follow_the_factor(mults, factor) -> None:
    torch.manual_seed(0)
    net = Autoencoder(small(mults, attention=True)).eval()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    mean, logvar = net.encode(x)
    assert net.factor == factor
    assert mean.shape == logvar.shape == (2, 3, 32 // factor, 48 // factor)
    reconstruction, m2, _ = net(x)
    assert reconstruction.shape == x.shape and torch.equal(m2, mean)
    assert net.decode(mean).shape == x.shape


def test_wrong_input_is_a_clear_error() -> None:
    net = Autoencoder(small())
    with pytest.raises(ModelShapeError, match="multiples of 4"):
        net.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ModelShapeError, match="norm_groups"):
        Autoencoder(AutoencoderModelConfig(base_channels=6, norm_groups=4))


def test_posterior_sample_uses_the_given_noise() -> None:
    torch.manual_seed(0)
    net = Autoencoder(small()).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = net.encode(x)
    noise = torch.randn_like(mean)
    with torch.no_grad():
        got, _, _ = net(x, noise)
        expected = net.decode(mean + torch.exp(0.5 * logvar) * noise)
    assert torch.allclose(got, expected, atol=1e-6)


def test_latent_statistics_normalise_to_unit_variance_and_round_trip() -> None:
    net = Autoencoder(small())
    z = torch.randn(50, 3, 4, 4) * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1) + torch.tensor([1.0, -2.0, 0.0]).view(1, 3, 1, 1)
    net.set_latent_stats(z)
    normal = net.normalise(z)
    per_channel = normal.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-5)
    assert torch.allclose(net.denormalise(normal), z, atol=1e-5)
    assert {"latent_mean", "latent_std"} <= set(net.state_dict())  # saved with the weights


def test_psnr_ssim_kl_fft_closed_forms() -> None:
    x = torch.zeros(2, 3, 16, 16)
    y = x + 0.2  # mse 0.04 on the [-1, 1] scale (peak-to-peak 2): 10 log10(4 / 0.04) = 20 dB
    assert torch.allclose(psnr(x, y), torch.full((2,), 20.0), atol=1e-4)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(image, image), torch.ones(2), atol=1e-5)
    assert float(ssim(image, -image).mean()) < 0.5
    mean, logvar = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    assert float(kl_to_standard_normal(mean, logvar)) == 0.0
    # one value: mean 1, variance e: 0.5 * (1 + e - 1 - 1) = (e - 1) / 2
    assert math.isclose(float(kl_to_standard_normal(torch.ones(1), torch.ones(1))), (math.e - 1) / 2, rel_tol=1e-6)
    assert float(fft_amplitude_l1(image, image)) == 0.0
    # constant 4x4 images 1 and 1.5: only the DC bin is non-zero, 16 / sqrt(16) = 4 and 6; mean over 4 x 3 bins
    constant = torch.ones(1, 1, 4, 4)
    assert math.isclose(float(fft_amplitude_l1(constant, constant * 1.5)), 2 / 12, rel_tol=1e-6)


def test_hinge_losses() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5 -> 0.25; fake: relu(1 - 2) = 0, relu(1 + 0) = 1 -> 0.5
    assert math.isclose(float(hinge_discriminator_loss(real, fake)), 0.5 * (0.25 + 0.5))


def test_loss_terms_follow_their_weights() -> None:
    torch.manual_seed(0)
    x, r = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    mean, logvar = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    plain = AutoencoderLoss(AutoencoderLossConfig(kl_weight=0.0))(x, r, mean, logvar)
    assert set(plain) == {"loss", "rec"} and torch.equal(plain["loss"], (r - x).abs().mean())
    disc = PatchDiscriminator(3, 8, 2)
    cfg = AutoencoderLossConfig(reconstruction="l2", kl_weight=0.1, ssim_weight=0.2, fft_weight=0.3,
                                adversarial_weight=0.4)
    terms = AutoencoderLoss(cfg)(x, r, mean, logvar, disc)
    assert set(terms) == {"loss", "rec", "kl", "ssim", "fft", "gan"}
    total = terms["rec"] + 0.1 * terms["kl"] + 0.2 * terms["ssim"] + 0.3 * terms["fft"] + 0.4 * terms["gan"]
    assert torch.allclose(terms["loss"], total)
    assert torch.allclose(terms["gan"], -disc(r).mean())
    assert set(AutoencoderLoss(cfg)(x, r, mean, logvar)) == {"loss", "rec", "kl", "ssim", "fft"}  # no D: no GAN


def test_bicubic_baseline_keeps_as_many_values_as_the_latent() -> None:
    assert bicubic_side(3, 16 * 16 * 4) == 18  # sqrt(1024 / 3) = 18.5 -> 18
    flat = torch.full((2, 3, 32, 32), 0.25)
    assert torch.allclose(bicubic_round_trip(flat, 5), flat, atol=1e-5)  # constant images survive exactly
    torch.manual_seed(0)
    net = Autoencoder(small()).eval()
    report = reconstruction_quality(net, torch.rand(4, 3, 32, 32) * 2 - 1)
    assert report["values_per_image"] == 3 * 8 * 8 and report["bicubic_side"] == 8
    for side in ("autoencoder", "bicubic"):
        assert {"psnr", "ssim", "swd", "swd_32px", "swd_16px"} <= set(report[side])


def test_a_margin_decodes_the_interior_of_the_latent() -> None:
    torch.manual_seed(0)
    net = Autoencoder(small()).eval()  # f = 4
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        got, mean, _ = net(x, margin=2)
        assert mean.shape == (2, 3, 12, 12) and got.shape == (2, 3, 32, 32)  # 48 - 2 * 2 * 4
        assert torch.allclose(got, net.decode(mean[..., 2:10, 2:10]), atol=1e-6)
    assert torch.equal(interior(x, 0), x) and torch.equal(interior(x, 8), x[..., 8:40, 8:40])


def test_quality_with_a_margin_scores_the_interior_against_bicubic_of_the_interior() -> None:
    torch.manual_seed(0)
    net = Autoencoder(small()).eval()
    images = torch.rand(4, 3, 48, 48) * 2 - 1
    report = reconstruction_quality(net, images, margin=2)
    assert report["scored_px"] == 32 and report["values_per_image"] == 3 * 8 * 8 and report["bicubic_side"] == 8
    inside = images[..., 8:40, 8:40]
    assert report["autoencoder"]["psnr"] == pytest.approx(float(psnr(reconstruct(net, images, margin=2), inside).mean()))
    assert report["bicubic"]["psnr"] == pytest.approx(float(psnr(bicubic_round_trip(inside, 8), inside).mean()))


@pytest.mark.parametrize("margin, ssim_weight, left", [(2, 0.2, None), (3, 0.2, 8), (3, 0.0, None), (4, 0.0, 0)])
def test_an_interior_margin_must_leave_something_to_decode(margin, ssim_weight, left) -> None:
    config = {"autoencoder": {"in_channels": 3, "channel_mults": [1, 2, 4], "image_size": 32},
              "data": {"kind": "folder", "path": "x", "channels": 3, "image_size": 32},
              "loss": {"interior_margin": margin, "ssim_weight": ssim_weight}}
    if left is None:  # 32 - 2 * 3 * 4 = 8 px: enough without SSIM; SSIM needs 11
        assert parse_autoencoder_config(config).loss.interior_margin == margin
        return
    with pytest.raises(ConfigError, match=f"loss.interior_margin \\({margin}\\) leaves a {left} px interior"):
        parse_autoencoder_config(config)


def test_ssim_and_fft_stay_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = (x + 0.02 * torch.randn_like(x)).clamp(-1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(x, y), fft_amplitude_l1(x, y)
    assert torch.allclose(got[0], ssim(x, y), atol=1e-6) and got[0].max() < 1  # bf16 rounds near-equal images to 1
    assert torch.allclose(got[1], fft_amplitude_l1(x, y), atol=1e-6)
