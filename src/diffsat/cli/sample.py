"""``diffsat sample``: draw images from a run directory or a foreign checkpoint."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..diffusion.objective import X0_CLIPS
from ..precision import PRECISIONS
from ..samplers import SAMPLERS, SPACINGS
from ..sampling import DEFAULT_SAMPLER, DEFAULT_STEPS
from .common import add_device, add_parser, int_list, positive_int


SAMPLER_WHY = ("SDE-DPM-Solver++(2M): as good as 1,000 ancestral steps within the noise at 10 steps on the "
               "mnist_cpu model; see README, Results")


def add_model_arguments(p: argparse.ArgumentParser, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS,
                        why: str = SAMPLER_WHY, batch_size: int = 100) -> None:
    """Where the network comes from and how it is run (shared by ``sample``, ``chain`` and ``upscale``);
    ``sampler`` / ``steps`` / ``batch_size``: the verb's defaults, ``why`` the reason its help gives."""
    p.add_argument("checkpoint", help="run directory, DDPM-CD/SR3 *_gen.pth, or .safetensors weights")
    p.add_argument("--config", help="config for a weights file (ours, or the DDPM-CD/SR3 JSON it came with)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=sampler, help=f"default: {sampler} ({why})")
    p.add_argument("--steps", type=positive_int, default=steps,
                   help=f"sampler steps, one network evaluation each (default: {steps})")
    p.add_argument("--spacing", choices=list(SPACINGS), default=None,
                   help="which of the model's T noise levels the K steps visit: uniform (evenly spaced steps), "
                        "quadratic (denser near the clean image), trailing (diffusers' name: steps T, T - T/K, "
                        "...; on this step grid it equals uniform up to rounding), logsnr (evenly spaced in "
                        "log signal-to-noise ratio). Default: the sampler's own (ancestral and ddim: uniform, "
                        "dpm++ and dpm++sde: logsnr)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM only: noise injected per step, from 0 (deterministic DDIM, the default) to 1 "
                        "(as much as ancestral DDPM sampling); an error with the other samplers")
    p.add_argument("--x0-clip", choices=list(X0_CLIPS), default="static",
                   help="how each step's estimate of the clean image x0 is kept in [-1, 1]: static = clamp "
                        "(default); dynamic = Imagen's dynamic thresholding (per image s = max(1, 99.5th "
                        "percentile of |x0|), then x0 = clamp(x0, -s, s) / s: rescales instead of flattening "
                        "saturated pixels); none = no clipping (the saved images are clamped either way)")
    p.add_argument("--label", type=int_list, default=None, metavar="C[,C...]",
                   help="class-conditional models: the class of every sample (--label 7), or classes that the "
                        "samples take in turn (--label 1,7); default: every class in turn")
    p.add_argument("--guidance", type=float, default=None,
                   help="class-conditional models: classifier-free guidance scale (1 = the conditional model "
                        "alone, 0 = unconditional, > 1 = more typical of the class, at twice the network "
                        "cost per step); default: the run's train.guidance")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default: 0)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help=f"images per network call (default: {batch_size})")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="bf16 autocast or fp32; auto (default) = bf16 on a bf16-capable GPU; on a CPU with "
                        "native bf16 whichever a few timed network calls at this batch find faster (once per "
                        "machine, network and batch; cached in ~/.cache/diffsat/precision.json); fp32 otherwise")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (needs a C++ compiler; compiling takes minutes "
                        "on a CPU, so it pays only over many images; see benchmarks/RESULTS.md)")
    add_device(p)


def settings_from(args: argparse.Namespace):
    """The :class:`~diffsat.sampling.SampleSettings` the arguments ask for (a ``SampleSettingsError`` for
    options that do not fit together, e.g. ``--eta`` without ``--sampler ddim``)."""
    from ..sampling import SampleSettings

    return SampleSettings(args.sampler, args.steps, args.batch_size, precision=args.precision, device=args.device,
                          compile=args.compile, spacing=args.spacing, eta=args.eta, x0_clip=args.x0_clip,
                          guidance=args.guidance)


def load_network(args: argparse.Namespace):
    """The :class:`~diffsat.rundir.LoadedModel` of ``args.checkpoint``; a conditional SR3 model is refused in
    one line before any sampling."""
    from ..config import check_unconditional
    from ..rundir import load_model

    loaded = load_model(args.checkpoint, args.config, ema=not args.no_ema)
    check_unconditional(loaded.config)
    return loaded


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(
        subparsers,
        "sample",
        "Generate images: one PNG per sample (a GeoTIFF for a multispectral model) plus a grid.",
        "diffsat sample runs/mnist --out samples/mnist --n 500 --seed 0",
    )
    add_model_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n", type=positive_int, default=9, help="number of images (default: 9)")
    p.add_argument("--grid", type=positive_int, default=3, help="grid.png holds the first GRID x GRID images (default: 3)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..rundir.bands import run_bands
    from ..sample_folder import write_sample_folder
    from ..sampling import class_labels, generate

    settings = settings_from(args)  # refuses bad option combinations before loading the network
    loaded = load_network(args)
    config = loaded.config
    start = time.perf_counter()
    images = generate(loaded.network, config, args.n, args.seed, settings, encoder=loaded.encoder,
                      labels=args.label, schedule=loaded.schedule)
    seconds = time.perf_counter() - start
    labels = class_labels(config, args.n, settings, args.label)[0]  # None for an unconditional model
    bands = run_bands(args.checkpoint) if Path(args.checkpoint).is_dir() else None
    write_sample_folder(images, args.out, labels, grid=args.grid, bands=bands)
    print(f"{args.n} images in {seconds:.1f} s ({seconds / args.n:.3f} s/image) -> {args.out}")
    return 0
