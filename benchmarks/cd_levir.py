"""Change detection on the 21 shared labelled pairs (LEVIR-CD + DSIFN-CD samples, the fixed split of
configs/cd_levir_cpu.json): DDPM-CD's head on diffusion features beside FC-Siam-diff and CVA, and ablations
of the feature settings (backbone pretraining, noise levels, scales).

Each variant is one ``diffsat cd train`` run (``runs/bench_cd/<variant>``); head training is budgeted in
process CPU time (``train.cpu_minutes``), identical for the diffusion head and FC-Siam-diff. Results are
appended to benchmarks/results/cd_levir.jsonl, one JSON line per variant.

    python benchmarks/cd_levir.py --variant main --backbone runs/backbones/ucm64_s6232 --cpu-minutes 10
    python benchmarks/cd_levir.py --variant less_pretraining --backbone runs/backbones/ucm64_s500 --cpu-minutes 4 \
        --set head.compare=[]
    python benchmarks/cd_levir.py --table          # the results so far as a markdown table
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

from diffsat.cd import load_cd_config, train_cd

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant")
    p.add_argument("--backbone", help="diffsat run directory of the pretrained backbone")
    p.add_argument("--table", action="store_true", help="print the results file as a markdown table and stop")
    p.add_argument("--cpu-minutes", type=float, default=10.0, help="head training budget per trained method")
    p.add_argument("--config", default=str(ROOT / "configs" / "cd_levir_cpu.json"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench_cd"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cd_levir.jsonl"))
    args = p.parse_args()
    if args.table:
        print_table(Path(args.results))
        return
    if not (args.variant and args.backbone):
        p.error("--variant and --backbone are needed to run a variant")
    overrides = [f"features.backbone={args.backbone}", f"train.cpu_minutes={args.cpu_minutes}", *args.overrides]
    cfg = load_cd_config(args.config, overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    doc = train_cd(cfg, Path(args.runs) / args.variant, progress=False)
    line = {"variant": args.variant, "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "overrides": overrides, "wall_s": time.perf_counter() - t0, "process_cpu_s": time.process_time() - c0,
            "methods": {name: {k: r[k] for k in ("f1", "iou", "precision", "recall", "oa", "kappa", "mean_f1",
                                                   "mean_iou", "per_image_f1", "training")}
                        for name, r in doc["methods"].items()}}
    with open(args.results, "a") as f:
        f.write(json.dumps(line) + "\n")
    for name, r in line["methods"].items():
        t = r["training"]
        extra = f", {t['step']} steps in {t['cpu_s'] / 60:.1f} CPU-min, best val F1 {t['best_f1']:.3f}" if t else ""
        print(f"{args.variant} {name}: F1 {r['f1']:.4f} IoU {r['iou']:.4f} OA {r['oa']:.4f} kappa {r['kappa']:.4f}{extra}")


def print_table(path: Path) -> None:
    print("| variant | method | change-F1 | IoU | precision | recall | OA | kappa | mean F1 | steps | CPU min | best val F1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for line in path.read_text().splitlines():
        run = json.loads(line)
        for name, r in run["methods"].items():
            t = r["training"] or {}
            cells = [f"{r[k]:.3f}" for k in ("f1", "iou", "precision", "recall", "oa", "kappa", "mean_f1")]
            steps = str(t.get("step", "-")) if t else "-"
            cpu = f"{t['cpu_s'] / 60:.1f}" if t else "-"
            best = f"{t['best_f1']:.3f}" if t else "-"
            print(f"| {run['variant']} | {name} | " + " | ".join(cells) + f" | {steps} | {cpu} | {best} |")


if __name__ == "__main__":
    main()
