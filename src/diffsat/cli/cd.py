"""``diffsat cd``: change detection (train a head on diffusion features with its baselines, predict, evaluate)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..fileio import atomic_write_text
from .common import add_parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(subparsers, "cd", "Change detection: DDPM-CD's head on frozen diffusion features, beside "
                   "FC-Siam-diff and change vector analysis.",
                   "diffsat cd train configs/cd_levir_cpu.json --out runs/cd")
    verbs = p.add_subparsers(dest="cd_verb", metavar="VERB", required=True)

    t = add_parser(verbs, "train", "Train the config's change head and its baselines (head.compare) into a run "
                   "directory; score them all on the test split (test_metrics.json, report.html). With data.folds: one run "
                   "per fold in RUN/folds/<k>, every pair scored by the fold that never saw it, pooled in RUN.",
                   "diffsat cd train configs/cd_levir_cpu.json --out runs/cd --set train.cpu_minutes=5\n"
                   "  diffsat cd train configs/cd_oscd_cpu.json --out runs/cd_oscd\n"
                   "  diffsat cd train --resume --out runs/cd")
    t.add_argument("config", nargs="?", help="change-detection JSON config ({\"cd\": {...}}); optional with --resume")
    t.add_argument("--out", required=True, type=Path, help="run directory")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value inside 'cd', e.g. train.lr=3e-4 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.set_defaults(run=run_train)

    r = add_parser(verbs, "predict", "Predict change masks for every pair of a LEVIR-CD, open-cd or OSCD folder: "
                   "PNG 0/255 for 8-bit inputs; for georeferenced rasters a GeoTIFF mask and probability map on "
                   "the input's grid and GeoJSON polygons of the changes, read and written window by window.",
                   "diffsat cd predict runs/cd --pairs ../shared/data/levir-cd256-samples --out out/masks\n"
                   "  diffsat cd predict runs/cd --pairs LEVIR-CD256 --list test --out out/test --probabilities\n"
                   "  diffsat cd predict runs/cd_oscd --pairs ../shared/data/oscd --names pisa --out out/pisa")
    r.add_argument("run_dir", type=Path, help="run directory of `diffsat cd train`")
    r.add_argument("--pairs", required=True, type=Path, help="folder with A/ and B/ (label/ optional; PNG, JPEG "
                   "or GeoTIFF), an open-cd root with --list SPLIT, or an OSCD folder")
    r.add_argument("--list", dest="list_name", help="LEVIR-CD: list/<LIST>.txt; open-cd: the split folder; "
                   "OSCD: train or test (the city lists)")
    r.add_argument("--names", nargs="+", help="only these pairs (file names; OSCD: cities)")
    r.add_argument("--wgs84", action="store_true", help="GeoJSON polygons in EPSG:4326 (default: the raster's CRS)")
    r.add_argument("--no-polygons", action="store_true", help="georeferenced inputs: skip the GeoJSON polygons")
    r.add_argument("--out", required=True, type=Path, help="output folder")
    r.add_argument("--method", help="ddpmcd, fc_siam_diff or cva (default: the run's head.kind)")
    r.add_argument("--probabilities", action="store_true", help="also write P(change) maps to OUT/probability/")
    r.add_argument("--no-figures", action="store_true", help="skip OUT/figures/ (before | after | truth | prediction)")
    r.add_argument("--last", action="store_true", help="use the last weights instead of the best by validation F1")
    r.add_argument("--window", type=int, help="side of the prediction windows (default: the run's data.window; "
                   "larger: fewer windows per scene, memory grows with its square)")
    r.add_argument("--margin", type=int, help="context pixels dropped at each window's edge (default: the run's "
                   "data.margin)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    r.set_defaults(run=run_predict)

    e = add_parser(verbs, "evaluate", "Score predicted masks against labels (one confusion matrix over all "
                   "pairs): change precision / recall / F1 / IoU, OA, kappa, mean F1 / IoU, per-pair F1.",
                   "diffsat cd evaluate out/masks --labels ../shared/data/levir-cd256-samples --out metrics.json")
    e.add_argument("pred_dir", type=Path, help="folder of predicted masks (0/255 PNG)")
    e.add_argument("--labels", required=True, type=Path, help="folder of label masks, or a pair folder with label/")
    e.add_argument("--out", type=Path, help="write every number to this JSON file")
    e.set_defaults(run=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from ..cd import cross_validate, load_cd_config, train_cd
    from ..cd.run import summary_line
    from ..errors import DiffsatError

    if args.config is None and not args.resume:
        raise DiffsatError("give a CONFIG to train from (or --resume to continue the run in --out)")
    cfg = load_cd_config(args.config if args.config is not None else args.out, args.overrides)
    train = cross_validate if cfg.data.folds else train_cd
    doc = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    for name, result in doc["methods"].items():
        print(summary_line(name, result))
        if "folds" in result:
            print("  per pair: " + ", ".join(f"{p} {f1:.3f}" for p, f1 in result["per_image_f1"].items()))
    print(f"run directory {args.out} (test_metrics.json, report.html)")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..cd import predict_run
    from ..cd.run import summary_line

    from ..cd.run import OutputOptions

    options = OutputOptions(args.probabilities, not args.no_figures, not args.no_polygons, args.wgs84)
    names = tuple(args.names) if args.names else None
    n, result = predict_run(args.run_dir, args.pairs, args.out, args.list_name, args.method, options, args.last,
                            not args.no_progress, names, args.window, args.margin)
    print(f"{n} masks written to {args.out}")
    if result is not None:
        print(summary_line(args.method or "prediction", result))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..cd import evaluate_masks
    from ..cd.run import summary_line

    result = evaluate_masks(args.pred_dir, args.labels)
    print(summary_line(str(args.pred_dir), result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0
