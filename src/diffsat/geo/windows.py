"""Sliding windows over an image or a whole scene of any size, and their stitching.

Windows of side ``window`` step by ``window - 2 * margin``; the last one in each direction is aligned to the
image's far edge. Each window contributes only its inner part (its ``margin`` border is dropped, except
along the image border) and the inner parts partition the image, so every pixel is predicted once, with at
least ``margin`` pixels of context, and a head whose receptive field reaches no further than ``margin``
gives exactly its whole-image prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def window_starts(length: int, window: int, margin: int) -> list[int]:
    """Start offsets along one axis of ``length >= window``: 0, stride, ..., and ``length - window``."""
    stride = window - 2 * margin
    starts = list(range(0, length - window, stride)) + [length - window]
    return sorted(set(starts))


def kept_spans(length: int, window: int, margin: int) -> list[tuple[int, int, int]]:
    """``(start, first, stop)`` of each window along one axis: it covers ``start:start + window`` and writes
    ``first:stop``. The written spans partition ``0:length``; each ends ``margin`` short of its window's end
    (except at the far edge) and begins where the previous one ended, at least ``margin`` into its window."""
    out, first = [], 0
    for start in window_starts(length, window, margin):
        stop = length if start + window >= length else start + window - margin
        out.append((start, first, stop))
        first = stop
    return out


def pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., H, W)`` padded at the bottom / right to ``(..., height, width)`` by reflection (repeated when
    the image is too small to reflect once)."""
    while images.shape[-2] < height or images.shape[-1] < width:
        dh = min(height - images.shape[-2], images.shape[-2] - 1)
        dw = min(width - images.shape[-1], images.shape[-1] - 1)
        images = F.pad(images[None], (0, max(dw, 0), 0, max(dh, 0)), mode="reflect")[0]
    return images


@dataclass(frozen=True)
class Tile:
    """One window: top-left ``(y, x)`` and side ``size``; it writes rows ``y0:y1`` and columns ``x0:x1`` of
    the image (its inner part)."""

    y: int
    x: int
    size: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def kept(self) -> tuple[slice, slice]:
        """The kept part in the window's own coordinates."""
        return slice(self.y0 - self.y, self.y1 - self.y), slice(self.x0 - self.x, self.x1 - self.x)


def tiles(height: int, width: int, window: int, margin: int) -> list[Tile]:
    """Every window of a ``height x width`` image (both at least ``window``), row by row; their kept parts
    cover each pixel exactly once."""
    return [Tile(y, x, window, y0, y1, x0, x1) for y, y0, y1 in kept_spans(height, window, margin)
            for x, x0, x1 in kept_spans(width, window, margin)]


def stitch(predict: Callable[[int, int], torch.Tensor], height: int, width: int, window: int,
           margin: int) -> torch.Tensor:
    """Call ``predict(y, x) -> (K, window, window)`` for every window of a ``height x width`` image (both at
    least ``window``) and return the stitched ``(K, height, width)``."""
    out: torch.Tensor | None = None
    for t in tiles(height, width, window, margin):
        part = predict(t.y, t.x)
        if out is None:
            out = torch.empty((part.shape[0], height, width), dtype=part.dtype)
        out[:, t.y0 : t.y1, t.x0 : t.x1] = part[(slice(None), *t.kept)]
    assert out is not None
    return out
