"""A latent run on a TAESD-family first stage (random TAEF2-shaped weights): latent statistics computed and
stored in the run, then sampling, chains, evaluation and exact resume as for any run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny_config
from diffsat.cli import main
from diffsat.rundir.taesd import random_taesd

LATENT_UNET = {"in_channels": 32, "out_channels": 32, "image_size": 4, "attn_resolutions": [],
               "channel_mults": [1, 2]}


@pytest.fixture(scope="module")
def taesd_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("taesd")
    ae = random_taesd("taef2", seed=3)
    (root / "weights").mkdir()
    torch.save({k: v.half() for k, v in ae.encoder.state_dict().items()}, root / "weights" / "taef2_encoder.pth")
    torch.save({k: v.half() for k, v in ae.decoder.state_dict().items()}, root / "weights" / "taef2_decoder.pth")
    rng = np.random.default_rng(0)
    for i in range(40):
        tile = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        (root / "tiles").mkdir(exist_ok=True)
        Image.fromarray(tile).save(root / "tiles" / f"t{i:02d}.png")
    return root / "weights", root / "tiles"


def taesd_config(weights: Path, tiles: Path, **train: object) -> dict:
    cfg = tiny_config(data={"kind": "folder", "path": str(tiles), "channels": 3, "image_size": 32, "holdout": 2,
                            "limit": None}, model=LATENT_UNET, **train)
    cfg["latent"] = {"autoencoder": str(weights), "variant": "taef2"}
    return cfg


def _train(root: Path, config: dict, *extra: str) -> int:
    root.mkdir(parents=True, exist_ok=True)
    (root / "c.json").write_text(json.dumps(config))
    return main(["train", str(root / "c.json"), "--out", str(root / "run"), "--no-progress", *extra])


def test_a_taef2_run_stores_its_latent_statistics_and_samples_chains_evaluates(taesd_setup, tmp_path: Path) -> None:
    weights, tiles = taesd_setup
    assert _train(tmp_path, taesd_config(weights, tiles)) == 0
    run = tmp_path / "run"
    latent = json.loads((run / "config.json").read_text())["latent"]
    assert len(latent["mean"]) == len(latent["std"]) == 32 and all(s > 0 for s in latent["std"])
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--n", "20", "--steps", "3"]) == 0
    with Image.open(out / "sample_00000.png") as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    assert main(["chain", str(run), "--out", str(tmp_path / "chain.png"), "--steps", "3", "--frames", "3"]) == 0
    assert main(["evaluate", str(out), "--reference", str(run), "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["swd"]["value"] > 0


def test_a_taef2_run_resumes_exactly(taesd_setup, tmp_path: Path) -> None:
    weights, tiles = taesd_setup
    assert _train(tmp_path / "straight", taesd_config(weights, tiles)) == 0
    assert _train(tmp_path / "resumed", taesd_config(weights, tiles, max_steps=2)) == 0
    resumed = tmp_path / "resumed" / "run"
    assert main(["train", "--resume", "--out", str(resumed), "--set", "train.max_steps=4", "--no-progress"]) == 0
    a, b = load_file(str(tmp_path / "straight" / "run" / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_latent_shape_that_does_not_fit_taef2_is_one_line(taesd_setup, tmp_path: Path, capsys) -> None:
    weights, tiles = taesd_setup
    config = taesd_config(weights, tiles)
    config["model"]["in_channels"] = 16
    assert _train(tmp_path, config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "turns 32 px images into (32, 4, 4) latents" in err[0]
