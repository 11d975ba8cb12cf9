"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

``k(x, y) = (x . y / d + 1) ** 3`` on ``d``-dimensional features, averaged over random subsets of both sets
(drawn without replacement within a subset, independently per subset). Unlike FID, the estimator is
unbiased, so it can be slightly negative when the two sets come from the same distribution.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffsat.evaluation.arrays import ArrayLike, as_cpu_tensor


def _as_f64(x: ArrayLike) -> torch.Tensor:
    return as_cpu_tensor(x, torch.float64)


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between ``x`` ``(m, d)`` and ``y`` ``(n, d)`` (m, n >= 2) with k = (x.y/d + 1)^3."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    sum_xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    sum_yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * kxy.mean())


def kid_subset_values(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unbiased MMD^2 ``(subsets,)`` float64 of ``subsets`` random subset pairs of ``(N1, D)`` and ``(N2, D)`` features.

    Each subset draws ``min(subset_size, N1, N2)`` rows (>= 2) of each set without replacement. Randomness comes
    from ``generator`` when given, else from a fresh generator seeded with ``seed``.
    """
    f1, f2 = _as_f64(features1), _as_f64(features2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N1, D) and (N2, D), got {tuple(f1.shape)} and {tuple(f2.shape)}")
    size = min(subset_size, len(f1), len(f2))
    if size < 2 or subsets < 1:
        raise ValueError(f"KID needs >= 2 samples per set and >= 1 subset (got {len(f1)}, {len(f2)}; {subsets})")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    values = torch.zeros(subsets, dtype=torch.float64)
    for i in range(subsets):
        x = f1[torch.randperm(len(f1), generator=gen)[:size]]
        values[i] = polynomial_mmd2(x, f2[torch.randperm(len(f2), generator=gen)[:size]])
    return values


def kernel_inception_distance(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID between feature sets ``(N1, D)`` and ``(N2, D)``: ``(mean, standard error)`` over ``subsets`` subsets
    (see :func:`kid_subset_values`).

    The standard error is ``std(mmd2 over subsets, ddof=1) / sqrt(subsets)`` (0 for a single subset). It treats
    the subsets as independent, which holds only when both sets are much larger than ``subset_size``; when a
    set is not (e.g. 1,000 samples and subsets of 1,000, so every subset holds the same samples) it understates
    the uncertainty, and the standard deviation over subsets (``diffsat evaluate`` reports it) is the honest
    error of the mean. Values are in feature units^3 scale; commonly reported x1e3.
    """
    values = kid_subset_values(features1, features2, subsets, subset_size, seed, generator)
    stderr = float(values.std(unbiased=True) / math.sqrt(subsets)) if subsets > 1 else 0.0
    return float(values.mean()), stderr
