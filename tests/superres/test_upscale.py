"""Upscaling inputs of any size window by window: stitching, georeferencing, draws, bad inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from torch import nn

from diffsat.config import parse_config
from diffsat.geo.normalise import fixed_normalisation
from diffsat.geo.raster import RasterError
from diffsat.models.unet import build_unet
from diffsat.sampling import SampleSettings
from diffsat.superres import upscale as up
from diffsat.diffusion.conditioning import regress
from diffsat.superres.degradation import condition_input
from diffsat.superres.outputs import upscale_tiles
from diffsat.superres.upscale import UpscaleError, UpscaleOptions, upscale_file

from sr_fixtures import sr_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "geo"))
from geo_fixtures import write_raster  # noqa: E402

SETTINGS = SampleSettings("ancestral", 2, batch_size=4, precision="fp32", channels_last=False, device="cpu")


class LocalNet(nn.Module):
    """A convolutional stand-in for a regression U-Net: ``(x, level) -> x + conv(x)``, a 3 x 3 receptive field."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return (x + 0.3 * self.conv(x)).clamp(-1, 1)


class ZeroNet(nn.Module):
    """A network that makes zeros of the image's 3 channels, whatever its input."""

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x[:, -3:])


def regression_config(tmp_path: Path):
    return parse_config(sr_config(tmp_path, "regression"))


def test_stitched_windows_reproduce_the_whole_image_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    low = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)  # 37 x 29: not a multiple of the 4 px window
    Image.fromarray(low).save(tmp_path / "low.png")
    net, config = LocalNet(), regression_config(tmp_path)
    done = upscale_file(net, config, tmp_path / "low.png", tmp_path / "out",
                        UpscaleOptions(SETTINGS, window=8, progress=False))
    with Image.open(done.output) as img:
        stitched = np.asarray(img).astype(int)
    x = torch.from_numpy(low).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        whole = regress(net, condition_input(x, 4))[0]
    expected = np.clip(np.round((whole.numpy() + 1) * 127.5), 0, 255).transpose(1, 2, 0).astype(int)
    assert stitched.shape == (148, 116, 3)
    assert np.abs(stitched - expected).max() <= 1 and (stitched != expected).mean() < 1e-3


@pytest.mark.parametrize("method", ["diffusion", "regression"])
def test_a_residual_network_that_makes_zeros_gives_the_bicubic_input(tmp_path: Path, method: str) -> None:
    raw = sr_config(tmp_path, method)
    raw["condition"]["target"], raw["diffusion"]["objective"] = "residual", "x0"
    config = parse_config(raw)
    zeros = ZeroNet()
    low = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = upscale_tiles(zeros, config, low, 0, SETTINGS, draws=2)
    assert out.shape == (2, 2, 3, 24, 24)
    assert torch.allclose(out, condition_input(low, 4)[:, None].expand_as(out), atol=1e-5)


def test_a_georeferenced_raster_keeps_its_grid_at_the_finer_pixel_size(tmp_path: Path) -> None:
    array = np.random.default_rng(2).integers(0, 256, (3, 20, 24), dtype=np.uint8)
    src = write_raster(tmp_path / "scene.tif", array)
    done = upscale_file(LocalNet(), regression_config(tmp_path), src, tmp_path / "out",
                        UpscaleOptions(SETTINGS, progress=False))
    assert done.output.name == "scene_x4.tif"
    with rasterio.open(src) as a, rasterio.open(done.output) as b:
        assert b.crs == a.crs and (b.width, b.height) == (96, 80) and b.dtypes[0] == "uint8"
        assert b.transform.a == pytest.approx(a.transform.a / 4) and b.transform.e == pytest.approx(a.transform.e / 4)
        assert (b.transform.c, b.transform.f) == (a.transform.c, a.transform.f)
        assert b.bounds == pytest.approx(a.bounds)


def test_several_draws_write_their_mean_and_standard_deviation(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 6, 3), 90, dtype=np.uint8)).save(tmp_path / "low.png")
    config = parse_config(sr_config(tmp_path))  # diffusion: random weights, so the draws differ
    torch.manual_seed(0)
    done = upscale_file(build_unet(config.model), config, tmp_path / "low.png", tmp_path / "out",
                        UpscaleOptions(SETTINGS, draws=3, progress=False))
    with rasterio.open(done.std) as ds:
        std = ds.read(1)
    assert std.shape == (20, 24) and float(std.min()) >= 0 and float(std.mean()) > 1
    with Image.open(done.output) as a, Image.open(done.mean) as b:
        assert a.size == b.size == (24, 20) and not np.array_equal(np.asarray(a), np.asarray(b))


def test_bad_inputs_are_one_line_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    config, net = regression_config(tmp_path), LocalNet()
    options = UpscaleOptions(SETTINGS, progress=False)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(UpscaleError, match=r"grey\.png: 1 band\(s\) \(grey\) .* RGB .* convert the input to RGB"):
        upscale_file(net, config, tmp_path / "grey.png", tmp_path / "out", options)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UpscaleError, match=r"broken\.png: not a readable image"):
        upscale_file(net, config, tmp_path / "broken.png", tmp_path / "out", options)
    src = write_raster(tmp_path / "u16.tif", np.full((3, 8, 8), 1000, dtype=np.uint16))
    with pytest.raises(UpscaleError, match=r"u16\.tif: uint16 values, but the run was trained on 8-bit"):
        upscale_file(net, config, src, tmp_path / "out", options)
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(up, "MAX_PNG_PIXELS", 10_000)  # the 120 x 120 output: over the in-memory limit
    with pytest.raises(UpscaleError, match=r"big\.png: cannot be written as PNG: .* too large .* --format tif"):
        upscale_file(net, config, tmp_path / "big.png", tmp_path / "out", UpscaleOptions(SETTINGS, format="png"))
    done = upscale_file(net, config, tmp_path / "big.png", tmp_path / "out", options)
    assert done.output.suffix == ".tif"  # auto: written window by window instead
    with pytest.raises(UpscaleError, match=r"--window 3: .* multiples of"):
        UpscaleOptions(SETTINGS, window=3).window_for(config)
    assert not list((tmp_path / "out").glob("grey*")) and not list((tmp_path / "out").glob(".*tmp"))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return x


def test_a_raster_run_reads_through_its_normalisation_and_writes_file_units(tmp_path: Path) -> None:
    values = np.full((3, 12, 16), 3000, dtype=np.uint16)
    values[0] = 1000
    src = write_raster(tmp_path / "s2.tif", values, descriptions=("B04", "B03", "B02"))
    norm = fixed_normalisation(("B04", "B03", "B02"), 0.0002, 5000)
    done = upscale_file(Identity(), regression_config(tmp_path), src, tmp_path / "out",
                        UpscaleOptions(SETTINGS, progress=False), norm=norm)
    with rasterio.open(done.output) as ds:
        out = ds.read()
        assert ds.dtypes[0] == "float32" and ds.descriptions == ("B04", "B03", "B02")
    assert out.shape == (3, 48, 64)
    assert np.allclose(out[0], 1000, atol=0.5) and np.allclose(out[1:], 3000, atol=0.5)
    with pytest.raises(RasterError, match=r"s2\.tif: bands B04, B03, B02 but the run was trained on"):
        upscale_file(Identity(), regression_config(tmp_path), src, tmp_path / "out",
                     UpscaleOptions(SETTINGS, progress=False), norm=fixed_normalisation(("B08", "B04", "B03"), 1, 0))
