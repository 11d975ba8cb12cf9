"""``diffsat evaluate``: sample quality against real images, beside real-against-real baselines; and
``diffsat evaluate --train-classifier``: train the digit classifier the digit metrics use."""

from __future__ import annotations

import argparse
import json
import math
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


def _mnist_idx_root(path: Path | None) -> Path:
    """The folder with the full MNIST idx files: ``path``, else the default MNIST source when it is idx files."""
    from ..data.mnist import resolve_mnist_source
    from ..evaluation import ClassifierError

    source = resolve_mnist_source(path)
    if source.kind != "idx":
        found = "the bundled 5,000-digit subset" if source.kind == "bundled" else f"MNIST PNG folders in {source.root}"
        raise ClassifierError(
            f"the digit classifier trains on the full MNIST idx files (60,000 train + 10,000 test digits), but only "
            f"{found} was found: pass --mnist PATH to a folder with train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (or set $DIFFSAT_DATA)"
        )
    return source.root


def _train_classifier(args: argparse.Namespace) -> int:
    from ..evaluation import default_classifier_path, train_classifier

    root = _mnist_idx_root(args.mnist)
    out = args.classifier or default_classifier_path()
    print(f"training the digit classifier on {root} ({args.epochs} epochs, seed {args.seed}) ...")
    start = time.perf_counter()
    _, accuracy = train_classifier(root, out, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    print(f"test accuracy {100 * accuracy:.2f} % on the 10,000 MNIST test digits, "
          f"{time.perf_counter() - start:.0f} s -> {out}")
    return 0


# ------------------------------------------------------------------------------------------ evaluation


def _load_real_sets(args: argparse.Namespace, channels: int, size: int):
    """(reference, train set or None) at the samples' ``channels`` and ``size``."""
    from ..evaluation.image_sets import load_real

    reference = load_real(args.reference, channels, size, args.reference_split, args.reference_limit, "--reference")
    train = None
    if args.train_set is not None:
        train = load_real(args.train_set, channels, size, args.train_split, args.train_limit, "--train-set",
                          training=True)
    return reference, train


def _extractors(args: argparse.Namespace, kind: str) -> tuple[object, object, dict]:
    """(classifier or None, inception or None, their description for the report)."""
    from ..evaluation import default_classifier_path, load_classifier
    from ..evaluation.classifier import classifier_metadata
    from ..evaluation.inception import load_inception

    info: dict = {}
    classifier = inception = None
    if kind == "digits":
        classifier = load_classifier(args.classifier)
        path = args.classifier or default_classifier_path()
        meta = classifier_metadata(path)
        info["classifier"] = {"path": str(path), "test_accuracy": float(meta.get("test_accuracy", "nan")),
                              "train_images_sha256": meta.get("train_images_sha256")}
    if args.inception is not None:
        inception = load_inception(args.inception)
        info["inception"] = {"path": str(args.inception)}
    return classifier, inception, info


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.compare import EvalSettings, evaluate, resolve_kind
    from ..evaluation.image_sets import load_samples

    samples = load_samples(args.samples, args.samples_limit, args.samples_split)
    kind = resolve_kind(args.kind, samples.channels)
    classifier, inception, info = _extractors(args, kind)  # before the real sets: a missing file fails fast
    reference, train = _load_real_sets(args, samples.channels, samples.size)
    settings = EvalSettings(kind=kind, seed=args.seed, kid_subsets=args.kid_subsets, progress=not args.no_progress)
    start = time.perf_counter()
    result = evaluate(samples, reference, train, classifier=classifier, inception=inception, settings=settings)
    report = {**result.to_dict(), "extractors": info, "seconds": round(time.perf_counter() - start, 1)}
    print(format_report(result, info))
    figure = _save_pairs_figure(args, samples, train, result.details)
    if figure is not None:
        print(f"closest sample/training pairs -> {figure}")
    if args.out is not None:
        from ..fileio import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"metrics -> {args.out}")
    return 0


def _save_pairs_figure(args: argparse.Namespace, samples, train, details: dict) -> Path | None:
    """The closest sample/training pairs figure (with a train set, at --pairs-figure or beside --out)."""
    from ..evaluation import save_closest_pairs_figure

    if train is None or (args.pairs_figure is None and args.out is None):
        return None
    path = args.pairs_figure or args.out.with_name(f"{args.out.stem}_closest_pairs.png")
    pairs = details["memorisation"]["samples"]["closest_pairs"]
    return save_closest_pairs_figure(samples.images, train.images, pairs, path)


def _number(value: float, error: float | None = None) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int) or (math.isfinite(value) and float(value).is_integer() and abs(value) < 1e6):
        text = str(int(value))
    else:
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
    return f"{text} ± {error:.2g}" if error is not None else text


def format_report(result, extractors: dict | None = None) -> str:
    """The printed table of an :class:`~diffsat.evaluation.compare.Evaluation`: the compared sets, then one row
    per metric (samples, real baseline, how to read it)."""
    sets, ref = result.sets, result.sets["reference"]
    lines = [
        f"samples:   {sets['samples']['source']}",
        f"reference: {ref['source']}: {ref['n_evaluation']} for evaluation, {ref['n_baseline']} as the real baseline",
    ]
    if sets.get("train"):
        lines.append(f"train set: {sets['train']['source']}")
    if extractors and "classifier" in extractors:
        c = extractors["classifier"]
        lines.append(f"classifier: {c['path']} (MNIST test accuracy {100 * c['test_accuracy']:.2f} %)")
    rows = [("metric", "samples", "real baseline", "better")]
    rows += [(m.label, _number(m.value, m.error), _number(m.baseline, m.baseline_error), m.better)
             for m in result.metrics]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines.append("")
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
        if i == 0:
            lines.append("-" * (sum(widths) + 6))
    if any(m.error is not None for m in result.metrics):
        st = result.settings
        lines.append(f"KID: mean ± standard deviation over {st.kid_subsets} random subsets of up to "
                     f"{st.kid_subset_size} images per set")
    return "\n".join(lines)
