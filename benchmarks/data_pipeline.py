"""How long the training step waits for data: time per batch of the in-memory data path.

The training loop builds each batch synchronously in ``DiffusionTask.batch``: seeded indices
(``batch_indices``), a gather from the held tiles, then ``augment`` (crop to ``image_size``, flips,
quarter turns, uint8 -> float32). Whatever that costs, the step waits for it. This script times exactly
that sequence on UC Merced (1,600 tiles of 128 px) for a few data paths and reports milliseconds per
batch and the fraction of a training step of ``--step-s`` seconds. Usage:

    python benchmarks/data_pipeline.py --data ../shared/data/ucmerced-128 --batch 64 --steps 300

Numbers are medians over ``--steps`` batches per path (after 20 warm-up batches; the paths interleaved
step by step) with torch's default thread count, which is what the training loop uses unless
``train.threads`` is set. "load s" is the one-off decode of the 1,600 PNGs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from diffsat.config import DataConfig
from diffsat.data import load_dataset
from diffsat.data.transforms import augment
from diffsat.seeding import batch_indices, step_generator

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "random 64 px crops of 128 px tiles, uint8 (recipe)": dict(random_crop=True, tiles="uint8"),
    "random 64 px crops of 128 px tiles, float32 tiles": dict(random_crop=True, tiles="float32"),
    "tiles resized to 64 px at load, uint8": dict(random_crop=False, tiles="uint8"),
    "tiles resized to 64 px at load, float32 (previous path)": dict(random_crop=False, tiles="float32"),
}


def one_batch(tiles: torch.Tensor, cfg: DataConfig, batch: int, step: int) -> float:
    """Seconds to build the batch of ``step`` as the loop does: ``augment(tiles[idx], cfg, generator)``."""
    t0 = time.perf_counter()
    idx = batch_indices(len(tiles), batch, step, seed=0)
    generator = step_generator(0, step, 1)
    x = augment(tiles[idx], cfg, generator)
    elapsed = time.perf_counter() - t0
    assert x.shape == (batch, 3, cfg.image_size, cfg.image_size) and x.dtype == torch.float32
    return elapsed


def load_variants(data: str, image_size: int) -> dict[str, tuple[torch.Tensor, DataConfig, float]]:
    """``name -> (held tiles, data config, load seconds)`` for every entry of :data:`VARIANTS`."""
    out = {}
    for name, variant in VARIANTS.items():
        cfg = DataConfig(
            kind="folder", path=data, channels=3, image_size=image_size,
            random_crop=variant["random_crop"], hflip=True, vflip=True, rot90=True,
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_dataset(cfg)
        tiles = ds.tiles if variant["tiles"] == "uint8" else ds.images
        out[name] = (tiles, cfg, time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ucmerced-128"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--step-s", type=float, default=0.5, help="training step time to compare against")
    args = parser.parse_args()

    variants = load_variants(args.data, args.image_size)
    times: dict[str, list[float]] = {name: [] for name in variants}
    load_before = os.getloadavg()[0]
    for step in range(20 + args.steps):  # variants interleaved, so load from other processes hits all alike
        for name, (tiles, cfg, _) in variants.items():
            elapsed = one_batch(tiles, cfg, args.batch, step)
            if step >= 20:
                times[name].append(elapsed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after")
    print(f"| data path (batch {args.batch}, flips + rot90) | load s | held MB | ms/batch median | p90 | "
          f"fraction of a {args.step_s} s step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (tiles, _, load_s) in variants.items():
        median = statistics.median(times[name])
        p90 = statistics.quantiles(times[name], n=10)[-1]
        mb = tiles.numel() * tiles.element_size() / 1e6
        print(f"| {name} | {load_s:.1f} | {mb:.0f} | {median * 1e3:.2f} | {p90 * 1e3:.2f} | "
              f"{median / args.step_s:.2%} |")


if __name__ == "__main__":
    main()
