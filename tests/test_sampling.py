"""Running samplers over many images (diffsat.sampling): step-level progress, inference mode, batching,
channels_last, torch.compile and denoising chains, on a small random U-Net."""

from __future__ import annotations

import pytest
import torch

from diffsat import sampling
from diffsat.config import Config, ModelConfig
from diffsat.diffusion.objective import dynamic_threshold
from diffsat.diffusion.schedules import NoiseSchedule, respaced_alphas_cumprod
from diffsat.models.unet import build_unet
from diffsat.samplers import SAMPLERS
from diffsat.sampling import SampleSettings, SampleSettingsError, chain_frames, generate

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
    base = {"sampler": "dpm++", "steps": 6, "batch_size": 2, "device": "cpu", "precision": "fp32"}
    return SampleSettings(**(base | kw))


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


@pytest.mark.parametrize("sampler", list(SAMPLERS))
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

    def fake_compile(module: torch.nn.Module, dynamic: bool, options: dict) -> torch.nn.Module:
        assert options == {"freezing": True} and dynamic is False  # static shapes: see prepare_net
        compiled.append(module)
        return module

    monkeypatch.setattr(sampling.torch, "compile", fake_compile)
    generate(net, config, 1, 0, settings(compile=True), progress=False)
    assert compiled == [net]
    generate(net, config, 1, 0, settings(compile=False), progress=False)
    assert len(compiled) == 1


@pytest.mark.slow
def test_compiled_network_gives_the_same_images(net, config) -> None:
    """3 images in batches of 2: the last, smaller batch recompiles (static shapes) and matches too."""
    plain = generate(net, config, 3, 3, settings(steps=3), progress=False)
    compiled = generate(net, config, 3, 3, settings(steps=3, compile=True), progress=False)
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-4)


def test_chain_frames_run_from_noise_to_the_image(net, config, capsys) -> None:
    s = settings(steps=10)
    frames, fractions = chain_frames(net, config, 2, 4, s, frames=6, progress=True)
    assert frames.shape == (6, 2, 1, 8, 8) and fractions == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert "10/10" in capsys.readouterr().err  # one batch of 2, 10 steps
    torch.testing.assert_close(frames[-1], generate(net, config, 2, 4, s, progress=False))
    noise = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(4 + i)) for i in range(2)])
    assert torch.equal(frames[0], noise.clamp(-1, 1))


# --- sampler options: spacing, eta, x0 handling ------------------------------------------------------------


def first_steps(net, config, **kw) -> list:
    """The StepInfo of every step of a one-image run with ``settings(**kw)``."""
    infos: list = []
    generate(net, config, 1, 0, settings(**kw), callback_factory=lambda first: infos.append, progress=False)
    return infos


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("spacing", [None, "uniform", "quadratic", "trailing", "logsnr"])
def test_spacing_reaches_the_sampler(net, config, sampler: str, spacing: str | None) -> None:
    """The levels the network is evaluated at are the chosen spacing's; None = the sampler's default."""
    infos = first_steps(net, config, sampler=sampler, spacing=spacing)
    own = spacing or ("logsnr" if sampler in ("dpm++", "dpm++sde") else "uniform")
    schedule = NoiseSchedule.from_config(config.diffusion)
    expected = respaced_alphas_cumprod(schedule, 6, own)[1:].sqrt().flip(0).tolist()
    assert [i.level for i in infos] == pytest.approx(expected, rel=1e-12)


def test_eta_reaches_ddim(net, config) -> None:
    """DDIM with eta = 1 is the ancestral sampler (same draws), so eta is passed through; eta = 0.5 lies
    elsewhere."""
    ancestral = generate(net, config, 3, 2, settings(sampler="ancestral"), progress=False)
    ddim1 = generate(net, config, 3, 2, settings(sampler="ddim", eta=1.0), progress=False)
    torch.testing.assert_close(ddim1, ancestral, rtol=1e-5, atol=1e-5)
    half = generate(net, config, 3, 2, settings(sampler="ddim", eta=0.5), progress=False)
    deterministic = generate(net, config, 3, 2, settings(sampler="ddim"), progress=False)
    assert not torch.allclose(half, ancestral, atol=1e-3) and not torch.allclose(half, deterministic, atol=1e-3)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_x0_clip_reaches_the_denoiser(net, config, sampler: str) -> None:
    """The first step sees x_T in every mode, so its x0 estimate is the raw one (none), clamped (static)
    or dynamically thresholded (dynamic) -- and the random network's raw estimate is far outside [-1, 1]."""
    raw = first_steps(net, config, sampler=sampler, x0_clip="none")[0].x0_hat
    assert raw.abs().max() > 2.0
    static = first_steps(net, config, sampler=sampler, x0_clip="static")[0].x0_hat
    dynamic = first_steps(net, config, sampler=sampler, x0_clip="dynamic")[0].x0_hat
    torch.testing.assert_close(static, raw.clamp(-1, 1))
    torch.testing.assert_close(dynamic, dynamic_threshold(raw))
    assert not torch.allclose(dynamic, static)


def test_the_training_loop_call_and_the_grid() -> None:
    s = SampleSettings("ancestral", steps=10, precision="fp32", device="cpu")  # as training/diffusion.py builds it
    assert (s.sampler, s.spacing, s.eta, s.x0_clip) == ("ancestral", None, 0.0, "static")
    assert s.sampler_options() == {}
    ddim = SampleSettings("ddim", steps=10, spacing="logsnr")
    assert ddim.sampler_options() == {"eta": 0.0}
    schedule = NoiseSchedule.named("linear", 100)
    assert torch.equal(ddim.grid(schedule), respaced_alphas_cumprod(schedule, 10, "logsnr"))
    assert torch.equal(SampleSettings("dpm++", steps=10).grid(schedule), respaced_alphas_cumprod(schedule, 10, "logsnr"))
    with pytest.raises(SampleSettingsError, match="unknown x0 clip"):
        SampleSettings(x0_clip=True)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"sampler": "dpm++", "eta": 0.5}, "eta (--eta 0.5) is a DDIM option and sampler 'dpm++' has none"),
        ({"sampler": "ancestral", "eta": 1.0}, "is a DDIM option and sampler 'ancestral' has none"),
        ({"sampler": "ddim", "eta": -0.1}, "eta must be >= 0"),
        ({"spacing": "cosine"}, "unknown spacing 'cosine': one of uniform, quadratic, trailing, logsnr"),
        ({"x0_clip": "soft"}, "unknown x0 clip 'soft': one of static, dynamic, none"),
        ({"sampler": "euler"}, "unknown sampler 'euler'"),
        ({"x0_quantile": 0.0}, "x0_quantile must be in (0, 1]"),
    ],
)
def test_bad_settings_are_one_line_errors(kw: dict, message: str) -> None:
    with pytest.raises(SampleSettingsError) as err:
        SampleSettings(**kw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_more_steps_than_the_schedule_is_an_error(net, config) -> None:
    with pytest.raises(SampleSettingsError, match="101 steps asked of a schedule of 100 timesteps"):
        generate(net, config, 1, 0, settings(steps=101), progress=False)


def test_progress_bar_names_the_options(net, config, capsys) -> None:
    generate(net, config, 1, 0, settings(sampler="ddim", eta=0.5, spacing="quadratic", x0_clip="dynamic"),
             progress=True)
    assert "(ddim (eta 0.5), 6 steps, quadratic spacing, dynamic x0)" in capsys.readouterr().err


# ------------------------------------------------------------------- class labels and classifier-free guidance

COND = MODEL.model_copy(update={"num_classes": 3})


@pytest.fixture()
def cond_config() -> Config:
    return Config(model=COND, diffusion={"timesteps": 100}, data={"image_size": 8, "channels": 1},
                  train={"guidance": 2.0})


@pytest.fixture()
def cond_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_unet(COND)
    with torch.no_grad():
        net.label_emb.weight.normal_(std=3.0)  # as if trained: the classes change the output
    return net


def test_labels_choose_the_class_and_sample_i_keeps_its_label_across_batch_sizes(cond_net, cond_config) -> None:
    every = generate(cond_net, cond_config, 6, 0, settings(batch_size=4), progress=False)  # labels 0 1 2 0 1 2
    again = generate(cond_net, cond_config, 6, 0, settings(batch_size=6), progress=False)
    assert torch.allclose(every, again, atol=1e-5)
    sevens = generate(cond_net, cond_config, 6, 0, settings(), labels=[1], progress=False)
    assert torch.allclose(sevens[1], every[1], atol=1e-5) and torch.allclose(sevens[4], every[4], atol=1e-5)
    assert not torch.allclose(sevens[0], every[0], atol=1e-3)  # same noise, another class


def test_guidance_defaults_to_the_run_config_and_one_means_conditional_only(cond_net, cond_config, capsys) -> None:
    default = generate(cond_net, cond_config, 2, 0, settings(), progress=True)
    assert "guidance 2)" in capsys.readouterr().err
    explicit = generate(cond_net, cond_config, 2, 0, settings(guidance=2.0), progress=False)
    assert torch.equal(default, explicit)
    plain = generate(cond_net, cond_config, 2, 0, settings(guidance=1.0), progress=False)
    assert not torch.allclose(plain, default, atol=1e-3)


@pytest.mark.parametrize("kw, message", [({"labels": [1]}, "--label needs a class-conditional model"),
                                         ({"guidance": 2.0}, "--guidance 2 needs a class-conditional model")])
def test_labels_and_guidance_on_an_unconditional_model_are_clear_errors(net, config, kw, message) -> None:
    from diffsat.diffusion.guidance import LabelError

    labels = kw.pop("labels", None)
    with pytest.raises(LabelError, match=message):
        generate(net, config, 1, 0, settings(**kw), labels=labels, progress=False)


def test_chain_of_a_conditional_model_follows_the_label(cond_net, cond_config) -> None:
    frames, _ = chain_frames(cond_net, cond_config, 1, 0, settings(), frames=3, labels=[2])
    images = generate(cond_net, cond_config, 1, 0, settings(), labels=[2], progress=False)
    assert torch.allclose(frames[-1], images, atol=1e-5)
