"""``diffsat raster``: what a raster holds (bands, dtype, nodata, CRS, grid, value statistics), and an RGB
preview of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(subparsers, "raster", "Describe a raster (a GeoTIFF, or a folder of band files such as a "
                   "Sentinel-2 / OSCD date): its grid, CRS, bands, dtypes, nodata and per-band statistics; "
                   "optionally write an RGB preview (percentile stretch).",
                   "diffsat raster '../shared/data/oscd/Onera Satellite Change Detection dataset - Images/pisa/"
                   "imgs_1' --rgb pisa.png")
    p.add_argument("path", type=Path, help="raster file, or a folder of single-band files of one date")
    p.add_argument("--bands", nargs="+", help="bands by name (B04) or 1-based position (default: all)")
    p.add_argument("--rgb", type=Path, help="write an RGB preview PNG (B04/B03/B02 when present, else the first "
                   "three bands; with --bands, the first three of them)")
    p.add_argument("--max-side", type=int, default=2048, help="the preview's longest side in pixels (default: 2048)")
    p.set_defaults(run=run)


def _band(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..fileio import atomic_write
    from ..geo.raster import stack_from_path
    from ..geo.render import render_rgb, rgb_indices

    stack = stack_from_path(args.path, tuple(_band(b) for b in args.bands) if args.bands else None)
    g = stack.grid
    print(f"{stack.source}: {g.width} x {g.height} px, {stack.channels} band(s), "
          f"CRS {g.crs.to_string() if g.crs else 'none'}, pixel {g.res[0]:.6g} x {g.res[1]:.6g}, "
          f"bounds {tuple(round(v, 6) for v in g.bounds)}")
    scale = max(1.0, max(g.shape) / args.max_side)
    values, valid = stack.read(out_shape=(max(1, int(g.height / scale)), max(1, int(g.width / scale))))
    for c, band in enumerate(stack.bands):
        v = values[c][valid]
        stats = "all nodata" if v.size == 0 else \
            "min {:.6g}, p2 {:.6g}, median {:.6g}, p98 {:.6g}, max {:.6g}".format(
                v.min(), *np.percentile(v, [2, 50, 98]), v.max())
        print(f"  {band.name:>8}  {band.dtype:<8} nodata {band.nodata}  native {band.grid.width}x{band.grid.height}"
              f" px of {band.grid.res[0]:.6g}  {stats}  ({band.path.name} band {band.index})")
    if valid.size and not valid.all():
        print(f"  nodata: {100 * (1 - valid.mean()):.1f} % of the pixels")
    if args.rgb:
        rgb = rgb_indices(stack.names) if not args.bands else ((0, 1, 2) if stack.channels >= 3 else (0, 0, 0))
        image = render_rgb(values, rgb, valid)
        atomic_write(args.rgb, lambda p: Image.fromarray(image).save(p, format="PNG"))
        print(f"RGB preview ({', '.join(stack.names[i] for i in rgb)}; 2-98 % stretch) -> {args.rgb}")
    return 0
