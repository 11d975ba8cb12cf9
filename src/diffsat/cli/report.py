"""``diffsat report``: a run's self-contained HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(subparsers, "report", "Write a run's self-contained HTML report (config, training summary, "
                   "curves, sample grids, optional evaluation tables and figures; images embedded, so the one "
                   "file can be mailed).",
                   "diffsat report runs/mnist --metrics metrics.json --figure chain.png")
    p.add_argument("run_dir", type=Path, help="run directory of `diffsat train` (with metrics.csv)")
    p.add_argument("--metrics", type=Path, action="append", default=[], metavar="FILE.json",
                   help="a `diffsat evaluate --out` JSON to show as a table beside the real baseline (repeatable)")
    p.add_argument("--figure", type=Path, action="append", default=[], metavar="FILE.png",
                   help="an extra figure to embed, e.g. from `diffsat chain` (repeatable)")
    p.add_argument("--out", type=Path, help="where to write the report (default: RUN_DIR/report.html)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    print(write_report(args.run_dir, args.metrics, args.figure, out=args.out))
    return 0
