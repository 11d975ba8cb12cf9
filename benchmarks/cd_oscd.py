"""Change detection on OSCD by leaving cities out (configs/cd_oscd_cpu.json: 3 folds of 3 labelled cities):
DDPM-CD's head on diffusion features beside FC-Siam-diff and CVA, and the ablations of issue 28.

Each variant is one cross-validated ``diffsat cd train`` (``runs/bench_oscd/<variant>``); the variants share
one backbone-feature cache (``runs/bench_oscd/features``, keyed by content, so a fold's own normalisation
and each backbone get their own entries). Head training is budgeted in process CPU time per fold and method
(``train.cpu_minutes``). One JSON line per variant goes to benchmarks/results/cd_oscd.jsonl.

    python benchmarks/cd_oscd.py run --variant recipe                          # the config as it is
    python benchmarks/cd_oscd.py run --variant w10 --set train.change_weight=10
    python benchmarks/cd_oscd.py run --variant rgb --set 'data.bands=["B04","B03","B02"]' \
        --set features.backbone=runs/oscd_backbone_rgb
    python benchmarks/cd_oscd.py random-backbone --like runs/oscd_backbone --out runs/oscd_backbone_random
    python benchmarks/cd_oscd.py checkpoint-backbone --run runs/oscd_backbone --step 100 --out runs/oscd_backbone_100
    python benchmarks/cd_oscd.py timing --run runs/bench_oscd/w30/folds/1 --city bordeaux --window 520 --margin 32
    python benchmarks/cd_oscd.py windows --variant w30 --window 520 --margin 32
    python benchmarks/cd_oscd.py table
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffsat.cd import cross_validate, load_cd_config, predict_run
from diffsat.cd.run import OutputOptions
from diffsat.config import save_config
from diffsat.precision import cpu_description
from diffsat.rundir import CD_FEATURES_DIR, CHECKPOINTS_DIR, CONFIG_FILE, EMA_FILE, step_dir
from diffsat.rundir.loading import random_model

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "bench_oscd"
RESULTS = ROOT / "benchmarks" / "results" / "cd_oscd.jsonl"
WINDOW_RESULTS = ROOT / "benchmarks" / "results" / "cd_oscd_windows.jsonl"
KEYS = ("f1", "iou", "precision", "recall", "oa", "kappa", "tn", "fp", "fn", "tp", "per_image_f1")


def run_variant(args: argparse.Namespace) -> None:
    cfg = load_cd_config(args.config, args.overrides)
    run = RUNS / args.variant
    run.mkdir(parents=True, exist_ok=True)
    (RUNS / CD_FEATURES_DIR).mkdir(exist_ok=True)
    if not (run / CD_FEATURES_DIR).exists():
        (run / CD_FEATURES_DIR).symlink_to(RUNS / CD_FEATURES_DIR, target_is_directory=True)
    t0, c0 = time.perf_counter(), time.process_time()
    doc = cross_validate(cfg, run, resume=args.resume, progress=False)
    methods = {}
    for name, r in doc["methods"].items():
        trained = [f["training"] for f in r["folds"] if f["training"]]
        methods[name] = {**{k: r[k] for k in KEYS},
                         "val_f1": [t["best_f1"] for t in trained], "steps": [t["step"] for t in trained],
                         "cpu_min": sum(t["cpu_s"] for t in trained) / 60}
    line = {"variant": args.variant, "date": date.today().isoformat(), "cpu": cpu_description(),
            "threads": torch.get_num_threads(), "overrides": args.overrides, "wall_s": time.perf_counter() - t0,
            "process_cpu_s": time.process_time() - c0, "methods": methods}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")
    for name, r in methods.items():
        val = f", val F1 per fold {', '.join(f'{v:.3f}' for v in r['val_f1'])}" if r["val_f1"] else ""
        print(f"{args.variant} {name}: change-F1 {r['f1']:.4f} precision {r['precision']:.3f} recall "
              f"{r['recall']:.3f} kappa {r['kappa']:.3f}{val}")


def random_backbone(args: argparse.Namespace) -> None:
    """A run directory with the architecture of ``--like`` and random weights (seed 0): the ablation's
    backbone that learnt nothing."""
    loaded = random_model(args.like, seed=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in loaded.network.state_dict().items()}, str(out / "ema.safetensors"))
    save_config(loaded.config, out / "config.json")
    print(f"random-weight backbone like {args.like} in {out}")


def checkpoint_backbone(args: argparse.Namespace) -> None:
    """A run directory holding one earlier checkpoint's EMA weights of ``--run``: the backbone at a smaller
    pretraining budget."""
    weights = step_dir(args.run, args.step) / EMA_FILE
    if not weights.is_file():
        raise SystemExit(f"{weights} does not exist: list {Path(args.run) / CHECKPOINTS_DIR} for the steps kept")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out / EMA_FILE)
    shutil.copyfile(Path(args.run) / CONFIG_FILE, out / CONFIG_FILE)
    print(f"backbone {args.run} at step {args.step} in {out}")


def timing(args: argparse.Namespace) -> None:
    """Wall seconds to predict one whole city (read, windows, features, GeoTIFF and GeoJSON written), per
    method, features not cached."""
    torch.set_num_threads(args.threads)
    cfg = load_cd_config(args.run)
    for name in (cfg.head.kind, *cfg.head.compare):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            _, result = predict_run(args.run, args.pairs, out, method_name=name, names=(args.city,),
                                    options=OutputOptions(figures=False), progress=False, window=args.window,
                                    margin=args.margin)
            wall = time.perf_counter() - t0
        print(f"{args.city} {name}: {wall:.1f} s wall at {args.threads} threads, window {args.window or cfg.data.window} "
              f"(change-F1 {result['f1']:.3f}); {cpu_description()}")


def rescore_windows(args: argparse.Namespace) -> None:
    """A cross-validated variant's 9 cities predicted again by their folds' models with another prediction
    window / margin: the pooled change-F1 (one confusion matrix) and the CPU time, one line to
    benchmarks/results/cd_oscd_windows.jsonl."""
    torch.set_num_threads(args.threads)
    run = RUNS / args.variant
    cfg = load_cd_config(run)
    cm = {"tn": 0, "fp": 0, "fn": 0, "tp": 0}
    c0 = time.process_time()
    for k, fold in enumerate(cfg.data.folds):
        with tempfile.TemporaryDirectory() as out:
            _, result = predict_run(run / "folds" / str(k), args.pairs, out, method_name=args.method,
                                    names=fold.test, options=OutputOptions(figures=False, polygons=False),
                                    progress=False, window=args.window, margin=args.margin)
        for key in cm:
            cm[key] += result[key]
    f1 = 2 * cm["tp"] / max(1, 2 * cm["tp"] + cm["fp"] + cm["fn"])
    line = {"variant": args.variant, "method": args.method, "window": args.window or cfg.data.window,
            "margin": args.margin if args.margin is not None else cfg.data.margin, "f1": f1, **cm,
            "process_cpu_s": time.process_time() - c0, "threads": args.threads, "date": date.today().isoformat(),
            "cpu": cpu_description()}
    with open(WINDOW_RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"{args.variant} {args.method} window {line['window']} margin {line['margin']}: change-F1 {f1:.4f}, "
          f"{line['process_cpu_s']:.0f} CPU-s for the 9 cities")


def _row_start(run: dict, method: str) -> str:
    return f"| {run['variant']} | {run['cpu']} | {method} | "


def print_table() -> None:
    runs = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    print("| variant | CPU | method | change-F1 | IoU | precision | recall | kappa | val F1 (mean of folds) | head steps (mean) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        for name, r in run["methods"].items():
            val = f"{sum(r['val_f1']) / len(r['val_f1']):.3f}" if r["val_f1"] else "-"
            cells = " | ".join(f"{r[k]:.3f}" for k in ("f1", "iou", "precision", "recall", "kappa"))
            steps = f"{sum(r['steps']) / len(r['steps']):.0f}" if r["steps"] else "-"
            print(f"{_row_start(run, name)}{cells} | {val} | {steps} |")
    cities = list(runs[0]["methods"][next(iter(runs[0]["methods"]))]["per_image_f1"])
    print("\n| variant | CPU | method | " + " | ".join(cities) + " |")
    print("|---|---|---|" + "---:|" * len(cities))
    for run in runs:
        for name, r in run["methods"].items():
            print(_row_start(run, name) + " | ".join(f"{r['per_image_f1'][c]:.3f}" for c in cities) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", required=True)
    r = verbs.add_parser("run")
    r.add_argument("--variant", required=True)
    r.add_argument("--config", default=str(ROOT / "configs" / "cd_oscd_cpu.json"))
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--resume", action="store_true")
    b = verbs.add_parser("random-backbone")
    b.add_argument("--like", required=True)
    b.add_argument("--out", required=True)
    c = verbs.add_parser("checkpoint-backbone")
    c.add_argument("--run", required=True)
    c.add_argument("--step", type=int, required=True)
    c.add_argument("--out", required=True)
    t = verbs.add_parser("timing")
    t.add_argument("--run", required=True, help="one fold's run directory")
    t.add_argument("--city", required=True)
    t.add_argument("--pairs", default=str(ROOT.parent / "shared" / "data" / "oscd"))
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--window", type=int, help="prediction window (default: the run's data.window)")
    t.add_argument("--margin", type=int)
    w = verbs.add_parser("windows", help=rescore_windows.__doc__)
    w.add_argument("--variant", required=True)
    w.add_argument("--method", default="ddpmcd")
    w.add_argument("--window", type=int)
    w.add_argument("--margin", type=int)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--pairs", default=str(ROOT.parent / "shared" / "data" / "oscd"))
    verbs.add_parser("table")
    args = p.parse_args()
    {"run": run_variant, "random-backbone": random_backbone,
     "checkpoint-backbone": checkpoint_backbone, "timing": timing, "windows": rescore_windows,
     "table": lambda a: print_table()}[args.verb](args)


if __name__ == "__main__":
    main()
