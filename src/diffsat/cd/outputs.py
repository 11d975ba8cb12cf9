"""What a prediction leaves on disk: masks (PNG 0/255 under the input's name), optional probability maps
(PNG, P(change) x 255) and a figure per pair: before | after | truth | prediction, the prediction coloured
by agreement with the truth (true positive white, false positive red, false negative blue, true negative
black). Drawn with PIL alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write

TP, FP, FN = (255, 255, 255), (230, 40, 40), (40, 90, 255)
GAP = 4
"""White pixels between the panels of a figure."""


def png_name(name: str) -> str:
    """The output file name of an input (its stem, ``.png``)."""
    return f"{Path(name).stem}.png"


def save_png(path: Path, array: np.ndarray) -> Path:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` written atomically as PNG."""
    return atomic_write(path, lambda p: Image.fromarray(array).save(p, format="PNG"))


def save_mask(path: Path, mask: np.ndarray) -> Path:
    """Boolean ``(H, W)`` as a 0/255 grey PNG."""
    return save_png(path, mask.astype(np.uint8) * 255)


def save_probability(path: Path, probability: np.ndarray) -> Path:
    """``(H, W)`` in [0, 1] as a grey PNG (0..255)."""
    return save_png(path, np.clip(np.rint(probability * 255), 0, 255).astype(np.uint8))


def agreement_colours(prediction: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """uint8 ``(H, W, 3)``: TP white, FP red, FN blue, TN black (without a truth: change white)."""
    out = np.zeros(prediction.shape + (3,), dtype=np.uint8)
    pred = prediction.astype(bool)
    if truth is None:
        out[pred] = TP
        return out
    true = truth.astype(bool)
    out[pred & true], out[pred & ~true], out[~pred & true] = TP, FP, FN
    return out


def pair_figure(before: np.ndarray, after: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray) -> np.ndarray:
    """``before``/``after`` uint8 ``(3, H, W)``; masks ``(H, W)`` -> uint8 ``(H, n * W + gaps, 3)``, n = 4
    panels (3 without a truth)."""
    panels = [before.transpose(1, 2, 0), after.transpose(1, 2, 0)]
    if truth is not None:
        panels.append(np.repeat((truth.astype(np.uint8) * 255)[..., None], 3, axis=2))
    panels.append(agreement_colours(prediction, truth))
    h = panels[0].shape[0]
    gap = np.full((h, GAP, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1)
