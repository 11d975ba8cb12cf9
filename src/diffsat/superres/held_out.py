"""A super-resolution run scored on its held-out tiles: degraded as in training, upscaled, compared.

The held-out tiles of the run's data (``data.holdout``, whole tiles at their stored size) are degraded by the
run's degradation (noise seeded by ``seed``), saved as 8-bit PNGs (``OUT/inputs``: what a user would hold;
the true tiles beside them in ``OUT/truth``),
upscaled window by window as ``diffsat upscale`` does (``OUT/outputs``) and scored with bicubic upsampling
beside (:mod:`diffsat.superres.scoring`), into ``OUT/metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import Config
from ..data import load_dataset
from ..data.transforms import to_model_range
from ..errors import ConfigError
from ..evaluation.inception import FIDInceptionV3
from .degradation import degrade
from .scoring import score_outputs
from .upscale import UpscaleOptions, decode_image, upscale_file


TILE_SEEDS = 10_000
"""Held-out tile ``i`` is upscaled with seeds from ``seed + i * TILE_SEEDS`` (one per window and draw)."""


def held_out_tiles(config: Config, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """The run's held-out tiles ``(N, C, H, W)`` float32 in [-1, 1] at their stored size, and their names."""
    data = config.data
    if data.kind != "mnist" and data.holdout is None:
        raise ConfigError("the run holds no tiles out (data.holdout is unset): score it with --input and "
                          "--reference instead")
    data = data.model_copy(update={"split": "test", "limit": limit, "random_crop": True, "load_size": None})
    tiles = to_model_range(load_dataset(data).tiles)
    return tiles, [f"heldout_{i:04d}" for i in range(len(tiles))]


def to_8bit(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [-1, 1] -> uint8 ``(H, W, C)`` (or ``(H, W)`` for one channel)."""
    pixels = torch.round((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).numpy()
    return pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0)


def read_8bit(path: Path) -> torch.Tensor:
    """An 8-bit image file as ``(C, H, W)`` float32 in [-1, 1]."""
    return to_model_range(torch.from_numpy(decode_image(path).pixels))


def evaluate_held_out(network: torch.nn.Module, config: Config, out_dir: Path, options: UpscaleOptions,
                      limit: int | None = None, inception: FIDInceptionV3 | None = None) -> dict[str, Any]:
    """Degrade, upscale and score the held-out tiles (module docstring); returns the record written to
    ``out_dir/metrics.json`` (without writing it)."""
    cond = config.condition
    truth, names = held_out_tiles(config, limit)
    low = degrade(truth, cond, torch.Generator().manual_seed(options.seed))
    inputs, outputs, truths = out_dir / "inputs", out_dir / "outputs", out_dir / "truth"
    for folder in (inputs, truths):
        folder.mkdir(parents=True, exist_ok=True)
    for name, image, true in zip(names, low, truth):
        Image.fromarray(to_8bit(image)).save(inputs / f"{name}.png")
        Image.fromarray(to_8bit(true)).save(truths / f"{name}.png")
    start, first, mean = time.perf_counter(), [], []
    for i, name in enumerate(names):
        tile_options = UpscaleOptions(options.settings, options.draws, options.seed + i * TILE_SEEDS, "png",
                                      options.window, progress=False)
        done = upscale_file(network, config, inputs / f"{name}.png", outputs, tile_options)
        first.append(read_8bit(done.output))
        if done.mean is not None:
            mean.append(read_8bit(done.mean))
        if options.progress:
            print(f"\rupscaled {i + 1}/{len(names)} held-out tiles", end="", flush=True)
    seconds = time.perf_counter() - start
    if options.progress:
        print()
    low8 = torch.stack([read_8bit(inputs / f"{n}.png") for n in names])
    method = f"{cond.method} ({options.settings.describe()})" if cond.method == "diffusion" else "regression"
    sets = {method: torch.stack(first)} | ({f"mean of {options.draws} draws": torch.stack(mean)} if mean else {})
    record = score_outputs(sets, truth, low8, cond, names, seed=options.seed, inception=inception)
    return {"scale": cond.scale, "degradation": cond.model_dump(mode="json"), "draws": options.draws,
            "seconds_per_image": seconds / len(names)} | record
