"""``diffsat plot``: the loss curve of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(subparsers, "plot", "Plot a run's loss curve (log scale, raw and smoothed) and, when the run "
                   "logged evaluations, its quality curves, as PNG files in the run directory.",
                   "diffsat plot runs/mnist")
    p.add_argument("run_dir", type=Path, help="run directory with metrics.csv")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_training

    for path in plot_training(args.run_dir):
        print(path)
    return 0
