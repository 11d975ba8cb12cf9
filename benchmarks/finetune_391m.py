"""What fine-tuning the 391M DDPM-CD generator costs on this CPU: seconds per training step and peak memory at
batch 1 (256 x 256), fp32 and bf16 autocast, with and without ``train.freeze: ["encoder"]``.

The network has random weights (``configs/paper/ddpmcd_391m.json``; the cost does not depend on the weights),
the steps are the one Trainer's (``Trainer.train_step``: AdamW, gradient clipping, EMA), on random images.
Each case runs in a fresh process: one warm-up step, then ``--steps`` timed steps; peak memory is the
process's ``ru_maxrss``.

    python benchmarks/finetune_391m.py --steps 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, tempfile, time
import torch
from diffsat.config import load_config
from diffsat.data import ImageDataset
from diffsat.training.runs import make_trainer
precision, freeze, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
cfg = load_config("configs/paper/ddpmcd_391m.json", [
    "train.batch_size=1", f"train.precision={precision}", f"train.freeze={json.dumps(freeze)}",
    "train.channels_last=false", "train.device=cpu", "train.warmup_steps=0", "train.eval_every=null"])
images = torch.rand(4, 3, 256, 256) * 2 - 1
dataset = ImageDataset(images, None, "random images")
with tempfile.TemporaryDirectory() as run:
    trainer = make_trainer(cfg, run, dataset=dataset)
    trainer.train_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
print(json.dumps({"s_per_step": min(times), "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "trainable_m": trainable / 1e6, "threads": torch.get_num_threads()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    from diffsat.precision import cpu_description

    print(f"CPU: {cpu_description()}; {time.strftime('%Y-%m-%d')}")
    print("| precision | frozen | trainable parameters | s / step (batch 1, 256 px) | peak memory |")
    print("|---|---|---:|---:|---:|")
    for precision, freeze in (("fp32", []), ("bf16", []), ("bf16", ["encoder"]), ("fp32", ["encoder"])):
        done = subprocess.run([sys.executable, "-c", CHILD, precision, json.dumps(freeze), str(args.steps)],
                              stdout=subprocess.PIPE, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {precision} | {', '.join(freeze) or 'none'} | {r['trainable_m']:.1f}M | {r['s_per_step']:.1f} | "
              f"{r['peak_gb']:.1f} GB |", flush=True)


if __name__ == "__main__":
    main()
