"""Running samplers over many images (diffsat.sampling): step-level progress, inference mode, batching,
channels_last, torch.compile and denoising chains, on a small random U-Net."""

from __future__ import annotations

import pytest
import torch

from diffsat import sampling
from diffsat.config import Config, ModelConfig
from diffsat.models.unet import build_unet
from diffsat.sampling import SampleSettings, chain_frames, generate

MODEL = ModelConfig(in_channels=1, out_channels=1, base_channels=16, channel_mults=(1, 2), res_blocks=1,
                    attn_resolutions=(4,), norm_groups=8, image_size=8)


@pytest.fixture()
def config() -> Config:
    return Config(model=MODEL, diffusion={"timesteps": 100}, data={"image_size": 8, "channels": 1})


@pytest.fixture()
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(MODEL)


def settings(**kw) -> SampleSettings:
    return SampleSettings(**({"sampler": "dpm++", "steps": 6, "batch_size": 2, "device": "cpu"} | kw))


def test_progress_bar_counts_steps_of_every_batch(net, config, capsys) -> None:
    images = generate(net, config, 3, 0, settings(steps=5), progress=True)
    err = capsys.readouterr().err
    assert images.shape == (3, 1, 8, 8)
    assert "sampling 3 images (dpm++, 5 steps)" in err
    assert "10/10" in err and "images=3/3" in err  # 2 batches x 5 steps
    assert "step" in err


def test_no_progress_output_when_disabled(net, config, capsys) -> None:
    generate(net, config, 2, 0, settings(), progress=False)
    assert capsys.readouterr().err == ""


def test_callbacks_still_see_every_step(net, config) -> None:
    seen: list[tuple[int, int]] = []
    generate(net, config, 3, 0, settings(steps=4),
             callback_factory=lambda first: lambda info: seen.append((first, info.index)), progress=False)
    assert seen == [(0, 1), (0, 2), (0, 3), (0, 4), (2, 1), (2, 2), (2, 3), (2, 4)]


def test_results_are_ordinary_tensors_and_net_stays_trainable(net, config) -> None:
    """Sampling runs under inference mode, yet neither the images nor the network's parameters become
    inference tensors (the training loop keeps updating its EMA network in place)."""
    images = generate(net, config, 2, 0, settings(), progress=False)
    assert not images.is_inference()
    assert not any(p.is_inference() for p in net.parameters())
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.0)  # an in-place update of an inference tensor would raise here


def test_inference_mode_inside_the_sampler(net, config) -> None:
    modes: list[bool] = []
    generate(net, config, 1, 0, settings(steps=2),
             callback_factory=lambda first: lambda info: modes.append(torch.is_inference_mode_enabled()),
             progress=False)
    assert modes == [True, True]


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm++"])
def test_batch_size_and_channels_last_do_not_change_images(net, config, sampler: str) -> None:
    one = generate(net, config, 3, 5, settings(sampler=sampler, batch_size=1, channels_last=False), progress=False)
    again = generate(net, config, 3, 5, settings(sampler=sampler, batch_size=1, channels_last=False), progress=False)
    assert torch.equal(one, again)
    three = generate(net, config, 3, 5, settings(sampler=sampler, batch_size=3, channels_last=True), progress=False)
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-5)
    assert one.abs().max() <= 1.0 and one.std() > 0.1


def test_compile_setting_compiles_the_network(net, config, monkeypatch) -> None:
    """``SampleSettings(compile=True)`` hands the prepared network to ``torch.compile`` (stand-in here:
    the real compile is the slow test below)."""
    compiled: list[torch.nn.Module] = []

    def fake_compile(module: torch.nn.Module, options: dict) -> torch.nn.Module:
        assert options == {"freezing": True}
        compiled.append(module)
        return module

    monkeypatch.setattr(sampling.torch, "compile", fake_compile)
    generate(net, config, 1, 0, settings(compile=True), progress=False)
    assert compiled == [net]
    generate(net, config, 1, 0, settings(compile=False), progress=False)
    assert len(compiled) == 1


@pytest.mark.slow
def test_compiled_network_gives_the_same_images(net, config) -> None:
    plain = generate(net, config, 2, 3, settings(steps=3), progress=False)
    compiled = generate(net, config, 2, 3, settings(steps=3, compile=True), progress=False)
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-4)


def test_chain_frames_run_from_noise_to_the_image(net, config, capsys) -> None:
    s = settings(steps=10)
    frames, fractions = chain_frames(net, config, 2, 4, s, frames=6, progress=True)
    assert frames.shape == (6, 2, 1, 8, 8) and fractions == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert "10/10" in capsys.readouterr().err  # one batch of 2, 10 steps
    torch.testing.assert_close(frames[-1], generate(net, config, 2, 4, s, progress=False))
    noise = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(4 + i)) for i in range(2)])
    assert torch.equal(frames[0], noise.clamp(-1, 1))
