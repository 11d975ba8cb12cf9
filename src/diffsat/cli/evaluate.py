"""``diffsat evaluate``: sample quality against real images, beside real-against-real baselines; and
``diffsat evaluate --train-classifier``: train the digit classifier the digit metrics use."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import DiffsatError
from .common import add_parser, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_parser(
        subparsers,
        "evaluate",
        "Score generated images against real ones (digit-classifier metrics, FID/KID, SWD, memorisation), "
        "each beside a real-data baseline; or train the digit classifier (--train-classifier).",
        "diffsat evaluate samples/mnist --reference ../shared/data/mnist --train-set runs/mnist --out metrics.json\n"
        "  diffsat evaluate samples/ucm64 --reference ../shared/data/ucmerced-128 --out ucm.json\n"
        "  diffsat evaluate --train-classifier --mnist ../shared/data/mnist",
    )
    p.add_argument("samples", nargs="?", type=Path,
                   help="folder of generated images (e.g. `diffsat sample --out DIR`; its grid.png is skipped), "
                        "or MNIST idx files for a real-vs-real check")
    p.add_argument("--reference", type=Path, metavar="REAL",
                   help="held-out real images: image folder, MNIST idx folder (test split) or run directory "
                        "(its held-out images: MNIST test digits, or data.holdout)")
    p.add_argument("--train-set", type=Path, metavar="TRAIN",
                   help="the training images, for the memorisation check: a run directory (exactly its "
                        "training data), MNIST idx folder (train split) or image folder")
    p.add_argument("--out", type=Path, help="write all numbers as JSON here (and the closest pairs figure beside)")
    p.add_argument("--pairs-figure", type=Path,
                   help="closest sample/training pairs figure (default with --train-set and --out: "
                        "OUT_closest_pairs.png)")
    p.add_argument("--kind", choices=["auto", "digits", "images"], default="auto",
                   help="digits: classifier metrics; images: SWD (default auto: digits for grey images)")
    p.add_argument("--inception", type=Path, metavar="PATH",
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: adds Inception FID/KID (never downloaded)")
    p.add_argument("--classifier", type=Path, help="digit classifier weights (default: the cached one)")
    p.add_argument("--seed", type=int, default=0, help="reference split, KID subsets, SWD directions (default: 0)")
    p.add_argument("--kid-subsets", type=positive_int, default=100, metavar="N",
                   help="KID: random subsets of up to 1000 images per set (default: 100)")
    for role, split in (("samples", "train"), ("reference", "test"), ("train", "train")):
        p.add_argument(f"--{role}-split", choices=["train", "test"], default=split,
                       help=f"split taken when the {role} argument holds MNIST idx files (default: {split})")
        p.add_argument(f"--{role}-limit", type=positive_int, metavar="N",
                       help=f"use only the first N {role} images")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = p.add_argument_group("digit classifier training")
    g.add_argument("--train-classifier", action="store_true",
                   help="train the digit classifier on the full MNIST and cache it (a few CPU minutes)")
    g.add_argument("--mnist", type=Path,
                   help="folder with the four MNIST idx files (default: $DIFFSAT_DATA/mnist, then the cache)")
    g.add_argument("--epochs", type=positive_int, default=3, help="classifier training epochs (default: 3)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.train_classifier:
        return _train_classifier(args)
    if args.samples is None or args.reference is None:
        raise DiffsatError("give SAMPLES and --reference REAL (or --train-classifier to train the digit classifier)")
    return _evaluate(args)


# ------------------------------------------------------------------------------------------ classifier


def _train_classifier(args: argparse.Namespace) -> int:
    from ..evaluation import default_classifier_path, train_classifier
    from ..evaluation.results import classifier_training_root

    root = classifier_training_root(args.mnist)
    out = args.classifier or default_classifier_path()
    print(f"training the digit classifier on {root} ({args.epochs} epochs, seed {args.seed}) ...")
    start = time.perf_counter()
    _, accuracy = train_classifier(root, out, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    print(f"test accuracy {100 * accuracy:.2f} % on the 10,000 MNIST test digits, "
          f"{time.perf_counter() - start:.0f} s -> {out}")
    return 0


# ------------------------------------------------------------------------------------------ evaluation


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.suite import EvalSettings, evaluate, resolve_kind
    from ..evaluation.image_sets import load_real, load_samples
    from ..evaluation.results import format_report, load_extractors, result_record, write_result

    samples = load_samples(args.samples, args.samples_limit, args.samples_split)
    kind = resolve_kind(args.kind, samples.channels)
    classifier, inception, info = load_extractors(kind, args.classifier, args.inception)  # fail fast: before the real sets
    reference = load_real(args.reference, samples.channels, samples.size, args.reference_split,
                          args.reference_limit, "--reference")
    train = None if args.train_set is None else load_real(
        args.train_set, samples.channels, samples.size, args.train_split, args.train_limit, "--train-set",
        training=True)
    settings = EvalSettings(kind=kind, seed=args.seed, kid_subsets=args.kid_subsets, progress=not args.no_progress)
    start = time.perf_counter()
    result = evaluate(samples, reference, train, classifier=classifier, inception=inception, settings=settings)
    record = result_record(result, info, time.perf_counter() - start)
    print(format_report(result, info))
    if train is not None and (args.pairs_figure is not None or args.out is not None):
        from ..evaluation import save_closest_pairs_figure

        path = args.pairs_figure or args.out.with_name(f"{args.out.stem}_closest_pairs.png")
        pairs = result.details["memorisation"]["samples"]["closest_pairs"]
        print(f"closest sample/training pairs -> {save_closest_pairs_figure(samples.images, train.images, pairs, path)}")
    if args.out is not None:
        print(f"metrics -> {write_result(args.out, record)}")
    return 0
