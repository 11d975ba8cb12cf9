"""Frechet distance between Gaussians fitted to feature sets (FID, Heusel et al. 2017).

Computed as in pytorch-fid: float64, ``scipy.linalg.sqrtm`` of ``sigma1 @ sigma2``, an ``eps * I`` offset on
both covariances when that product is singular (non-finite square root), and small imaginary parts from
numerical error discarded. The features can come from any extractor (e.g. the digit classifier's 128-d
features); FID values are only comparable between runs that use the same extractor and sample counts.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from diffsat.evaluation.arrays import ArrayLike, as_cpu_tensor


def _as_f64(x: ArrayLike) -> np.ndarray:
    return as_cpu_tensor(x, torch.float64).numpy()


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` with its singular-matrix warning silenced (the caller checks the result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``features`` ``(N, D)``, N >= 2."""
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6
) -> float:
    """Frechet distance ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between N(mu1, S1) and N(mu2, S2).

    ``mu*``: ``(D,)``; ``sigma*``: ``(D, D)`` symmetric PSD. Returns a float >= 0 (up to rounding).
    Raises ``ValueError`` on shape mismatch or when the square root has a significant imaginary part.
    """
    mu1, mu2 = np.atleast_1d(_as_f64(mu1)), np.atleast_1d(_as_f64(mu2))
    s1, s2 = np.atleast_2d(_as_f64(sigma1)), np.atleast_2d(_as_f64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular product of covariances; adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in the matrix square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """FID between two feature sets ``(N1, D)`` and ``(N2, D)`` (Gaussian fits by :func:`feature_stats`)."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))
