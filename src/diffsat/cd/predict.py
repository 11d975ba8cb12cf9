"""Change prediction of a pair of any size, window by window, with memory bounded by the window.

Windows of side ``data.window`` (rounded up to the method's alignment) step by ``window - 2 * margin``
(:func:`diffsat.geo.windows.tiles`); each is read from the pair (from disk for a raster pair), predicted,
and only its inner part is handed on, so every pixel has ``margin`` pixels of context and a network whose
receptive field reaches no further than ``margin`` gives exactly its whole-image prediction. A pair smaller
than one window is read whole and padded by reflection. Change vector analysis (``method=None``) needs the
whole scene's histogram for Otsu's threshold: it reads the windows three times (range, histogram, masks).

The result goes to a ``write(region, mask, probability, valid)`` callback, so the caller decides what is
kept: arrays for PNG outputs, GeoTIFF windows for a scene, a confusion matrix for scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..geo.windows import pad_to, tiles
from .config import CDDataConfig
from .cva import change_magnitude, otsu_from_histogram
from .methods import Method
from .metrics import confusion
from .pairs import IGNORE, Pair

OTSU_BINS = 256


class WindowSource(Protocol):
    def window(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(before, after, valid)``: float32 ``(C, h, w)`` in [-1, 1] and bool ``(h, w)``."""


@dataclass(frozen=True)
class Region:
    """Rows ``y0:y1`` and columns ``x0:x1`` of the pair."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


Writer = Callable[[Region, np.ndarray, np.ndarray, np.ndarray], None]


def _padded(source: WindowSource, size: tuple[int, int], window: int) -> Pair:
    """A pair smaller than a window, read whole and padded by reflection to at least ``window`` a side."""
    (h, w), (ph, pw) = size, (max(size[0], window), max(size[1], window))
    before, after, valid = source.window(0, 0, h, w)
    pad = lambda a: pad_to(torch.from_numpy(np.ascontiguousarray(a)), ph, pw).numpy()  # noqa: E731
    return Pair("", pad(before), pad(after), None, Path(), pad(valid[None].astype(np.float32))[0] > 0.5)


def score_windows(method: Method | None, source: WindowSource, size: tuple[int, int], data: CDDataConfig
                  ) -> Iterator[tuple[Region, np.ndarray, np.ndarray]]:
    """``(region, score (h, w) float32, valid (h, w) bool)`` of each window's inner part: P(change) of a
    trained method, the change magnitude for CVA (``method=None``)."""
    height, width = size
    align = method.align if method is not None else 1
    window = -(-data.window // align) * align
    if height < window or width < window:
        source = _padded(source, size, window)
    full = (max(height, window), max(width, window))
    for t in tiles(*full, window, data.margin):
        region = Region(t.y0, min(t.y1, height), t.x0, min(t.x1, width))
        if region.y1 <= region.y0 or region.x1 <= region.x0:
            continue
        before, after, valid = source.window(t.y, t.x, window, window)
        keep = (slice(region.y0 - t.y, region.y1 - t.y), slice(region.x0 - t.x, region.x1 - t.x))
        if method is None:
            score = change_magnitude(before[(slice(None), *keep)], after[(slice(None), *keep)]).astype(np.float32)
        else:
            with torch.inference_mode():
                logits = method.window_logits(torch.from_numpy(before), torch.from_numpy(after), t.y, t.x)
            score = torch.softmax(logits.float(), dim=0)[1].numpy()[keep]
        yield region, score, valid[keep]


def predict(method: Method | None, source: WindowSource, size: tuple[int, int], data: CDDataConfig,
            write: Writer) -> None:
    """Call ``write(region, mask bool, probability float32 in [0, 1], valid bool)`` for every window's inner
    part of the ``size`` pair: a trained method's P(change) > 0.5, or CVA's magnitude over Otsu's threshold
    (probability: the magnitude over its maximum)."""
    if method is not None:
        method.net.eval()
        for region, score, valid in score_windows(method, source, size, data):
            write(region, score > 0.5, score, valid)
        return
    lo, hi = np.inf, -np.inf
    for _, score, valid in score_windows(None, source, size, data):
        if valid.any():
            lo, hi = min(lo, float(score[valid].min())), max(hi, float(score[valid].max()))
    if not np.isfinite(hi):  # every pixel nodata
        lo = hi = 0.0
    threshold = hi
    if hi > lo:
        counts = np.zeros(OTSU_BINS, dtype=np.int64)
        for _, score, valid in score_windows(None, source, size, data):
            counts += np.histogram(score[valid], bins=OTSU_BINS, range=(lo, hi))[0]
        threshold = otsu_from_histogram(counts, np.linspace(lo, hi, OTSU_BINS + 1))
    for region, score, valid in score_windows(None, source, size, data):
        write(region, score > threshold, score / hi if hi > 0 else score, valid)


class ArrayOutput:
    """Keeps the whole ``mask`` bool ``(H, W)``, ``probability`` float32 and ``valid`` bool in memory."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.mask = np.zeros(size, dtype=bool)
        self.probability = np.zeros(size, dtype=np.float32)
        self.valid = np.ones(size, dtype=bool)

    def __call__(self, region: Region, mask: np.ndarray, probability: np.ndarray, valid: np.ndarray) -> None:
        s = region.slices
        self.mask[s], self.probability[s], self.valid[s] = mask & valid, probability, valid


class ConfusionOutput:
    """The ``[[TN, FP], [FN, TP]]`` counts against ``label`` (uint8 ``(H, W)``, :data:`IGNORE` left out),
    over the valid pixels."""

    def __init__(self, label: np.ndarray) -> None:
        self.label = label
        self.cm = np.zeros((2, 2), dtype=np.int64)

    def __call__(self, region: Region, mask: np.ndarray, probability: np.ndarray, valid: np.ndarray) -> None:
        truth = self.label[region.slices]
        keep = valid & (truth != IGNORE)
        self.cm += confusion(mask[keep], truth[keep])


def fan_out(*writers: Writer) -> Writer:
    """One writer calling each of ``writers``."""
    def write(region: Region, mask: np.ndarray, probability: np.ndarray, valid: np.ndarray) -> None:
        for w in writers:
            w(region, mask, probability, valid)
    return write
