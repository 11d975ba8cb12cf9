"""Change vector analysis: the per-pixel magnitude of the band differences, thresholded by Otsu's method."""

from __future__ import annotations

import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape, float): the histogram bin edge (``bins`` equal bins from min
    to max) that maximises the between-class variance; values above it are the second class. Constant
    input returns that constant (nothing lies above it)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return hi
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return otsu_from_histogram(counts, edges)


def otsu_from_histogram(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold from a histogram (``counts`` ``(K,)``, ``edges`` ``(K + 1,)``, K >= 2): so a scene
    read window by window is thresholded as a whole."""
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = float(counts.sum()) - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (float((counts * centres).sum()) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def change_magnitude(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``||after - before||`` over the bands: ``(C, H, W)`` each (any numeric dtype) -> float64 ``(H, W)``."""
    diff = after.astype(np.float64) - before.astype(np.float64)
    return np.sqrt((diff**2).sum(axis=0))


def cva(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(change mask bool (H, W), magnitude scaled to [0, 1] (H, W))`` of one pair by CVA + Otsu."""
    magnitude = change_magnitude(before, after)
    mask = magnitude > otsu_threshold(magnitude)
    top = magnitude.max()
    return mask, magnitude / top if top > 0 else magnitude
