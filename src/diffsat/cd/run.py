"""The three jobs of ``diffsat cd``: train a run (the method and its baselines, scored on the test split),
predict pairs with a trained run, and score a folder of predicted masks against labels.

A run directory (``diffsat cd train CONFIG --out RUN``)::

    RUN/config.json, checkpoints/, model.safetensors, best.safetensors, metrics.csv, loss.png  (the method)
    RUN/features/<sha256>.safetensors     cached backbone features (ddpmcd)
    RUN/baselines/<name>/...              each baseline of head.compare, trained the same way
    RUN/test/ and RUN/baselines/<name>/test/   test-split masks, figures/ (before | after | truth | prediction)
    RUN/test_metrics.json                 every method's test scores (one confusion matrix), per-pair F1
    RUN/report.html
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.dataset import DataError
from ..data.folder import IMAGE_SUFFIXES
from ..data.tiles import DECODE_ERRORS
from ..fileio import atomic_write_text
from ..rundir import (
    CD_BASELINES_DIR,
    CD_FEATURES_DIR,
    CD_FIGURES_DIR,
    CD_TEST_DIR,
    CD_TEST_METRICS_FILE,
    CONFIG_FILE,
    STATE_FILE,
    committed_checkpoints,
)
from .config import CDConfig, PairSource, load_cd_config, save_cd_config
from .methods import Method, build_method, predict_pair
from .metrics import Accumulator
from .outputs import pair_figure, png_name, save_mask, save_png, save_probability
from .pairs import Pair, load_pairs, read_label
from .train import load_best, train_head


def method_dir(run_dir: Path, cfg: CDConfig, name: str) -> Path:
    """Where method ``name`` of a run lives: the run itself for ``head.kind``, else ``baselines/<name>``."""
    return run_dir if name == cfg.head.kind else run_dir / CD_BASELINES_DIR / name


def predict_to_dir(method: Method | None, pairs: list[Pair], out: Path, probabilities: bool = False,
                   figures: bool = True, progress: bool = True, what: str = "predicting") -> dict | None:
    """Masks ``out/<name>.png`` (0/255), optional ``out/probability/``, ``out/figures/``; with labels on every
    pair, the scores (:meth:`Accumulator.result`), else ``None``. ``method=None`` is CVA."""
    names = [png_name(p.name) for p in pairs]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two input pairs are both named {dup}; their masks would overwrite each other: "
                        "predict the folders one at a time")
    scored = all(p.label is not None for p in pairs)
    acc = Accumulator()
    for pair, name in tqdm(list(zip(pairs, names)), desc=what, disable=not progress):
        mask, prob = predict_pair(method, pair)
        save_mask(out / name, mask)
        if probabilities:
            save_probability(out / "probability" / name, prob)
        if figures:
            save_png(out / CD_FIGURES_DIR / name, pair_figure(pair.before, pair.after, pair.label, mask))
        if scored:
            acc.add(pair.name, mask, pair.label)
    return acc.result() if scored else None


def has_training(folder: Path) -> bool:
    """Whether ``folder`` holds a trained head: committed checkpoints, or the older layout's train state."""
    return bool(committed_checkpoints(folder)) or (folder / STATE_FILE).is_file()


def _load_split(sources: tuple[PairSource, ...], what: str) -> list[Pair]:
    return load_pairs(sources, need_labels=True, what=what).pairs if sources else []


def train_cd(cfg: CDConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg``'s method and baselines into ``run_dir``, score them on the test split, write
    ``test_metrics.json`` and ``report.html``; returns the metrics document."""
    from .report import write_cd_report

    run_dir = Path(run_dir)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not resume and has_training(run_dir):
        raise DataError(f"{run_dir}: already holds a trained run; continue it with --resume or choose another --out")
    train = _load_split(cfg.data.train, "training pairs")
    if not train:
        raise DataError("data.train lists no pair source: a change-detection run needs training pairs")
    val, test = _load_split(cfg.data.val, "validation pairs"), _load_split(cfg.data.test, "test pairs")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_cd_config(cfg, run_dir / CONFIG_FILE)
    doc = {"split": {"train": [p.name for p in train], "val": [p.name for p in val], "test": [p.name for p in test]},
           "methods": {}}
    for name in (cfg.head.kind, *cfg.head.compare):
        folder = method_dir(run_dir, cfg, name)
        method, training = None, None
        if name != "cva":
            method = build_method(name, cfg, run_dir / CD_FEATURES_DIR)
            save_cd_config(cfg, folder / CONFIG_FILE)
            again = resume and has_training(folder)
            if again and not committed_checkpoints(folder):
                raise DataError(f"{folder}: trained by an earlier diffsat ({STATE_FILE} beside the weights, no "
                                "checkpoints/): `diffsat cd predict` reads it as it is; to train on, train into "
                                "another --out")
            summary = train_head(method, folder, train, val, resume=again, progress=progress)
            training = dataclasses.asdict(summary)
            load_best(method, folder)
        if test:
            result = predict_to_dir(method, test, folder / CD_TEST_DIR, progress=progress, what=f"{name}: test pairs")
            doc["methods"][name] = {**(result or {}), "training": training}
    atomic_write_text(run_dir / CD_TEST_METRICS_FILE, json.dumps(doc, indent=2) + "\n")
    write_cd_report(run_dir)
    return doc


def predict_run(run_dir: str | Path, pairs_root: str | Path, out: str | Path, list_name: str | None = None,
                method_name: str | None = None, probabilities: bool = False, figures: bool = True,
                last: bool = False, progress: bool = True) -> tuple[int, dict | None]:
    """Predict every pair under ``pairs_root`` (labels optional) with a trained run; returns
    ``(pairs predicted, scores when every pair has a label)``."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise DataError(f"{run_dir}: not a change-detection run directory (no config.json); give the --out of "
                        "`diffsat cd train`")
    cfg = load_cd_config(run_dir)
    name = method_name or cfg.head.kind
    if name not in (cfg.head.kind, *cfg.head.compare):
        raise DataError(f"{run_dir}: holds no method '{name}' (it trained {', '.join((cfg.head.kind, *cfg.head.compare))})")
    method = None
    if name != "cva":
        method = build_method(name, cfg, None)
        load_best(method, method_dir(run_dir, cfg, name), last=last)
    pair_set = load_pairs([PairSource(root=str(pairs_root), list=list_name)], need_labels=False, what="pairs")
    result = predict_to_dir(method, pair_set.pairs, Path(out), probabilities, figures, progress)
    return len(pair_set.pairs), result


def _label_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def evaluate_masks(pred_dir: str | Path, labels: str | Path) -> dict:
    """Scores of the masks in ``pred_dir`` (0/255 PNGs named as the inputs) against ``labels`` (a folder of
    change masks, or a pair folder holding ``label/``), matched by file stem; one confusion matrix."""
    pred_dir, labels = Path(pred_dir), Path(labels)
    for folder, what in ((pred_dir, "prediction"), (labels, "label")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found")
    if (labels / "label").is_dir():
        labels = labels / "label"
    predictions, truths = _label_files(pred_dir), _label_files(labels)
    if not predictions:
        raise DataError(f"{pred_dir}: no mask images to evaluate")
    acc = Accumulator()
    for stem, path in predictions.items():
        if stem not in truths:
            raise DataError(f"{path}: no label named {stem}.* in {labels}; evaluate against the pairs' label folder")
        try:
            pred, truth = read_label(path), read_label(truths[stem])
        except DECODE_ERRORS as err:
            raise DataError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
        if pred.shape != truth.shape:
            raise DataError(f"{path}: {pred.shape[1]}x{pred.shape[0]} but its label is {truth.shape[1]}x{truth.shape[0]}")
        acc.add(path.name, pred, truth)
    unused = len(set(truths) - set(predictions))
    if unused:
        warnings.warn(f"{labels}: {unused} label(s) without a prediction, not scored", stacklevel=2)
    return {**acc.result(), "predictions": str(pred_dir), "labels": str(labels)}


def summary_line(name: str, result: dict) -> str:
    """E.g. ``ddpmcd: change-F1 0.812, IoU 0.683, OA 0.951, kappa 0.78 (7 pairs)``."""
    return (f"{name}: change-F1 {result['f1']:.3f}, IoU {result['iou']:.3f}, OA {result['oa']:.3f}, "
            f"kappa {result['kappa']:.3f} ({result['pairs']} pairs)")
