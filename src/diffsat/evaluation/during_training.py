"""Cheap sample-quality numbers to log while training (every ``train.eval_every`` steps).

:func:`make_training_evaluator` prepares, once, what the dataset side of the comparison needs, and returns a
function from a small batch of generated images (~100-200) to a flat ``{name: float}`` dict:

- digits (1 channel at 28 or 32 px) with the cached digit classifier: ``recognisable`` (fraction with
  confidence >= 0.9), ``classes_present`` (0-10), ``class_entropy`` (class spread, 1 = uniform) and
  ``fid_classifier`` (FID on the classifier's 128-d features against up to ``max_reference`` dataset images);
- other images of at least 16 px: ``swd`` (multi-scale SWD x1e3, mean over levels) against a fixed random
  subset of ``swd_reference`` dataset images, with fixed patch positions and directions.

With few samples these numbers are biased (FID from 100 samples is far above FID from 10,000): they are
meant for the trend over training, at a fixed sample count, not for comparison with published values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from diffsat.config import Config
from diffsat.data import ImageDataset
from diffsat.evaluation.classifier import (
    ClassifierError,
    DigitClassifier,
    digit_metrics,
    load_classifier,
)
from diffsat.evaluation.fid import feature_stats, frechet_distance
from diffsat.evaluation.swd import MIN_RESOLUTION, sliced_wasserstein_distance

TrainingEvaluator = Callable[[torch.Tensor], dict[str, float]]

DIGIT_SIZES = (28, 32)


def real_subset(dataset: ImageDataset, config: Config, n: int) -> torch.Tensor:
    """``min(n, N)`` dataset images (a permutation seeded with ``train.seed``, in dataset order) at the training
    scale (:meth:`ImageDataset.model_view`): float32 ``(n, C, S, S)`` in ``[-1, 1]``, ``S = data.image_size``.
    Only the chosen tiles are converted, so large datasets cost no extra memory."""
    seed = config.train.seed
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ImageDataset(dataset.tiles[index], None, dataset.source).model_view(config.data, seed)


def _check_batch(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != channels or tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"expected generated images (N, {channels}, {size}, {size}), got {tuple(images.shape)}")
    return images.detach().to("cpu", torch.float32)


def _digit_evaluator(classifier: DigitClassifier, real: torch.Tensor) -> TrainingEvaluator:
    mu, sigma = feature_stats(classifier.features(real))

    def evaluate(images: torch.Tensor) -> dict[str, float]:
        x = _check_batch(images, real.shape[1], real.shape[-1])
        m = digit_metrics(classifier.predict_proba(x))
        fid = math.nan
        if len(x) >= 2:
            try:
                fid = frechet_distance(*feature_stats(classifier.features(x)), mu, sigma)
            except ValueError:  # a degenerate sample covariance (e.g. collapsed samples) has no usable sqrtm
                pass
        return {"recognisable": m["recognisable"], "classes_present": float(m["classes_present"]),
                "class_entropy": m["class_entropy"], "fid_classifier": fid}

    return evaluate


def _swd_evaluator(reference: torch.Tensor, seed: int) -> TrainingEvaluator:
    def evaluate(images: torch.Tensor) -> dict[str, float]:
        x = _check_batch(images, reference.shape[1], reference.shape[-1])
        return {"swd": sliced_wasserstein_distance(x, reference, nhoods_per_image=64, seed=seed).mean}

    return evaluate


def make_training_evaluator(
    config: Config, dataset: ImageDataset, max_reference: int = 2000, swd_reference: int = 256
) -> TrainingEvaluator | None:
    """A function ``generated images (N, C, H, W) in [-1, 1] -> {name: float}`` for the training log, or None
    (with one warning) when no cheap metric fits: digits without a cached classifier, or images under 16 px.

    ``config``: the run config (``train.seed`` fixes the dataset subsets, patch positions and directions, so
    numbers over a run are comparable). ``dataset``: the training images, compared at the training scale
    (:meth:`ImageDataset.model_view`, ``config.data.image_size``). Costs a few seconds for ~200 samples.
    """
    seed, size = config.train.seed, config.data.image_size
    if dataset.channels == 1 and size in DIGIT_SIZES:
        try:
            classifier = load_classifier()
        except ClassifierError as err:
            warnings.warn(f"no digit-quality metrics while training: {err}", stacklevel=2)
            return None
        return _digit_evaluator(classifier, real_subset(dataset, config, max_reference))
    if size >= MIN_RESOLUTION:
        return _swd_evaluator(real_subset(dataset, config, swd_reference), seed)
    warnings.warn(f"no quality metrics while training: SWD needs images of at least {MIN_RESOLUTION} px, "
                  f"the model's are {size} px", stacklevel=2)
    return None
