from pathlib import Path

import pytest
import torch

from cd_fixtures import tiny_backbone  # noqa: F401  (fixture)
from diffsat.cd.config import DDPMCD_FEAT_SCALES, FeatureConfig, load_cd_config
from diffsat.cd.features import (
    FeatureCache,
    FeatureError,
    FeatureExtractor,
    decoder_module,
    first_decoder_scales,
    position_noise,
    load_backbone,
    resolve_levels,
)
from diffsat.cd.heads import DDPMCDHead, FCSiamDiff
from diffsat.config import load_config
from diffsat.diffusion.schedules import NoiseSchedule
from diffsat.models.layers import Upsample
from diffsat.models.unet import build_unet, count_parameters

ROOT = Path(__file__).resolve().parents[2]


def _extractor(backbone: Path, **kw: object) -> FeatureExtractor:
    cfg = FeatureConfig(backbone=str(backbone), noise_levels=(0.99, 0.8), decoder_scales=(1, 3), **kw)
    return FeatureExtractor(load_backbone(cfg), cfg)


def test_features_are_deterministic_per_seed_and_shaped_per_scale(tiny_backbone: Path) -> None:
    ex = _extractor(tiny_backbone, encoder_scales=(2,))
    img_a, img_b = torch.rand(3, 16, 16) * 2 - 1, torch.rand(3, 16, 16) * 2 - 1
    first = ex(img_a, img_b, position_noise(3, 0, 0, 16, 16, 0))
    again = ex(img_a, img_b, position_noise(3, 0, 0, 16, 16, 0))
    other = ex(img_a, img_b, position_noise(3, 0, 0, 16, 16, 1))
    assert [s.name for s in ex.scales] == ["e2", "d3", "d1"]  # coarse to fine (encoder 2 = downsampling, 8 px)
    assert first["A.d1"].shape == (2 * 8, 16, 16) and first["A.d3"].shape == (2 * 16, 8, 8)
    assert first["B.e2"].shape == (2 * 8, 8, 8)
    for key in first:
        assert torch.equal(first[key], again[key]) and not torch.equal(first[key], other[key])
    assert not torch.equal(first["A.d1"], first["B.d1"])


def test_feature_cache_round_trip(tiny_backbone: Path, tmp_path: Path) -> None:
    ex = _extractor(tiny_backbone)
    cache = FeatureCache(ex, tmp_path)
    a, b, noise = torch.rand(3, 16, 16), torch.rand(3, 16, 16), position_noise(3, 0, 0, 16, 16, 0)
    computed = cache.features(a, b, noise)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    read = cache.features(a, b, noise)
    assert all(torch.equal(computed[k], read[k]) for k in computed)
    assert torch.allclose(computed["A.d1"], ex(a, b, noise)["A.d1"], atol=1e-2)  # float16 storage


def test_ddpmcd_timesteps_on_its_schedule() -> None:
    """DDPM-CD's t = 50, 100, 400 on its 2000-step linear 1e-6..1e-2 schedule: the middle of the interval
    it draws sqrt(alpha_bar) from."""
    schedule = NoiseSchedule.named("linear", 2000, 1e-6, 1e-2)
    levels = resolve_levels(FeatureConfig(), schedule)
    assert levels == pytest.approx((0.996977, 0.987768, 0.819211), abs=2e-6)
    with pytest.raises(FeatureError, match="exceeds the backbone's 100-step"):
        resolve_levels(FeatureConfig(timesteps=(400,)), NoiseSchedule.named("linear", 100))


def test_391m_feature_scales_and_head_shapes_on_the_meta_device() -> None:
    """DDPM-CD's feat_scales on the 391M generator (random weights, no memory): the first decoder block after
    each upsampling, 128..1024 channels at 256..16 px; the feature path and the head give a 256 px mask."""
    cfg = load_config(ROOT / "configs" / "paper" / "ddpmcd_391m.json")
    with torch.device("meta"):
        net = build_unet(cfg.model)
    assert count_parameters(net) == pytest.approx(391.0e6, rel=1e-3)
    assert first_decoder_scales(net) == list(DDPMCD_FEAT_SCALES)
    ups = list(net.ups)
    found = [decoder_module(net, s) for s in DDPMCD_FEAT_SCALES]
    assert [(c, f) for _, c, f in found] == [(128, 1), (256, 2), (512, 4), (1024, 8), (1024, 16)]
    for module, _, factor in found[:-1]:  # each follows an upsampling (the coarsest follows the middle block)
        assert isinstance(ups[ups.index(module) - 1], Upsample)
    captured = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, s=s: captured.__setitem__(s, out))
             for s, (m, _, _) in zip(DDPMCD_FEAT_SCALES, found)]
    with torch.device("meta"):
        net(torch.empty(2, 3, 256, 256), torch.empty(2))
        for h in hooks:
            h.remove()
        feats = [torch.cat([captured[s]] * 3, dim=1) for s in reversed(DDPMCD_FEAT_SCALES)]
        head = DDPMCDHead([c for _, c, _ in reversed(found)], levels=3)
        out = head(feats, feats)
    assert [tuple(f.shape[1:]) for f in feats] == [(3072, 16, 16), (3072, 32, 32), (1536, 64, 64), (768, 128, 128),
                                                  (384, 256, 256)]
    assert out.shape == (2, 2, 256, 256)
    paper = load_cd_config(ROOT / "configs" / "paper" / "ddpmcd_levir.json")
    assert paper.features.decoder_scales == DDPMCD_FEAT_SCALES and paper.features.timesteps == (50, 100, 400)


def test_fc_siam_diff_has_daudts_parameter_count() -> None:
    assert count_parameters(FCSiamDiff(3)) == 1_350_146  # "about 1.35M" (Daudt et al. 2018)
    out = FCSiamDiff(3)(torch.randn(1, 3, 32, 48), torch.randn(1, 3, 32, 48))
    assert out.shape == (1, 2, 32, 48)


def test_scale_out_of_range_is_one_line(tiny_backbone: Path) -> None:
    with pytest.raises(FeatureError, match=r"decoder scales 0..3 .*first block after each upsampling: \[1, 3\]"):
        _extractor_with(tiny_backbone, (9,))


def _extractor_with(backbone: Path, decoder_scales: tuple[int, ...]) -> FeatureExtractor:
    cfg = FeatureConfig(backbone=str(backbone), noise_levels=(0.9,), decoder_scales=decoder_scales)
    return FeatureExtractor(load_backbone(cfg), cfg)


def test_precision_is_part_of_the_cache_key_and_bf16_stays_close(tiny_backbone: Path) -> None:
    fp32, bf16 = _extractor(tiny_backbone, precision="fp32"), _extractor(tiny_backbone, precision="bf16")
    assert (fp32.bf16, bf16.bf16) == (False, True)
    assert FeatureCache(fp32, None)._settings != FeatureCache(bf16, None)._settings
    torch.manual_seed(0)
    before, after = torch.rand(3, 32, 32) * 2 - 1, torch.rand(3, 32, 32) * 2 - 1
    noise = position_noise(3, 0, 0, 32, 32, 0)
    a, b = fp32(before, after, noise), bf16(before, after, noise)
    for key in a:
        assert not torch.equal(a[key], b[key])
        assert float((a[key] - b[key]).norm() / a[key].norm()) < 0.05, key  # bf16 rounding, not a different map
    auto = _extractor(tiny_backbone)  # precision auto: decided by a cached timing on this machine
    assert auto.cfg.precision == "auto" and isinstance(auto.bf16, bool)
