"""Change-detection scores from one confusion matrix accumulated over a whole split (as BIT / DDPM-CD).

The matrix is ``[[TN, FP], [FN, TP]]`` (rows: truth no change / change; columns: prediction), int64.
A ratio whose denominator is zero (no predicted or no true change) is 0.
"""

from __future__ import annotations

import numpy as np


def confusion(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(2, 2)`` int64 counts for masks of one shape (nonzero = change)."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    p, t = (prediction > 0).ravel(), (truth > 0).ravel()
    return np.bincount(2 * t.astype(np.int64) + p, minlength=4).reshape(2, 2)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def class_scores(cm: np.ndarray, cls: int) -> tuple[float, float, float, float]:
    """``(precision, recall, F1, IoU)`` of class ``cls`` (1 = change, 0 = no change)."""
    tp = cm[cls, cls]
    fp, fn = cm[1 - cls, cls], cm[cls, 1 - cls]
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return precision, recall, _ratio(2 * precision * recall, precision + recall), _ratio(tp, tp + fp + fn)


def kappa(cm: np.ndarray) -> float:
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)``; 1 when chance agreement is total and so is agreement."""
    n = cm.sum()
    if n == 0:
        return 0.0
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / float(n) ** 2
    return 1.0 if pe == 1.0 and po == 1.0 else _ratio(po - pe, 1.0 - pe)


def scores(cm: np.ndarray) -> dict[str, float]:
    """Change precision, recall, F1, IoU; overall accuracy; kappa; mean F1 / IoU of the two classes."""
    precision, recall, f1, iou = class_scores(cm, 1)
    _, _, f1_0, iou_0 = class_scores(cm, 0)
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou,
            "oa": _ratio(np.trace(cm), cm.sum()), "kappa": kappa(cm),
            "mean_f1": (f1 + f1_0) / 2, "mean_iou": (iou + iou_0) / 2, **counts(cm)}


def counts(cm: np.ndarray) -> dict[str, int]:
    """``{"tn", "fp", "fn", "tp"}`` of a ``(2, 2)`` matrix."""
    return {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])}


def from_counts(row: dict) -> np.ndarray:
    """The ``(2, 2)`` int64 matrix of a :func:`counts` dict (or any dict holding its keys)."""
    return np.array([[row["tn"], row["fp"]], [row["fn"], row["tp"]]], dtype=np.int64)


class Accumulator:
    """One confusion matrix over a split, and each image's change-F1 and counts."""

    def __init__(self) -> None:
        self.cm = np.zeros((2, 2), dtype=np.int64)
        self.per_image: dict[str, float] = {}
        self.per_image_counts: dict[str, dict[str, int]] = {}

    def add(self, name: str, prediction: np.ndarray, truth: np.ndarray) -> None:
        self.add_counts(name, confusion(prediction, truth))

    def add_counts(self, name: str, cm: np.ndarray) -> None:
        """One image's ``(2, 2)`` confusion matrix."""
        self.cm += cm
        self.per_image[name] = class_scores(cm, 1)[2]
        self.per_image_counts[name] = counts(cm)

    def result(self) -> dict:
        """:func:`scores` of the whole matrix, ``pairs``, ``per_image_f1`` and ``per_image`` (each pair's
        change-F1 with its counts: they sum to the whole matrix)."""
        per_image = {n: {"f1": self.per_image[n], **c} for n, c in self.per_image_counts.items()}
        return {**scores(self.cm), "pairs": len(self.per_image), "per_image_f1": dict(self.per_image),
                "per_image": per_image}
