"""``diffsat train``: train a model from a JSON config into a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..rundir import load_any_run_config
from ..errors import DiffsatError
from .common import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(
        subparsers,
        "train",
        "Train a diffusion model from a JSON config (ours or DDPM-CD's), or the autoencoder of latent diffusion "
        "(a config with an 'autoencoder' section), into a run directory.",
        "diffsat train configs/mnist_cpu.json --out runs/mnist --set train.max_steps=500\n"
        "  diffsat train configs/satellite64_autoencoder_cpu.json --out runs/ae64\n"
        "  diffsat train configs/satellite64_latent_cpu.json --out runs/latent64 "
        "--set latent.autoencoder=runs/ae64",
    )
    p.add_argument("config", nargs="?", help="JSON config; optional with --resume (the run's config.json is used)")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, metrics, samples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. train.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (exactly where it stopped)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_training
    from ..report import write_report
    from ..training.runs import train

    if args.config is None and not args.resume:
        raise DiffsatError("give a CONFIG to train from (or --resume to continue the run in --out)")
    source = args.config if args.config is not None else args.out
    config = load_any_run_config(source, args.overrides)
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress,
                   on_finish=(plot_training, write_report))
    if not result.is_main:
        return 0  # torchrun: rank 0 reports for the run
    print(f"trained {result.step} steps in {result.elapsed_s / 60:.1f} min (stopped by {result.stopped_by}); "
          f"last loss {result.last_loss:.4f}; run directory {result.run_dir}")
    return 0
