"""The TAESD family as a frozen first stage: shapes of every variant, loading and its errors, the real TAEF2
round trip, normalised latents."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffsat.errors import CheckpointError
from diffsat.models.encoders import TaesdLatents, latent_statistics
from diffsat.models.taesd import VARIANTS, TaesdAutoencoder
from diffsat.rundir.taesd import load_taesd, random_taesd

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights" / "taesd"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_maps_256_px_to_an_eighth_and_back(variant: str) -> None:
    ae = random_taesd(variant)
    channels, mixer = VARIANTS[variant]
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    assert z.shape == (1, channels, 8, 6) and y.shape == x.shape
    assert any(".pool." in k for k in ae.decoder.state_dict()) == mixer
    params = sum(p.numel() for p in ae.encoder.parameters())
    assert 1.0e6 < params < 1.4e6  # about 1.2-1.3M per half, as published


def _save_pair(folder: Path, name: str, ae: TaesdAutoencoder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in ae.encoder.state_dict().items()}, folder / f"{name}_encoder.pth")
    torch.save({k: v.half() for k, v in ae.decoder.state_dict().items()}, folder / f"{name}_decoder.pth")


def test_the_variant_is_recognised_from_the_files_and_checked_when_named(tmp_path: Path) -> None:
    for variant in ("taesd", "taef1", "taef2"):
        _save_pair(tmp_path / variant, variant, random_taesd(variant, seed=1))
        ae = load_taesd(tmp_path / variant)
        assert (ae.latent_channels, ae.mixer) == VARIANTS[variant] and not any(p.requires_grad for p in ae.parameters())
    assert load_taesd(tmp_path / "taef2" / "taef2", "taef2").variant == "taef2"
    with pytest.raises(CheckpointError, match="which is not taesd3"):
        load_taesd(tmp_path / "taef2", "taesd3")


def test_missing_truncated_and_mismatched_weights_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"none; the family's weights are published at https://github"):
        load_taesd(tmp_path)
    _save_pair(tmp_path / "mixed", "x", random_taesd("taesd"))
    torch.save({k: v for k, v in random_taesd("taef2").decoder.state_dict().items()}, tmp_path / "mixed" / "x_decoder.pth")
    with pytest.raises(CheckpointError, match="not the two halves of one TAESD-family autoencoder"):
        load_taesd(tmp_path / "mixed")
    _save_pair(tmp_path / "cut", "t", random_taesd("taesd"))
    enc = tmp_path / "cut" / "t_encoder.pth"
    enc.write_bytes(enc.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"t_encoder\.pth: not a PyTorch checkpoint") as err:
        load_taesd(tmp_path / "cut")
    assert "\n" not in str(err.value)
    (tmp_path / "half").mkdir()
    torch.save(random_taesd("taesd").encoder.state_dict(), tmp_path / "half" / "h_encoder.pth")
    with pytest.raises(CheckpointError, match=r"h_decoder\.pth: missing beside h_encoder\.pth"):
        load_taesd(tmp_path / "half")


def test_normalised_latents_have_unit_statistics_and_decode_as_the_raw_ones() -> None:
    ae = random_taesd("taef2")
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    mean, std = latent_statistics(ae, images.split(4))
    latents = TaesdLatents(ae, mean, std)
    z = latents.encode(images)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(32), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(32), atol=1e-3)
    with torch.no_grad():
        raw = ae.decode(ae.encode(images)).clamp(-1, 1)
    assert torch.allclose(latents.decode(z, batch_size=4), raw, atol=1e-4)


@pytest.fixture(scope="module")
def taef2() -> TaesdAutoencoder:
    if not (WEIGHTS / "taef2_encoder.pth").is_file():
        pytest.skip("../shared/weights/taesd not found: the TAEF2 tests need the shared weights beside the repo")
    return load_taesd(WEIGHTS, "taef2")


def test_the_real_taef2_files_load_and_round_trip_held_out_tiles_better_than_bicubic(taef2, shared_data) -> None:
    """Every tenth UC Merced 256 px tile (8 of them): TAEF2 beats bicubic at the latent's number of values."""
    files = sorted((shared_data / "ucmerced-256").rglob("*.jpg"))[9::10][::6][:8]
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((256, 256)))).permute(2, 0, 1)
                     for f in files]).float() / 127.5 - 1
    with torch.no_grad():
        y = taef2.decode(taef2.encode(x)).clamp(-1, 1)
    side = 104  # 3 x 104^2 ~ 32 x 32^2 values
    bicubic = F.interpolate(F.interpolate(x, size=side, mode="bicubic", antialias=True), size=256, mode="bicubic")

    def psnr(a: torch.Tensor) -> float:
        return float((10 * torch.log10(4 / ((a.clamp(-1, 1) - x) ** 2).mean(dim=(1, 2, 3)))).mean())

    assert psnr(y) > 29.0 and psnr(y) > psnr(bicubic)
