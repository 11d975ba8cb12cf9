"""Super-resolution runs: trained by the one loop, resumed exactly, upscaled and scored through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffsat.cli import main
from diffsat.config import parse_config
from diffsat.errors import ConfigError
from diffsat.training.runs import make_trainer

from sr_fixtures import sr_config, write_config, write_tiles


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    return write_tiles(tmp_path_factory.mktemp("sr") / "tiles")


@pytest.mark.parametrize("method", ["diffusion", "regression"])
def test_a_super_resolution_run_resumes_exactly(tiles: Path, tmp_path: Path, method: str) -> None:
    cfg = parse_config(sr_config(tiles, method, max_steps=4, save_every=2))
    make_trainer(cfg, tmp_path / "a").run(progress=False)
    make_trainer(parse_config(sr_config(tiles, method, max_steps=2, save_every=2)), tmp_path / "b").run(progress=False)
    make_trainer(cfg, tmp_path / "b", resume=True).run(progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["condition"]["method"] == method and saved["condition"]["scale"] == 4


@pytest.mark.parametrize("method", ["diffusion", "regression"])
@pytest.mark.parametrize("target", ["image", "residual"])
def test_the_loss_compares_with_the_image_or_its_residual_over_the_bicubic_input(
        tiles: Path, tmp_path: Path, method: str, target: str) -> None:
    """A network that makes zeros: the regression's L1 loss is the mean |target|; the x0-objective diffusion
    loss likewise (its x0 estimate is the network's output)."""
    raw = sr_config(tiles, method)
    raw["condition"]["target"], raw["diffusion"]["objective"] = target, "x0"
    task = make_trainer(parse_config(raw), tmp_path / "run").task
    batch = task.batch(0)
    zeros = lambda x, level: torch.zeros_like(x[:, -3:])  # noqa: E731
    loss, _ = task.loss(zeros, batch, torch.Generator().manual_seed(0))
    made = batch.x - batch.condition if target == "residual" else batch.x
    assert (batch.x - batch.condition).abs().mean() > 0.05  # the two targets differ
    assert loss.item() == pytest.approx(made.abs().mean().item(), rel=1e-5)


def test_train_upscale_held_out_and_refusals(tiles: Path, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "sr.json", sr_config(tiles, eval_every=4, eval_samples=2))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "psnr" in header and "consistency_psnr" in header
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    out = tmp_path / "held"
    assert main(["upscale", str(tmp_path / "run"), "--held-out", "--out", str(out), "--steps", "2",
                 "--samples", "2", "--no-progress"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["images"] == 3 and len(record["per_image"]) == 3
    assert set(record["summary"]) == {"bicubic", "diffusion (dpm++sde, 2 steps)", "mean of 2 draws"}
    bicubic = record["summary"]["bicubic"]
    assert bicubic["psnr"] == pytest.approx(sum(r["bicubic"]["psnr"] for r in record["per_image"]) / 3)
    assert {"psnr", "ssim", "psnr_y", "ssim_y", "consistency_psnr", "swd"} <= set(bicubic)
    assert sorted(p.name for p in (out / "outputs").iterdir())[:3] == [
        "heldout_0000_x4.png", "heldout_0000_x4_mean.png", "heldout_0000_x4_std.tif"]
    assert main(["upscale", str(tmp_path / "run"), "--input", str(tiles / "tile_00.png"), "--out", str(tmp_path / "u"),
                 "--steps", "3", "--chain", str(tmp_path / "chain.png"), "--no-progress"]) == 0
    assert (tmp_path / "u" / "tile_00_x4.png").is_file() and (tmp_path / "chain.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "diffsat upscale" in err


def test_a_run_without_a_condition_is_refused_by_upscale(tiles: Path, tmp_path: Path, capsys) -> None:
    plain = sr_config(tiles)
    del plain["condition"]
    plain["model"]["in_channels"] = 3
    assert main(["train", str(write_config(tmp_path / "plain.json", plain)), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["upscale", str(tmp_path / "run"), "--input", str(tiles), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a super-resolution run" in err


@pytest.mark.parametrize("edit, pattern", [
    ({"model": {"in_channels": 3}}, r"model\.in_channels \(3\) must equal 6"),
    ({"data": {"image_size": 26}, "model": {"image_size": 26}}, r"multiple of condition\.scale"),
    ({"condition": {"scale": 3}}, r"condition\.scale"),
    ({"model": {"num_classes": 4}}, r"without classes"),
])
def test_configs_a_super_resolution_network_cannot_take(tiles: Path, edit: dict, pattern: str) -> None:
    data = sr_config(tiles)
    for section, values in edit.items():
        data[section] |= values
    with pytest.raises(ConfigError, match=pattern):
        parse_config(data, "sr.json")
