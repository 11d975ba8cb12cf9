"""Improved precision and recall on k-NN manifolds (Kynkaanniemi et al. 2019).

The manifold of a feature set is the union of balls around each point, with radius the distance to its
k-th nearest neighbour within the set (excluding itself). Precision = fraction of fake samples inside the
real manifold (quality); recall = fraction of real samples inside the fake manifold (coverage).
Pairwise distances are computed with ``torch.cdist`` in row chunks, so memory stays O(chunk * N).
"""

from __future__ import annotations

import numpy as np
import torch

from diffsat.evaluation.arrays import ArrayLike, as_cpu_tensor

DEFAULT_CHUNK = 2048


def _as_f32(x: ArrayLike) -> torch.Tensor:
    return as_cpu_tensor(x, torch.float32)


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Distance ``(N,)`` from each row of ``features`` ``(N, D)`` to its k-th nearest other row (N > k)."""
    if len(features) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} samples, got {len(features)}")
    radii = [torch.cdist(block, features).kthvalue(k + 1, dim=1).values for block in features.split(chunk)]
    return torch.cat(radii)  # k + 1: the zero distance of each point to itself comes first


def inside_manifold(
    queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Bool ``(Q,)``: whether each query ``(Q, D)`` lies within ``radii[j]`` of some ``points[j]`` ``(P, D)``."""
    hits = [(torch.cdist(block, points) <= radii[None, :]).any(dim=1) for block in queries.split(chunk)]
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def precision_recall(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3, chunk: int = DEFAULT_CHUNK
) -> tuple[float, float]:
    """``(precision, recall)``, each in ``[0, 1]``, of ``fake`` ``(M, D)`` against ``real`` ``(N, D)`` features.

    ``k``: the k-NN radius of each manifold ball; ``chunk``: rows per ``torch.cdist`` block.
    """
    r, f = _as_f32(real), _as_f32(fake)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(r.shape)} and {tuple(f.shape)}")
    precision = inside_manifold(f, r, knn_radii(r, k, chunk), chunk).float().mean()
    recall = inside_manifold(r, f, knn_radii(f, k, chunk), chunk).float().mean()
    return float(precision), float(recall)
