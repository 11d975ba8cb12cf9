"""Latent diffusion end to end through the command line: an autoencoder run, then a diffusion run on its
latents that trains, resumes exactly, samples, chains and evaluates like a pixel run; and the one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffsat import rundir, sampling
from diffsat.cd.config import FeatureConfig
from diffsat.cd.features import FeatureError, load_backbone
from diffsat.cli import main
from diffsat.config import load_config, parse_config
from diffsat.errors import ConfigError
from diffsat.models import encoders as encoders_module
from diffsat.models.encoders import DECODE_PAD, AutoencoderLatents
from diffsat.models.unet import SR3UNet
from diffsat.training.runs import train
from diffsat.sampling import SampleSettings, generate

DATA = {"kind": "folder", "channels": 3, "image_size": 16, "load_size": 32, "random_crop": True, "holdout": 2,
        "hflip": True, "rot90": True}
TRAIN = {"batch_size": 4, "lr": 2e-3, "max_steps": 6, "warmup_steps": 1, "log_every": 2, "save_every": 3,
         "sample_every": 1000, "sample_steps": 4, "device": "cpu"}
AUTOENCODER = {"autoencoder": {"in_channels": 3, "base_channels": 8, "channel_mults": [1, 2], "latent_channels": 2,
                               "norm_groups": 4, "image_size": 16},
               "loss": {"kl_weight": 1e-6, "ssim_weight": 0.1, "fft_weight": 0.1}}
LATENT_UNET = {"in_channels": 2, "out_channels": 2, "base_channels": 8, "channel_mults": [1, 2], "res_blocks": 1,
               "attn_resolutions": [4], "norm_groups": 4, "image_size": 8}


def write_tiles(folder: Path, n: int = 40) -> Path:
    """``n`` 32 px RGB tiles with stripes and blocks (structure an autoencoder can learn)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        yy, xx = np.mgrid[0:32, 0:32]
        period = 4 + i % 5
        stripes = ((xx + yy * (i % 3)) // period) % 2
        image = np.stack([stripes * 200, (yy > 8 + i % 12) * 150, rng.integers(0, 60, (32, 32))], -1)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"tile_{i:02d}.png")
    return folder


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def autoencoder_config(tiles: Path, **train) -> dict:
    return {**AUTOENCODER, "data": {**DATA, "path": str(tiles)}, "train": {**TRAIN, **train}}


def latent_config(tiles: Path, autoencoder: Path, **train) -> dict:
    return {"model": LATENT_UNET, "diffusion": {"timesteps": 50}, "latent": {"autoencoder": str(autoencoder)},
            "data": {**DATA, "path": str(tiles)}, "train": {**TRAIN, **train}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(tiles folder, autoencoder run) trained once for the module."""
    root = tmp_path_factory.mktemp("latent")
    tiles = write_tiles(root / "tiles")
    config = write_config(root / "ae.json", autoencoder_config(tiles))
    assert main(["train", str(config), "--out", str(root / "ae"), "--no-progress"]) == 0
    return tiles, root / "ae"


def test_autoencoder_run_stores_latent_statistics_and_reconstruction_quality(trained) -> None:
    _, ae = trained
    weights = load_file(ae / "ema.safetensors")
    assert not torch.equal(weights["latent_std"], torch.ones(2))  # set from the training tiles at every save
    report = json.loads((ae / "reconstruction.json").read_text())
    assert report["held_out"] and report["images"] == 20 and report["values_per_image"] == 2 * 8 * 8
    assert report["bicubic_side"] == 7 and {"psnr", "ssim", "swd"} <= set(report["autoencoder"])
    assert (ae / "samples" / "final.png").is_file() and (ae / "report.html").is_file()
    loaded = rundir.load_autoencoder(ae)
    assert torch.equal(loaded.network.latent_std, weights["latent_std"])


def test_latent_run_resumes_exactly_samples_chains_and_evaluates(trained, tmp_path: Path, capsys) -> None:
    tiles, ae = trained
    config = write_config(tmp_path / "latent.json", latent_config(tiles, ae))
    assert main(["train", str(config), "--out", str(tmp_path / "straight"), "--no-progress"]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "split"), "--no-progress",
                 "--set", "train.max_steps=3"]) == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "split"), "--no-progress", "--set",
                 "train.max_steps=6"]) == 0
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert rundir.run_file(tmp_path / "straight", rundir.LATENT_CACHE).is_file()

    run = tmp_path / "straight"
    assert main(["sample", str(run), "--out", str(tmp_path / "s"), "--n", "12", "--steps", "3"]) == 0
    pngs = sorted((tmp_path / "s").glob("sample_*.png"))
    assert len(pngs) == 12 and Image.open(pngs[0]).size == (16, 16) and Image.open(pngs[0]).mode == "RGB"
    assert main(["chain", str(run), "--out", str(tmp_path / "chain.png"), "--n", "2", "--steps", "10"]) == 0
    assert (tmp_path / "chain.png").is_file()
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(tmp_path / "s"), "--reference", str(run), "--train-set", str(run),
                 "--out", str(out), "--no-progress"]) == 0
    assert "swd" in json.loads(out.read_text())["metrics"]
    capsys.readouterr()

    with pytest.raises(FeatureError, match="is a latent diffusion run"):
        load_backbone(FeatureConfig(backbone=str(run)))

    loaded = rundir.load_model(run)
    assert isinstance(loaded.network, SR3UNet) and isinstance(loaded.encoder, AutoencoderLatents)
    settings = SampleSettings("dpm++", steps=3, device="cpu", precision="fp32")
    latents = generate(loaded.network, loaded.config, 2, 0, settings, encoder=loaded.encoder, progress=False,
                       decode=False)
    images = generate(loaded.network, loaded.config, 2, 0, settings, encoder=loaded.encoder, progress=False)
    assert latents.shape == (2, 2, 8, 8) and images.shape == (2, 3, 16, 16)
    assert torch.allclose(images, loaded.encoder.decode(latents), atol=1e-5)


def test_autoencoder_with_discriminator_resumes_exactly(trained, tmp_path: Path) -> None:
    tiles, _ = trained
    cfg = autoencoder_config(tiles)
    cfg["loss"] = {**cfg["loss"], "adversarial_weight": 0.1, "adversarial_start": 2, "discriminator_channels": 8,
                   "discriminator_layers": 2}
    config = write_config(tmp_path / "ae_gan.json", cfg)
    assert main(["train", str(config), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "b"), "--no-progress",
                 "--set", "train.max_steps=3"]) == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "b"), "--no-progress",
                 "--set", "train.max_steps=6"]) == 0
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    states = [rundir.load_train_state(tmp_path / r) for r in "ab"]
    assert all(torch.equal(states[0]["discriminator"][k], states[1]["discriminator"][k]) for k in states[0]["discriminator"])
    columns = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"ae_rec", "ae_kl", "ae_ssim", "ae_fft", "ae_gan", "ae_discriminator"} <= set(columns)


@pytest.mark.parametrize("change, message", [
    ({"latent": {"autoencoder": "nowhere"}}, "latent.autoencoder 'nowhere': no autoencoder run"),
    ({"model": {**LATENT_UNET, "in_channels": 3}}, "set model.in_channels and model.out_channels to 2"),
    ({"model": {**LATENT_UNET, "image_size": 16}}, "model.image_size to 8"),
])
def test_a_latent_config_that_does_not_fit_its_autoencoder_is_one_line(trained, tmp_path: Path, capsys,
                                                                       change, message) -> None:
    tiles, ae = trained
    config = write_config(tmp_path / "bad.json", {**latent_config(tiles, ae), **change})
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_diffusion_run_is_not_an_autoencoder_and_an_autoencoder_does_not_sample(trained, tmp_path: Path,
                                                                                    capsys) -> None:
    tiles, ae = trained
    latent = write_config(tmp_path / "latent.json", latent_config(tiles, ae, max_steps=1))
    assert main(["train", str(latent), "--out", str(tmp_path / "latent"), "--no-progress"]) == 0
    wrong = write_config(tmp_path / "wrong.json", latent_config(tiles, tmp_path / "latent"))
    capsys.readouterr()
    assert main(["train", str(wrong), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "is a diffusion run, not an autoencoder run" in capsys.readouterr().err
    assert main(["sample", str(ae), "--out", str(tmp_path / "s")]) == 2
    assert "an autoencoder config" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="an autoencoder config"):
        load_config(ae / "config.json")


def test_pixel_configs_are_written_without_a_latent_section() -> None:
    assert "latent" not in parse_config({}).to_dict()
    cfg = parse_config({"latent": {"autoencoder": "runs/ae"}, "model": {"in_channels": 4}})
    assert cfg.to_dict()["latent"] == {"autoencoder": "runs/ae", "variant": None, "mean": None, "std": None}


def test_a_decoder_trained_on_interior_latents_decodes_sampled_latents_without_padding(trained, tmp_path: Path) -> None:
    tiles, whole = trained
    cfg = autoencoder_config(tiles)
    cfg["loss"] = {**cfg["loss"], "interior_margin": 1}  # 16 px crops, f = 2: the inner 12 px are decoded
    config = write_config(tmp_path / "ae.json", cfg)
    assert main(["train", str(config), "--out", str(tmp_path / "ae"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "ae" / "reconstruction.json").read_text())
    assert report["scored_px"] == 16 and report["values_per_image"] == 2 * 8 * 8  # crops cut 20 px, inner 16 scored
    loaded, plain = rundir.load_autoencoder(tmp_path / "ae"), rundir.load_autoencoder(whole)
    assert loaded.decode_pad == 0 and plain.decode_pad == DECODE_PAD

    z = torch.randn(3, 2, 8, 8)
    latents = loaded.encoder()
    with torch.no_grad():
        expected = loaded.network.decode(loaded.network.denormalise(z)).clamp(-1, 1)
    assert torch.allclose(latents.decode(z), expected, atol=1e-6)
    padded = plain.encoder().decode(z)
    with torch.no_grad():
        unpadded = plain.network.decode(plain.network.denormalise(z)).clamp(-1, 1)
    assert padded.shape == unpadded.shape == (3, 3, 16, 16) and not torch.allclose(padded, unpadded, atol=1e-3)
    assert torch.allclose(latents.decode(z, bf16=True), latents.decode(z), atol=0.1)

    latent = write_config(tmp_path / "latent.json", latent_config(tiles, tmp_path / "ae", max_steps=2))
    assert main(["train", str(latent), "--out", str(tmp_path / "latent"), "--no-progress"]) == 0
    assert rundir.load_model(tmp_path / "latent").encoder.decode_pad == 0


def test_a_latent_runs_encoding_counts_towards_its_time_limit(trained, tmp_path: Path) -> None:
    tiles, ae = trained
    config = parse_config(latent_config(tiles, ae, time_limit_minutes=1e-6))
    result = train(config, tmp_path / "run", progress=False)
    assert result.stopped_by == "time_limit" and result.step == 0 and result.elapsed_s > 0


def test_sampling_in_precision_auto_times_the_decoder_too(trained, tmp_path: Path, monkeypatch) -> None:
    tiles, ae = trained
    config = write_config(tmp_path / "latent.json", latent_config(tiles, ae, max_steps=1))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    loaded = rundir.load_model(tmp_path / "run")
    timed = []
    def record(precision, net, shape, *args, **kwargs) -> bool:
        timed.append((net, tuple(shape)))
        return False

    monkeypatch.setattr(sampling, "resolve_precision", record)  # the U-Net's choice
    monkeypatch.setattr(encoders_module, "resolve_precision", record)  # the decoder's, through decode_precision
    images = generate(loaded.network, loaded.config, 3, 0, SampleSettings("dpm++", steps=2, device="cpu"),
                      encoder=loaded.encoder, progress=False)
    pad = loaded.encoder.decode_pad
    assert images.shape == (3, 3, 16, 16)
    assert timed == [(loaded.network, (3, 2, 8, 8)),
                     (loaded.encoder.autoencoder.decoder, (3, 2, 8 + 2 * pad, 8 + 2 * pad))]
