"""Run directories: file names, a checkpoint written and read back, which weights load_model takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffsat import rundir
from diffsat.config import Config, save_config
from diffsat.models.unet import build_unet


def tiny() -> Config:
    return Config.model_validate({"model": {"base_channels": 8, "channel_mults": [1, 2], "res_blocks": 1,
                                            "attn_resolutions": [], "norm_groups": 4, "image_size": 8},
                                  "data": {"image_size": 8}})


def write_run(run_dir: Path, cfg: Config, step: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model, ema = build_unet(cfg.model), build_unet(cfg.model)
    save_config(cfg, rundir.run_file(run_dir, rundir.CONFIG_FILE))
    rundir.save_checkpoint(run_dir, model, ema, {"step": step, "elapsed_s": 1.5})
    return model, ema


def test_checkpoint_round_trip_and_which_weights_load(tmp_path: Path) -> None:
    cfg = tiny()
    model, ema = write_run(tmp_path, cfg, step=7)
    assert rundir.is_run_dir(tmp_path) and rundir.load_train_state(tmp_path) == {"step": 7, "elapsed_s": 1.5}
    loaded = rundir.load_model(tmp_path)
    assert loaded.weights == "ema" and loaded.config == cfg and loaded.schedule.timesteps == cfg.diffusion.timesteps
    assert all(torch.equal(a, b) for a, b in zip(loaded.network.state_dict().values(), ema.state_dict().values()))
    raw = rundir.load_model(tmp_path, ema=False)
    assert raw.weights == "model"
    assert all(torch.equal(a, b) for a, b in zip(raw.network.state_dict().values(), model.state_dict().values()))
    target = build_unet(cfg.model)
    rundir.load_weights_into(target, tmp_path, "ema")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), ema.state_dict().values()))
    rundir.run_file(tmp_path, rundir.EMA_FILE).unlink()  # a run without EMA weights: the trained ones
    assert rundir.load_model(tmp_path).weights == "model"
    with pytest.raises(rundir.CheckpointError, match="no ema.safetensors in this run directory"):
        rundir.load_weights_into(target, tmp_path, "ema")


def test_file_names_and_grids(tmp_path: Path) -> None:
    assert rundir.run_file(tmp_path, rundir.METRICS_FILE) == tmp_path / "metrics.csv"
    with pytest.raises(ValueError, match="'notes.txt' is not a run file"):
        rundir.run_file(tmp_path, "notes.txt")
    for step in (20, 3, 100):
        path = rundir.grid_path(tmp_path, step)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    rundir.grid_path(tmp_path).write_bytes(b"")  # final.png is not a periodic grid
    assert [s for s, _ in rundir.periodic_grids(tmp_path)] == [3, 20, 100]
    assert rundir.grid_path(tmp_path, 3).name == "step_0000003.png"


def test_random_model_has_the_configs_architecture_and_is_seeded(tmp_path: Path) -> None:
    cfg = tiny()
    save_config(cfg, tmp_path / "tiny.json")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = rundir.random_model(cfg, seed=1), rundir.random_model(tmp_path / "tiny.json", seed=1), rundir.random_model(cfg, seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state is untouched
    assert a.weights == "random (seed 1)" and a.config == cfg and b.config == cfg and not a.network.training
    assert a.schedule.timesteps == cfg.diffusion.timesteps
    shapes = {k: v.shape for k, v in build_unet(cfg.model).state_dict().items()}
    assert {k: v.shape for k, v in a.network.state_dict().items()} == shapes
    assert all(torch.equal(x, y) for x, y in zip(a.network.state_dict().values(), b.network.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.network.state_dict().values(), c.network.state_dict().values()))
