"""Whole-scene change prediction in bounded memory: a synthetic 13-band uint16 GeoTIFF pair of N x N pixels
predicted by FC-Siam-diff (13 bands, random weights: the cost does not depend on the weights) through
``diffsat.cd.run.predict_to_dir``, the path ``diffsat cd predict`` takes: windows read from disk, GeoTIFF mask
and probability map written window by window, GeoJSON polygons. Each size runs in a fresh process, whose peak
resident memory (``ru_maxrss``, the import of torch included) and seconds per megapixel are reported.

    python benchmarks/scene_memory.py --sizes 2048 4096 --out /tmp/scene_bench

The pair alone is 2 x 13 x N^2 x 2 bytes as uint16 (0.87 GB at 4096) and twice that in float32 per date.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from diffsat.cd.config import CDDataConfig, PairSource, parse_cd_config
from diffsat.cd.methods import ImageMethod
from diffsat.cd.pairs import load_pairs
from diffsat.cd.run import OutputOptions, predict_to_dir
from diffsat.geo.normalise import fixed_normalisation
from diffsat.geo.raster import SENTINEL2_BANDS
root, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = parse_cd_config({"cd": {"head": {"kind": "fc_siam_diff", "compare": []}}})
pairs = load_pairs([PairSource(root=str(root))], need_labels=False).pairs
norm = fixed_normalisation(SENTINEL2_BANDS, 1 / 5000, 5000)
start = time.perf_counter()
predict_to_dir(ImageMethod(cfg, channels=13), pairs, norm, cfg.data, out, OutputOptions(figures=False),
               progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads()}))
"""


def write_scene(path: Path, size: int, seed: int, change: bool) -> None:
    """A 13-band uint16 GeoTIFF (UTM, 10 m), written in row blocks: smooth fields plus noise; with
    ``change`` bright squares appear."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": size, "height": size, "count": 13, "dtype": "uint16", "nodata": 0,
               "crs": "EPSG:32632", "transform": from_origin(500_000, 5_000_000, 10, 10), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, 256):
            yy, xx = np.mgrid[row : row + 256, 0:size]
            base = 2000 + 1500 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
            block = np.stack([base + 80 * c + rng.normal(0, 40, base.shape) for c in range(13)])
            if change:
                block[:, ((yy // 128) % 7 == 3) & ((xx // 128) % 5 == 2)] += 3000
            ds.write(np.clip(block, 1, 65535).astype(np.uint16), window=Window(0, row, size, 256))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--out", type=Path, default=Path("/tmp/scene_bench"))
    args = parser.parse_args()
    from diffsat.precision import cpu_description

    print(f"CPU: {cpu_description()}; {time.strftime('%Y-%m-%d')}")
    print("| side | megapixels | pair on disk as uint16 | peak RSS | seconds | s / megapixel |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        root = args.out / f"pairs{size}"
        for side, change in (("A", False), ("B", True)):
            if not (root / side / "scene.tif").is_file():
                write_scene(root / side / "scene.tif", size, seed=0, change=change)
        done = subprocess.run([sys.executable, "-c", CHILD, str(root), str(args.out / f"pred{size}")],
                              stdout=subprocess.PIPE, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        mp = size * size / 1e6
        print(f"| {size} | {mp:.1f} | {2 * 13 * size * size * 2 / 1e9:.2f} GB | {r['peak_rss_mb']:.0f} MB | "
              f"{r['seconds']:.0f} | {r['seconds'] / mp:.2f} |", flush=True)


if __name__ == "__main__":
    main()
