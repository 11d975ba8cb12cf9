"""The three jobs of ``diffsat cd``: train a run (the method and its baselines, scored on the test split),
predict pairs with a trained run, and score a folder of predicted masks against labels.

A run directory (``diffsat cd train CONFIG --out RUN``)::

    RUN/config.json, checkpoints/, model.safetensors, best.safetensors, metrics.csv, loss.png  (the method)
    RUN/features/<sha256>.safetensors     cached backbone features (ddpmcd)
    RUN/baselines/<name>/...              each baseline of head.compare, trained the same way
    RUN/normalisation.json                the band normalisation made from the training pairs
    RUN/test/ and RUN/baselines/<name>/test/   test-split masks, figures/ (before | after | truth | prediction)
    RUN/test_metrics.json                 every method's test scores (one confusion matrix), per-pair F1
    RUN/report.html
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    NORMALISATION_FILE,
    STATE_FILE,
    committed_checkpoints,
)
from ..data.bands import make_normalisation
from ..rundir.bands import load_run_normalisation, save_run_normalisation
from ..geo.normalise import BandNormalisation
from ..geo.render import render_rgb, rgb_indices
from ..geo.write import write_polygons
from .config import CDConfig, CDDataConfig, PairSource, load_cd_config, save_cd_config
from .methods import Method, build_method
from .metrics import Accumulator
from .outputs import FIGURE_PIXELS, GeoOutput, pair_figure, png_name, save_mask, save_png, save_probability
from .pairs import IGNORE, PairInput, check_bands, load_pairs, read_label
from .predict import ArrayOutput, ConfusionOutput, fan_out, predict
from .train import load_best, train_head


def method_dir(run_dir: Path, cfg: CDConfig, name: str) -> Path:
    """Where method ``name`` of a run lives: the run itself for ``head.kind``, else ``baselines/<name>``."""
    return run_dir if name == cfg.head.kind else run_dir / CD_BASELINES_DIR / name


@dataclass(frozen=True)
class OutputOptions:
    """What a prediction writes beside the masks: probability maps (PNG inputs; georeferenced inputs always
    get theirs, the polygons need it), figures, GeoJSON polygons (georeferenced inputs), in EPSG:4326."""

    probabilities: bool = False
    figures: bool = True
    polygons: bool = True
    wgs84: bool = False


def predict_one(method: Method | None, pair: PairInput, norm: BandNormalisation, data: CDDataConfig, out: Path,
                options: OutputOptions) -> np.ndarray | None:
    """Predict one pair into ``out`` (see :mod:`diffsat.cd.outputs`); returns its confusion matrix when it has
    a label. A georeferenced pair is read and written window by window."""
    stem = Path(png_name(pair.name)).stem
    h, w = pair.size
    kept = ArrayOutput(pair.size) if pair.grid is None or (options.figures and h * w <= FIGURE_PIXELS) else None
    scored = ConfusionOutput(pair.label) if pair.label is not None else None
    writers = [wr for wr in (kept, scored) if wr is not None]
    with pair.windows(norm) as reader:
        if pair.grid is not None:
            mask_path, prob_path = out / f"{stem}.tif", out / "probability" / f"{stem}.tif"
            with GeoOutput(mask_path, prob_path, pair.grid) as geo:
                predict(method, reader, pair.size, data, fan_out(geo, *writers))
            if options.polygons:
                write_polygons(out / f"{stem}.geojson", mask_path, prob_path, options.wgs84)
        else:
            predict(method, reader, pair.size, data, fan_out(*writers))
            save_mask(out / f"{stem}.png", kept.mask)
            if options.probabilities:
                save_probability(out / "probability" / f"{stem}.png", kept.probability)
        if options.figures and kept is not None:
            before, after, valid = reader.window(0, 0, h, w)
            stretch = None if norm.method == "fixed" and pair.eight_bit else (2.0, 98.0)
            rgb = rgb_indices(norm.names)
            figure = pair_figure(render_rgb(before, rgb, valid, stretch), render_rgb(after, rgb, valid, stretch),
                                 pair.label, kept.mask)
            save_png(out / CD_FIGURES_DIR / f"{stem}.png", figure)
    return scored.cm if scored is not None else None


def predict_to_dir(method: Method | None, pairs: list[PairInput], norm: BandNormalisation, data: CDDataConfig,
                   out: Path, options: OutputOptions = OutputOptions(), progress: bool = True,
                   what: str = "predicting") -> dict | None:
    """Every pair predicted into ``out`` (:func:`predict_one`); with labels on every pair, the scores
    (:meth:`Accumulator.result`), else ``None``. ``method=None`` is CVA."""
    names = [Path(png_name(p.name)).stem for p in pairs]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two input pairs are both named {dup}; their masks would overwrite each other: "
                        "predict the folders one at a time")
    for pair in pairs:
        check_bands(norm, pair)
    scored = all(p.label is not None for p in pairs)
    acc = Accumulator()
    for pair in tqdm(pairs, desc=what, disable=not progress):
        cm = predict_one(method, pair, norm, data, out, options)
        if cm is not None:
            acc.add_counts(pair.name, cm)
    return acc.result() if scored else None


def has_training(folder: Path) -> bool:
    """Whether ``folder`` holds a trained head: committed checkpoints, or the older layout's train state."""
    return bool(committed_checkpoints(folder)) or (folder / STATE_FILE).is_file()


def _inputs(sources: tuple[PairSource, ...], data: CDDataConfig, what: str) -> list[PairInput]:
    return load_pairs(sources, need_labels=True, what=what, bands=data.bands).pairs if sources else []


def train_cd(cfg: CDConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg``'s method and baselines into ``run_dir``, score them on the test split, write
    ``test_metrics.json`` and ``report.html``; returns the metrics document. A config with ``data.folds`` is
    :func:`diffsat.cd.folds.cross_validate`'s."""
    if cfg.data.folds:
        raise DataError("the config sets data.folds: train it with diffsat.cd.cross_validate (as `diffsat cd "
                        "train` does), one run per fold")
    train_inputs = _inputs(cfg.data.train, cfg.data, "training pairs")
    val_inputs, test = _inputs(cfg.data.val, cfg.data, "validation pairs"), _inputs(cfg.data.test, cfg.data, "test pairs")
    return train_split(cfg, run_dir, train_inputs, val_inputs, test, resume, progress)


def train_split(cfg: CDConfig, run_dir: str | Path, train_inputs: list[PairInput], val_inputs: list[PairInput],
                test: list[PairInput], resume: bool = False, progress: bool = True,
                features_dir: Path | None = None) -> dict:
    """:func:`train_cd` on pairs already opened (``cfg.data``'s splits, which ``config.json`` records);
    ``features_dir``: where backbone features are cached (default ``RUN/features``)."""
    from .report import write_cd_report

    run_dir = Path(run_dir)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not resume and has_training(run_dir):
        raise DataError(f"{run_dir}: already holds a trained run; continue it with --resume or choose another --out")
    if not train_inputs:
        raise DataError("data.train lists no pair source: a change-detection run needs training pairs")
    if resume and (run_dir / NORMALISATION_FILE).is_file():  # the map the run began with
        norm = load_run_normalisation(run_dir)
    else:
        norm = make_normalisation(cfg.data.normalisation, [im for p in train_inputs for im in (p.before, p.after)],
                                  progress)
    for pair in train_inputs + val_inputs + test:
        check_bands(norm, pair)
    train, val = [p.load(norm) for p in train_inputs], [p.load(norm) for p in val_inputs]
    run_dir.mkdir(parents=True, exist_ok=True)
    save_cd_config(cfg, run_dir / CONFIG_FILE)
    save_run_normalisation(norm, run_dir)
    doc = {"split": {"train": [p.name for p in train], "val": [p.name for p in val], "test": [p.name for p in test]},
           "bands": list(norm.names), "normalisation": norm.detail, "methods": {}}
    for name in (cfg.head.kind, *cfg.head.compare):
        folder = method_dir(run_dir, cfg, name)
        method, training = None, None
        if name != "cva":
            method = build_method(name, cfg, features_dir or run_dir / CD_FEATURES_DIR, norm.channels)
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
            result = predict_to_dir(method, test, norm, cfg.data, folder / CD_TEST_DIR, progress=progress,
                                    what=f"{name}: test pairs")
            doc["methods"][name] = {**(result or {}), "training": training}
    atomic_write_text(run_dir / CD_TEST_METRICS_FILE, json.dumps(doc, indent=2) + "\n")
    write_cd_report(run_dir)
    return doc


def predict_run(run_dir: str | Path, pairs_root: str | Path, out: str | Path, list_name: str | None = None,
                method_name: str | None = None, options: OutputOptions = OutputOptions(), last: bool = False,
                progress: bool = True, names: tuple[str, ...] | None = None, window: int | None = None,
                margin: int | None = None) -> tuple[int, dict | None]:
    """Predict every pair under ``pairs_root`` (labels optional; ``names``: only these pairs or OSCD cities)
    with a trained run; returns ``(pairs predicted, scores when every pair has a label)``. ``window`` /
    ``margin`` replace the run's ``data.window`` / ``data.margin`` (a larger window: fewer, overlapping
    windows per scene, more memory)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise DataError(f"{run_dir}: not a change-detection run directory (no config.json); give the --out of "
                        "`diffsat cd train`")
    sizes = {"window": window, "margin": margin}
    cfg = load_cd_config(run_dir, [f"data.{k}={v}" for k, v in sizes.items() if v is not None])
    if cfg.data.folds:
        tests = "; ".join(f"folds/{k} scores {', '.join(f.test)}" for k, f in enumerate(cfg.data.folds))
        raise DataError(f"{run_dir}: a cross-validation run, one model per fold: predict with one of its folds "
                        f"({tests})")
    name = method_name or cfg.head.kind
    if name not in (cfg.head.kind, *cfg.head.compare):
        raise DataError(f"{run_dir}: holds no method '{name}' (it trained {', '.join((cfg.head.kind, *cfg.head.compare))})")
    norm = load_run_normalisation(run_dir, default_names=("red", "green", "blue"))
    source = PairSource(root=str(pairs_root), list=list_name, names=names)
    pair_set = load_pairs([source], need_labels=False, what="pairs", bands=cfg.data.bands)
    method = None
    if name != "cva":
        method = build_method(name, cfg, None, norm.channels)
        load_best(method, method_dir(run_dir, cfg, name), last=last)
    result = predict_to_dir(method, pair_set.pairs, norm, cfg.data, Path(out), options, progress)
    return len(pair_set.pairs), result


def _label_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def evaluate_masks(pred_dir: str | Path, labels: str | Path) -> dict:
    """Scores of the masks in ``pred_dir`` (0/255 PNGs or GeoTIFF masks, named as the inputs) against
    ``labels`` (a folder of change masks, or a pair folder holding ``label/``), matched by file stem; one
    confusion matrix over the pixels valid in both."""
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
        keep = (pred != IGNORE) & (truth != IGNORE)
        acc.add(path.name, pred[keep], truth[keep])
    unused = len(set(truths) - set(predictions))
    if unused:
        warnings.warn(f"{labels}: {unused} label(s) without a prediction, not scored", stacklevel=2)
    return {**acc.result(), "predictions": str(pred_dir), "labels": str(labels)}


def summary_line(name: str, result: dict) -> str:
    """E.g. ``ddpmcd: change-F1 0.812, IoU 0.683, OA 0.951, kappa 0.78 (7 pairs)``."""
    return (f"{name}: change-F1 {result['f1']:.3f}, IoU {result['iou']:.3f}, OA {result['oa']:.3f}, "
            f"kappa {result['kappa']:.3f} ({result['pairs']} pairs)")
