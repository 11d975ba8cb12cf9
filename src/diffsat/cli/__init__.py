"""The ``diffsat`` command line: argument parsing only; every verb calls the library.

Each verb lives in its own module with ``register(subparsers)``, which adds its parser and sets
``run=<function(args) -> int>``. Errors a user can fix (:class:`~diffsat.errors.DiffsatError`) print one
line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import DiffsatError
from . import cd, chain, convert, evaluate, plot, raster, report, sample, train, upscale

VERBS = (train, sample, chain, upscale, plot, report, convert, evaluate, cd, raster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffsat",
        description="Train and sample SR3-type denoising diffusion models for satellite imagery and digits.",
        epilog="Run `diffsat VERB --help` for a verb's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"diffsat {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"diffsat: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffsat`` console script and ``python -m diffsat``; returns the exit status."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.run(args) or 0)
    except DiffsatError as err:
        print(f"diffsat: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffsat: interrupted", file=sys.stderr)
        return 130
