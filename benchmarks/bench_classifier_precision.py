"""Digit-classifier training speed: float32 against bfloat16 autocast on this CPU.

Times ``--steps`` training steps (batch 128, channels-last, Adam, the +-2 px shifts of the real training
loop) per precision, alternating the two ``--rounds`` times so that load from other jobs on a shared
machine hits both alike; prints the median steps/s of each and their ratio. Random images are used: speed
does not depend on the pixel values.

    python benchmarks/bench_classifier_precision.py --steps 100 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from diffsat.evaluation.classifier import DigitClassifier, random_shift
from diffsat.runtime import cpu_has_bf16


def time_steps(bf16: bool, steps: int, batch_size: int, seed: int = 0) -> float:
    """Steps per second of ``steps`` classifier training steps (after 5 warm-up steps)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier().to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 1, 28, 28, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (batch_size,), generator=gen)

    def step() -> None:
        xb = random_shift(x, 2, gen).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(xb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, cpu_has_bf16() = {cpu_has_bf16()}")
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        for name in ("fp32", "bf16"):
            rates[name].append(time_steps(name == "bf16", args.steps, args.batch_size))
            print(f"round {r + 1}: {name} {rates[name][-1]:.1f} steps/s", flush=True)
    fp32, bf16 = statistics.median(rates["fp32"]), statistics.median(rates["bf16"])
    print(f"median: fp32 {fp32:.1f} steps/s, bf16 {bf16:.1f} steps/s, bf16/fp32 = {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
