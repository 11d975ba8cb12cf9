"""Small super-resolution configs and tiles for seconds-long CPU runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_tiles(folder: Path, n: int = 12, size: int = 32) -> Path:
    """``n`` RGB tiles with stripes and edges (detail a x4 model must restore)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        stripes = ((xx + yy * (i % 3)) // (2 + i % 4)) % 2
        image = np.stack([stripes * 200, (yy > 6 + i % 12) * 150, rng.integers(0, 60, (size, size))], -1)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"tile_{i:02d}.png")
    return folder


def sr_config(tiles: Path, method: str = "diffusion", **train) -> dict:
    """x4 from 6 to 24 px crops of 32 px tiles (every 4th held out): base 8, mults [1, 2], 100 timesteps."""
    return {
        "model": {"in_channels": 6 if method == "diffusion" else 3, "out_channels": 3, "base_channels": 8,
                  "channel_mults": [1, 2], "res_blocks": 1, "attn_resolutions": [], "norm_groups": 4,
                  "image_size": 24},
        "diffusion": {"timesteps": 100, "loss": "l1"},
        "data": {"kind": "folder", "path": str(tiles), "channels": 3, "image_size": 24, "random_crop": True,
                 "holdout": 4, "hflip": True, "rot90": True},
        "condition": {"scale": 4, "method": method, "noise_std": 0.02},
        "train": {"batch_size": 4, "lr": 2e-3, "max_steps": 4, "warmup_steps": 1, "log_every": 2, "save_every": 2,
                  "sample_every": 1000, "sample_steps": 3, "device": "cpu", **train},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path
