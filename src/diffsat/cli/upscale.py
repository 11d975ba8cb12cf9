"""``diffsat upscale``: sharpen images (or a run's held-out tiles) with a super-resolution run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parser, positive_int
from .sample import add_model_arguments, settings_from

DEFAULT_SAMPLER = "dpm++sde"
DEFAULT_STEPS = 20
"""``diffsat upscale``'s defaults, chosen on the v-prediction recipe model's held-out tiles (quality against
steps and samplers, benchmarks/RESULTS.md, "Super-resolution x4"): the SDE solver beats the ODE solver at 20 and
50 steps, and 50 steps add little over 20 for twice the time."""
SAMPLER_WHY = "SDE-DPM-Solver++(2M); benchmarks/RESULTS.md, Super-resolution x4"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(
        subparsers,
        "upscale",
        "Upscale images or GeoTIFFs of any size with a super-resolution run (window by window; GeoTIFFs keep "
        "their georeferencing at the finer pixel size); or score the run on its held-out tiles.",
        "diffsat upscale runs/sr_x4 --input lowres/ --out sharp/ --samples 4\n"
        "  diffsat upscale runs/sr_x4 --held-out --out runs/sr_x4/heldout",
    )
    add_model_arguments(p, DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLER_WHY, batch_size=16)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--input", type=Path, help="an image (PNG, JPEG), a raster (GeoTIFF, ...) or a folder of them")
    p.add_argument("--held-out", action="store_true",
                   help="instead of --input: the run's held-out tiles, degraded as in training, upscaled and "
                        "scored (PSNR, SSIM, consistency, SWD) beside bicubic into OUT/metrics.json")
    p.add_argument("--limit", type=positive_int, help="--held-out: only the first N tiles")
    p.add_argument("--samples", type=positive_int, default=1, metavar="K",
                   help="draws per input: with K > 1 also their mean and a per-pixel standard deviation map "
                        "(the model's uncertainty) (default: 1)")
    p.add_argument("--window", type=positive_int, metavar="PX",
                   help="low-resolution window side (default: the run's training size / scale)")
    p.add_argument("--format", choices=["auto", "png", "tif"], default="auto",
                   help="auto (default): PNG for 8-bit images that are not georeferenced, GeoTIFF otherwise")
    p.add_argument("--bands", nargs="+", metavar="BAND", help="raster inputs: bands by name or 1-based index")
    p.add_argument("--chain", type=Path, metavar="FILE",
                   help="also save the denoising chain of the first input's first window as a figure")
    p.add_argument("--inception", type=Path, metavar="PATH",
                   help="--held-out: pytorch-fid's Inception weights, adds KID and FID (never downloaded)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DiffsatError
    from ..evaluation.inception import load_inception
    from ..rundir import load_model
    from ..rundir.bands import load_run_normalisation
    from ..rundir.names import NORMALISATION_FILE
    from ..superres.held_out import evaluate_held_out
    from ..superres.scoring import format_summary
    from ..superres.upscale import UpscaleOptions, input_paths, upscale_file
    from ..evaluation.results import write_result

    if (args.input is None) == (not args.held_out):
        raise DiffsatError("give --input FILE_OR_FOLDER or --held-out (one of them)")
    settings = settings_from(args)
    loaded = load_model(args.checkpoint, args.config, ema=not args.no_ema)
    config = loaded.config
    if config.condition is None:
        raise DiffsatError(f"{args.checkpoint}: not a super-resolution run (its config has no condition section): "
                           "train one with a `condition` section (configs/sr_ucmerced_x4_cpu.json)")
    bands = tuple(int(b) if b.isdigit() else b for b in args.bands) if args.bands else None
    options = UpscaleOptions(settings, args.samples, args.seed, args.format, args.window, not args.no_progress)
    run_dir = Path(args.checkpoint)
    norm = load_run_normalisation(run_dir) if (run_dir / NORMALISATION_FILE).is_file() else None
    if args.held_out:
        inception = load_inception(args.inception) if args.inception else None
        record = evaluate_held_out(loaded.network, config, args.out, options, args.limit, inception)
        write_result(args.out / "metrics.json", record)
        print(format_summary(record))
        print(f"{record['images']} held-out tiles, {record['seconds_per_image']:.2f} s/tile -> {args.out}/metrics.json")
        return 0
    paths = input_paths(args.input)
    for path in paths:
        done = upscale_file(loaded.network, config, path, args.out, options, norm=norm, bands=bands)
        print(f"{path} -> {done.output}" + (f" (+ mean, std of {args.samples} draws)" if done.mean else ""))
    if args.chain is not None:
        save_chain(loaded.network, config, paths[0], args, options, norm, bands)
    return 0


def save_chain(network, config, path: Path, args: argparse.Namespace, options, norm, bands) -> None:
    """The denoising chain of ``path``'s first window (11 frames) as a figure at ``args.chain``."""
    import torch

    from ..diffusion.conditioning import from_target
    from ..errors import DiffsatError
    from ..geo.normalise import uint8_normalisation
    from ..geo.windows import pad_to
    from ..plots import plot_chain
    from ..sampling import chain_frames
    from ..superres.degradation import condition_input
    from ..superres.upscale import open_source

    if config.condition.method != "diffusion":
        raise DiffsatError("--chain: a regression run has no denoising chain")
    window = options.window_for(config)
    source = open_source(path, bands)
    with source.reader() as reader:
        values, valid = reader.read()
    low = torch.from_numpy((norm or uint8_normalisation(source.names)).apply(values, valid))
    low = pad_to(low, max(window, low.shape[-2]), max(window, low.shape[-1]))[None, :, :window, :window]
    condition = condition_input(low, config.condition.scale)
    frames, fractions = chain_frames(network, config, 1, args.seed, options.settings, frames=11, condition=condition)
    frames = from_target(frames, condition, config.condition.target)  # a residual chain shown as images
    plot_chain(frames, fractions, args.chain, title=f"{path.name}: {options.settings.describe()}")
    print(f"chain -> {args.chain}")
