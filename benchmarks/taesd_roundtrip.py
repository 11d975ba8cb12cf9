"""A TAESD-family first stage on held-out UC Merced 256 px tiles: the round trip's PSNR beside bicubic at the
same number of values, and the encoder's and decoder's seconds per tile in fp32 and under bf16 autocast.

    python benchmarks/taesd_roundtrip.py --weights ../shared/weights/taesd --tiles ../shared/data/ucmerced-256 --n 48

Held-out tiles: every tenth file in sorted order (the recipes' ``data.holdout: 10``), the first ``--n`` of
them; the 40 tiles a few pixels short of 256 are resized to 256.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffsat.precision import autocast, cpu_description
from diffsat.rundir.taesd import load_taesd


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) of uint8-rounded ``a`` against ``b``, both ``(N, 3, H, W)`` in [-1, 1]."""
    a8, b8 = ((a + 1) * 127.5).round().clamp(0, 255), ((b + 1) * 127.5).round().clamp(0, 255)
    return float((10 * torch.log10(255**2 / ((a8 - b8) ** 2).mean(dim=(1, 2, 3)))).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--tiles", type=Path, required=True)
    parser.add_argument("--n", type=int, default=48)
    args = parser.parse_args()
    ae = load_taesd(args.weights)
    files = sorted(args.tiles.rglob("*.jpg"))[9::10][: args.n]
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((256, 256)))).permute(2, 0, 1)
                     for f in files]).float() / 127.5 - 1
    with torch.inference_mode():
        y = ae.decode(ae.encode(x)).clamp(-1, 1)
    values = ae.latent_channels * 32 * 32
    side = round((values / 3) ** 0.5)
    small = F.interpolate(x, size=side, mode="bicubic", antialias=True, align_corners=False)
    bicubic = F.interpolate(small, size=256, mode="bicubic", align_corners=False).clamp(-1, 1)
    print(f"CPU: {cpu_description()}; {time.strftime('%Y-%m-%d')}; {torch.get_num_threads()} threads")
    print(f"{len(files)} held-out tiles: {ae.variant} PSNR {psnr(y, x):.2f} dB; bicubic through {side} px "
          f"({3 * side * side} values, the latent holds {values}) {psnr(bicubic, x):.2f} dB")
    batch = x[:16]
    for bf16 in (False, True):
        times = {}
        with torch.inference_mode():
            z = ae.encode(batch)
            for name, fn, arg in (("encode", ae.encode, batch), ("decode", ae.decode, z)):
                with autocast(torch.device("cpu"), bf16):
                    fn(arg[:2])
                    start = time.perf_counter()
                    fn(arg)
                times[name] = (time.perf_counter() - start) / len(batch)
        print(f"{'bf16' if bf16 else 'fp32'}: encode {times['encode']:.3f} s / tile, decode {times['decode']:.3f} s / tile")


if __name__ == "__main__":
    main()
