"""``diffsat convert``: a DDPM-CD/SR3 checkpoint into a diffsat run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(
        subparsers,
        "convert",
        "Convert a DDPM-CD/SR3 *_gen.pth (or bare U-Net weights) into a diffsat run directory (safetensors).",
        "diffsat convert I190000_E97_gen.pth --config ddpm_cd.json --out runs/ddpmcd",
    )
    p.add_argument("checkpoint", type=Path, help="*_gen.pth, .pt or .safetensors weights")
    p.add_argument("--config", required=True, help="the DDPM-CD/SR3 JSON config (or ours) describing the network")
    p.add_argument("--out", required=True, type=Path, help="run directory to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..rundir import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.config, args.out)
    print(f"converted {args.checkpoint} -> {out}")
    return 0
