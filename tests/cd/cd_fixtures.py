"""Tiny change-detection fixtures: synthetic pair folders and a tiny random-weight backbone run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffsat.config import parse_config, save_config
from diffsat.models.unet import build_unet

TINY_UNET = {"in_channels": 3, "out_channels": 3, "base_channels": 8, "channel_mults": [1, 2], "res_blocks": 1,
             "attn_resolutions": [], "norm_groups": 4, "image_size": 16}


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_pairs(root: Path, n: int = 4, size: int = 32, seed: int = 0, label_scale: int = 255,
               open_cd_split: str | None = None) -> list[str]:
    """``n`` synthetic pairs (a bright square appears in B; the label marks it) in LEVIR-CD layout under
    ``root`` (or open-cd layout ``root/<open_cd_split>/``); returns the file names."""
    rng = np.random.default_rng(seed)
    base = root / open_cd_split if open_cd_split else root
    names = []
    for i in range(n):
        a = rng.integers(40, 120, (size, size, 3), dtype=np.uint8)
        b = a.copy()
        label = np.zeros((size, size), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        b[y : y + size // 3, x : x + size // 3] = 230
        label[y : y + size // 3, x : x + size // 3] = label_scale
        name = f"p{i}.png"
        write_png(base / "A" / name, a)
        write_png(base / "B" / name, b)
        write_png(base / "label" / name, label)
        names.append(name)
    if not open_cd_split:
        (root / "list").mkdir(exist_ok=True)
        (root / "list" / "all.txt").write_text("\n".join(names) + "\n")
    return names


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffsat run directory (config.json + ema.safetensors) of a tiny random U-Net: 2 levels, 8/16 channels."""
    run = tmp_path_factory.mktemp("backbone")
    cfg = parse_config({"model": TINY_UNET, "diffusion": {"timesteps": 100},
                        "data": {"channels": 3, "image_size": 16}})
    torch.manual_seed(0)
    net = build_unet(cfg.model)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "ema.safetensors"))
    save_config(cfg, run / "config.json")
    return run


def cd_config(root: Path, backbone: Path | None, **train: object) -> dict:
    """A seconds-long cd config on ``make_pairs(root)``: p0, p1 train, p2 val, p3 test."""
    src = lambda names: [{"root": str(root), "names": names}]  # noqa: E731
    return {"cd": {
        "data": {"train": src(["p0.png", "p1.png"]), "val": src(["p2.png"]), "test": src(["p3.png"]),
                 "crop_size": 16, "window": 32, "margin": 4},
        "features": {"backbone": str(backbone) if backbone else None, "noise_levels": [0.99, 0.9],
                     "decoder_scales": [1, 3]},
        "head": {"kind": "ddpmcd" if backbone else "fc_siam_diff", "compare": [], "classifier_channels": 8},
        "train": {"batch_size": 2, "max_steps": 4, "eval_every": 2, "log_every": 1, "save_every": 2, "lr": 1e-3,
                  **train},
    }}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path
