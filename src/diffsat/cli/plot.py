"""``diffsat plot``: the loss curve of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(subparsers, "plot", "Plot a run's loss curve (log scale, raw and smoothed) as PNG.",
                   "diffsat plot runs/mnist")
    p.add_argument("run_dir", type=Path, help="run directory with metrics.csv")
    p.add_argument("--out", type=Path, help="figure file (default: RUN_DIR/loss.png)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_loss_curve

    print(plot_loss_curve(args.run_dir, args.out))
    return 0
