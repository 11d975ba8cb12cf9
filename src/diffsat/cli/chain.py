"""``diffsat chain``: the denoising chain x_T ... x_0 of one or more samples as one figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parser, positive_int
from .sample import add_model_arguments, load_network, settings_from


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(
        subparsers,
        "chain",
        "Save the denoising chain (x_T ... x_0 at evenly spaced steps) of N samples as one figure.",
        "diffsat chain runs/mnist --out chain.png --n 3 --frames 11 --sampler ddim --steps 50 --eta 0.5",
    )
    add_model_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="figure file (.png, .pdf, .svg)")
    p.add_argument("--n", type=positive_int, default=1, help="samples, one row each (default: 1)")
    p.add_argument("--frames", type=int, default=11, help="frames per row, x_T first and x_0 last (default: 11)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..rundir.bands import run_bands
    from ..errors import DiffsatError
    from ..geo.render import rgb_indices
    from ..plots import plot_chain
    from ..sampling import chain_frames

    if not 2 <= args.frames <= args.steps + 1:
        raise DiffsatError(f"--frames must be between 2 and --steps + 1 ({args.steps + 1}), got {args.frames}")
    settings = settings_from(args)  # refuses bad option combinations before loading the network
    loaded = load_network(args)
    settings = settings.for_model(loaded.config)
    frames, fractions = chain_frames(loaded.network, loaded.config, args.n, args.seed, settings,
                                     frames=args.frames, schedule=loaded.schedule, progress=True,
                                     labels=args.label, encoder=loaded.encoder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{settings.describe()}, seed {args.seed}"
    bands = run_bands(args.checkpoint) if Path(args.checkpoint).is_dir() else None
    plot_chain(frames, fractions, args.out, title=title, rgb=rgb_indices(bands) if bands else None)
    print(f"chain of {args.n} sample(s), {args.frames} frames -> {args.out}")
    return 0
