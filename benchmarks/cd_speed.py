"""Change-detection prediction speed (wall clock; run it on a quiet machine).

- ``--case cpu1024``: one 1024x1024 pair (four LEVIR-CD 256 px tiles side by side, twice, when the shared
  samples are there, else random pixels) predicted end to end with the CPU backbone and a DDPM-CD head:
  256 px windows overlapping by 64 px (5 x 5 windows), 3 noise levels, 4 decoder scales. Target: <= 60 s.
  The head's weights do not change the cost; a trained run's config gives the settings (``--run``), else
  configs/cd_levir_cpu.json with ``--backbone``.
- ``--case 391m``: seconds per 256x256 pair with the 391M DDPM-CD generator (random weights, built in
  memory; nothing is read), DDPM-CD's t = 50, 100, 400 and feat_scales 2, 5, 8, 11, 14.

    python benchmarks/cd_speed.py --case cpu1024 --backbone runs/backbones/ucm64_s6232
    python benchmarks/cd_speed.py --case 391m --pairs 2
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from diffsat.cd.config import load_cd_config
from diffsat.cd.features import Backbone
from diffsat.cd.methods import FeatureHeadMethod
from diffsat.cd.pairs import Pair
from diffsat.cd.predict import ArrayOutput, predict
from diffsat.geo.normalise import uint8_normalisation
from diffsat.config import load_config
from diffsat.diffusion.schedules import NoiseSchedule
from diffsat.models.unet import build_unet

ROOT = Path(__file__).resolve().parent.parent
LEVIR = ROOT.parent / "shared" / "data" / "levir-cd256-samples"


def test_pair(side: int) -> Pair:
    """A ``side`` x ``side`` pair tiled from the shared LEVIR-CD samples (random pixels without them)."""
    from diffsat.cd.config import PairSource
    from diffsat.cd.pairs import load_pairs

    if LEVIR.is_dir():
        norm = uint8_normalisation(("red", "green", "blue"))
        pairs = [p.load(norm) for p in load_pairs([PairSource(root=str(LEVIR), list="demo")]).pairs[:4]]
        reps = -(-side // 256)
        tile = lambda get: np.concatenate([np.concatenate([get(pairs[(i + j) % 4]) for j in range(reps)], axis=-1)  # noqa: E731
                                           for i in range(reps)], axis=-2)[..., :side, :side]
        return Pair("tiled.png", tile(lambda p: p.before), tile(lambda p: p.after), None, LEVIR)
    rng = np.random.default_rng(0)
    return Pair("random.png", rng.uniform(-1, 1, (3, side, side)).astype(np.float32),
                rng.uniform(-1, 1, (3, side, side)).astype(np.float32), None, ROOT)


def timed(method: FeatureHeadMethod, pair: Pair, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(method, pair, pair.size, method.cfg.data, ArrayOutput(pair.size))
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=("cpu1024", "391m"), required=True)
    p.add_argument("--backbone", help="cpu1024: the backbone run directory")
    p.add_argument("--run", help="cpu1024: a trained `diffsat cd train` run (its config and best head)")
    p.add_argument("--pairs", type=int, default=2, help="timed repetitions")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="cpu1024: cd config override")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.case == "cpu1024":
        overrides = ([f"features.backbone={args.backbone}"] if args.backbone else []) + args.overrides
        cfg = load_cd_config(args.run or ROOT / "configs" / "cd_levir_cpu.json", overrides)
        method = FeatureHeadMethod(cfg, None)
        if args.run:
            from diffsat.cd.train import load_best
            load_best(method, Path(args.run))
        pair = test_pair(1024)
    else:
        cfg = load_cd_config(ROOT / "configs" / "paper" / "ddpmcd_levir.json", ["train.device=cpu"])
        gen_cfg = load_config(ROOT / "configs" / "paper" / "ddpmcd_391m.json")
        torch.manual_seed(0)
        net = build_unet(gen_cfg.model).eval()
        for q in net.parameters():
            q.requires_grad_(False)
        backbone = Backbone(net, NoiseSchedule.from_config(gen_cfg.diffusion), "random-391m", "random weights")
        method = FeatureHeadMethod(cfg, None, backbone=backbone)
        pair = test_pair(256)
    if args.case == "cpu1024":
        timed(method, test_pair(256), 1)  # warm-up: one window (oneDNN primitives, allocations)
    times = timed(method, pair, args.pairs)
    print(f"{args.case}: {pair.size[1]}x{pair.size[0]} pair, {len(method.extractor.levels)} noise levels, scales "
          f"{[s.name for s in method.extractor.scales]}: " + ", ".join(f"{t:.1f}" for t in times)
          + f" s per pair (median {np.median(times):.1f} s)")


if __name__ == "__main__":
    main()
