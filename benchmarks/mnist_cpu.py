"""The mnist_cpu targets, measured end to end through the command line on this machine:

1. train ``configs/mnist_cpu.json`` on the first 1,000 MNIST training digits (10-minute limit);
2. sample 500 digits with each sampler and step count of ``--samples`` (ancestral and SDE-DPM-Solver++ at
   reduced step counts by default), timed;
3. ``diffsat evaluate`` them against the MNIST test digits, with the training set for memorisation;
4. the machine's fp32 and bf16 matmul peaks, measured in the same run, beside the train step's GFLOP/s.

    python benchmarks/mnist_cpu.py --mnist ../shared/data/mnist --out runs/bench_mnist_cpu [--set k=v ...] \
        [--samples ancestral-50 dpm++sde-10 ...] [--emulate-fraction 0.667]

Prints a Markdown summary (also written to OUT/summary.md) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def diffsat(*args: str) -> str:
    """Run the ``diffsat`` command line; returns its stdout (stderr passes through)."""
    done = subprocess.run([sys.executable, "-m", "diffsat", *args], stdout=subprocess.PIPE, text=True, check=True)
    return done.stdout


def emulation(config: str, fraction: float | None) -> list[str]:
    """The ``--set`` overrides of ``--emulate-fraction``: the config's run stopped at ``fraction`` of its steps
    by its time limit, as a step-limited run."""
    if fraction is None:
        return []
    train = json.loads(Path(config).read_text())["train"]
    steps, warmup = round(fraction * train["max_steps"]), round(fraction * train["warmup_steps"])
    return [f"train.max_steps={steps}", f"train.warmup_steps={warmup}", "train.time_limit_minutes=null",
            "train.threads=1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default=str(ROOT / "configs" / "mnist_cpu.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--samples", nargs="+", metavar="SAMPLER-STEPS",
                        default=["ancestral-50", "ancestral-100", "dpm++sde-10", "dpm++sde-20"],
                        help="sampler and step count of each sample set (default: %(default)s)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--skip-train", action="store_true", help="reuse the run in --out")
    parser.add_argument("--emulate-fraction", type=float, default=None, metavar="F",
                        help="train as the time limit would stop the recipe with train.lr_over=budget on a machine "
                             "that manages only the fraction F of its steps: F x max_steps steps with F x "
                             "warmup_steps of warm-up and no time limit, one thread (that schedule runs over the "
                             "budget's fraction, so this is the same run, deterministic and independent of this "
                             "machine's speed and load)")
    args = parser.parse_args()
    from diffsat.rundir import read_metrics
    from diffsat.training.throughput import matmul_peak_gflops

    run = args.out / "run"
    if not args.skip_train:
        sets = [f"data.path={args.mnist.resolve()}", *emulation(args.config, args.emulate_fraction), *args.overrides]
        start = time.perf_counter()
        print(diffsat("train", args.config, "--out", str(run), *[x for s in sets for x in ("--set", s)]))
        print(f"train command wall time {time.perf_counter() - start:.0f} s")
    metrics = read_metrics(run)
    rows = ~torch.tensor(metrics["loss"]).isnan()
    ips = float(torch.tensor(metrics["images_per_s"])[rows][1:].median())
    gflops = float(torch.tensor(metrics["gflops"])[rows][1:].median())
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    lines = [f"train: {int(metrics['step'][rows][-1])} steps, {metrics['elapsed_s'][rows][-1]:.0f} s of steps; "
             f"{ips:.0f} images/s, {gflops:.0f} GFLOP/s achieved (median over log intervals); matmul peak "
             f"measured now: fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s",
             "", f"| sampler | steps | s for {args.n} | recognisable | classes | spread | FID | KID | memorisation |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.samples:
        sampler, steps = name.rsplit("-", 1)
        out = args.out / name
        text = diffsat("sample", str(run), "--out", str(out), "--n", str(args.n), "--steps", steps,
                       "--sampler", sampler, "--batch-size", str(args.n))
        seconds = float(re.search(r"in ([0-9.]+) s", text).group(1))
        diffsat("evaluate", str(out), "--reference", str(args.mnist), "--train-set", str(run),
                "--out", str(out / "metrics.json"))
        m = json.loads((out / "metrics.json").read_text())["metrics"]
        lines.append(
            f"| {sampler} | {steps} | {seconds:.1f} "
            f"| {m['recognisable']['value']:.3f} ({m['recognisable']['baseline']:.3f}) "
            f"| {m['classes_present']['value']:.0f} | {m['class_entropy']['value']:.3f} "
            f"| {m['fid_classifier']['value']:.1f} ({m['fid_classifier']['baseline']:.1f}) "
            f"| {m['kid_classifier']['value']:.2f} "
            f"| {m['memorisation_ratio']['value']:.2f} ({m['memorisation_ratio']['baseline']:.2f}) |")
        print(lines[-1], flush=True)
    summary = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
