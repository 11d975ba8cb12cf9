"""Real-against-real baselines for the README: what real data scores on the metrics of ``diffsat evaluate``.

MNIST (needs the cached digit classifier): the protocol of ``diffsat evaluate SAMPLES --reference MNIST
--train-set MNIST --train-limit 1000`` with 1,000 images as SAMPLES. The 10,000 test digits are split
(seeded) into a baseline part of 1,000 and an evaluation part of 9,000; the "held-out" column is the
baseline part (real digits the model never saw), the "training set" column is the first 1,000 training
digits (mnist_cpu's training set) in the samples' place, i.e. a model that reproduces its training set.

UC Merced (no weights needed): multi-scale SWD x1e3 between two disjoint, class-balanced halves (800 and
800 tiles: alternate files of each class), at 64 px either resized from the 128 px tiles or as centre
64 px crops (the scale of a model trained on random crops), plus the same halves after a 3x3 box blur of
one half, for scale.

    python benchmarks/eval_baselines.py --data ../shared/data --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffsat.evaluation import EvalSettings, evaluate, load_classifier
from diffsat.evaluation.image_sets import load_real
from diffsat.evaluation.swd import sliced_wasserstein_distance


def mnist_baselines(mnist: Path, seeds: list[int]) -> None:
    classifier = load_classifier()
    reference = load_real(mnist, 1, 28, split="test")
    train = load_real(mnist, 1, 28, split="train", limit=1000, training=True)
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in seeds:
        start = time.perf_counter()
        result = evaluate(train, reference, train, classifier=classifier, settings=EvalSettings(seed=seed))
        for m in result.metrics:
            rows.setdefault(m.label, []).append((m.baseline, m.value))
        print(f"MNIST seed {seed}: {time.perf_counter() - start:.1f} s", flush=True)
    print("\n| metric | 1,000 held-out test digits (mean over seeds, min-max) | 1,000 training digits as samples |")
    print("|---|---:|---:|")
    for label, pairs in rows.items():
        held, copied = [p[0] for p in pairs], [p[1] for p in pairs]
        print(f"| {label} | {_stat(held)} | {_stat(copied)} |")


def _stat(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1 or max(values) == min(values):
        return f"{mean:.4g}"
    return f"{mean:.4g} ({min(values):.3g} to {max(values):.3g})"


def ucmerced_baselines(folder: Path, seeds: list[int]) -> None:
    resized = load_real(folder, 3, 64)  # whole 128 px tiles resized to 64 px
    full = load_real(folder, 3, 128)
    crops = full.images[..., 32:96, 32:96]  # centre 64 px windows: the ground scale of the 128 px tiles
    labels = resized.labels
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        rank[labels == c] = torch.arange(int((labels == c).sum()))
    a, b = rank % 2 == 0, rank % 2 == 1
    print(f"\nUC Merced halves: {int(a.sum())} and {int(b.sum())} tiles")
    print("| 64 px images | SWD 64 px | SWD 32 px | SWD 16 px | SWD mean | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    cases = {
        "resized tiles, half A vs half B": (resized.images[a], resized.images[b]),
        "centre crops, half A vs half B": (crops[a], crops[b]),
        "resized tiles, half A blurred (3x3 box) vs half B": (
            F.avg_pool2d(resized.images[a], 3, 1, 1, count_include_pad=False), resized.images[b]),
    }
    for name, (x, y) in cases.items():
        for seed in seeds:
            start = time.perf_counter()
            r = sliced_wasserstein_distance(x, y, seed=seed)
            levels = " | ".join(f"{v:.2f}" for v in r.per_level)
            print(f"| {name} (seed {seed}) | {levels} | {r.mean:.2f} | {time.perf_counter() - start:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=["mnist", "ucmerced"])
    args = parser.parse_args()
    if args.only != "ucmerced":
        mnist_baselines(args.data / "mnist", args.seeds)
    if args.only != "mnist":
        ucmerced_baselines(args.data / "ucmerced-128", args.seeds)


if __name__ == "__main__":
    main()
