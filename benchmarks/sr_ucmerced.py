"""The x4 super-resolution recipe on held-out UC Merced tiles: quality against sampler steps, the seconds of
one 256 px output, and the README figure (low-res | bicubic | regression | diffusion | truth).

    python benchmarks/sr_ucmerced.py sweep RUN --limit 32 --steps 5 10 20 50 --samplers dpm++ dpm++sde ancestral
    python benchmarks/sr_ucmerced.py speed RUN --sampler dpm++ --steps 20
    python benchmarks/sr_ucmerced.py figure HELD_DIFFUSION HELD_REGRESSION --tiles 3 40 60 100 --out docs/img/x.jpg

``sweep`` scores the first ``--limit`` held-out tiles (``diffsat upscale RUN --held-out``'s degradation and
scores) for each sampler and step count and prints one row each. ``speed`` times one 256 x 256 output from
a 64 x 64 input (the recipe's training window, so 25 stitched windows, and one whole-tile window), after one
untimed warm-up. ``figure`` reads two ``--held-out`` output folders.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffsat.precision import cpu_description
from diffsat.rundir import load_model
from diffsat.sampling import SampleSettings
from diffsat.superres.held_out import evaluate_held_out
from diffsat.superres.upscale import UpscaleOptions, upscale_file


def sweep(args: argparse.Namespace) -> None:
    loaded = load_model(args.run)
    print(f"# {cpu_description()}, torch {torch.__version__}, {args.limit} held-out tiles, window {args.window}")
    print("sampler      steps   psnr   psnr_y  ssim_y  consistency   swd    s/tile")
    for sampler in args.samplers:
        for steps in args.steps:
            settings = SampleSettings(sampler, steps, batch_size=16, precision=args.precision)
            options = UpscaleOptions(settings, 1, 0, "png", args.window, progress=False)
            out = args.scratch / f"{sampler}_{steps}"
            record = evaluate_held_out(loaded.network, loaded.config, out, options, limit=args.limit)
            s = next(v for k, v in record["summary"].items() if k != "bicubic")
            print(f"{sampler:10s} {steps:5d}  {s['psnr']:6.2f}  {s['psnr_y']:6.2f}  {s['ssim_y']:6.3f}  "
                  f"{s['consistency_psnr']:9.2f}  {s['swd']:7.1f}  {record['seconds_per_image']:6.2f}", flush=True)
    b = record["summary"]["bicubic"]
    print(f"{'bicubic':10s} {'-':>5s}  {b['psnr']:6.2f}  {b['psnr_y']:6.2f}  {b['ssim_y']:6.3f}  "
          f"{b['consistency_psnr']:9.2f}  {b['swd']:7.1f}")


def speed(args: argparse.Namespace) -> None:
    loaded = load_model(args.run)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(args.scratch / "speed.png")
    print(f"# {cpu_description()}, torch {torch.__version__}, {args.sampler} {args.steps} steps, one 64 -> 256 px tile")
    for window in (None, 64):
        settings = SampleSettings(args.sampler, args.steps, batch_size=32, precision=args.precision)
        options = UpscaleOptions(settings, 1, 0, "png", window, progress=False)
        upscale_file(loaded.network, loaded.config, args.scratch / "speed.png", args.scratch, options)  # warm-up
        start = time.perf_counter()
        upscale_file(loaded.network, loaded.config, args.scratch / "speed.png", args.scratch, options)
        label = "training-size windows (stitched)" if window is None else "one whole-tile window"
        print(f"{label}: {time.perf_counter() - start:.2f} s")


def figure(args: argparse.Namespace) -> None:
    def read(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((256, 256), Image.NEAREST))

    rows = []
    for i in args.tiles:
        name = f"heldout_{i:04d}"
        low = read(args.diffusion / "inputs" / f"{name}.png")
        with Image.open(args.diffusion / "inputs" / f"{name}.png") as img:
            bicubic = np.asarray(img.convert("RGB").resize((256, 256), Image.BICUBIC))
        cells = [low, bicubic, read(args.regression / "outputs" / f"{name}_x4.png"),
                 read(args.diffusion / "outputs" / f"{name}_x4.png"), read(args.diffusion / "truth" / f"{name}.png")]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(args.out, quality=90)
    print(f"columns: low-res (64 px, enlarged) | bicubic | regression | diffusion | truth -> {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("run", type=Path)
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--samplers", nargs="+", default=["dpm++", "dpm++sde", "ancestral"])
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/sr_sweep"))
    p = sub.add_parser("speed")
    p.add_argument("run", type=Path)
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--precision", default="auto")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/sr_speed"))
    p = sub.add_parser("figure")
    p.add_argument("diffusion", type=Path)
    p.add_argument("regression", type=Path)
    p.add_argument("--tiles", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if getattr(args, "scratch", None) is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
    {"sweep": sweep, "speed": speed, "figure": figure}[args.what](args)


if __name__ == "__main__":
    main()
