"""Sliding-window prediction of a pair of any size, stitched back to the full image.

Windows of side ``window`` step by ``window - 2 * margin``; the last one in each direction is aligned to the
image's far edge. Each window contributes only its inner part (its ``margin`` border is dropped, except
along the image border), so every pixel is predicted with at least ``margin`` pixels of context, and a head
whose receptive field reaches no further than ``margin`` gives exactly its whole-image prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def window_starts(length: int, window: int, margin: int) -> list[int]:
    """Start offsets along one axis of ``length >= window``: 0, stride, ..., and ``length - window``."""
    stride = window - 2 * margin
    starts = list(range(0, length - window, stride)) + [length - window]
    return sorted(set(starts))


def kept_span(start: int, length: int, window: int, margin: int) -> tuple[int, int]:
    """``(first, stop)`` image coordinates a window at ``start`` writes."""
    first = start + (margin if start > 0 else 0)
    stop = start + window - (margin if start + window < length else 0)
    return first, stop


def pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., H, W)`` padded at the bottom / right to ``(..., height, width)`` by reflection (repeated when
    the image is too small to reflect once)."""
    while images.shape[-2] < height or images.shape[-1] < width:
        dh = min(height - images.shape[-2], images.shape[-2] - 1)
        dw = min(width - images.shape[-1], images.shape[-1] - 1)
        images = F.pad(images[None], (0, max(dw, 0), 0, max(dh, 0)), mode="reflect")[0]
    return images


def padded_size(height: int, width: int, window: int, align: int) -> tuple[int, int]:
    """At least ``window`` and a multiple of ``align`` in each direction."""
    def one(n: int) -> int:
        n = max(n, window)
        return -(-n // align) * align
    return one(height), one(width)


def stitch(predict: Callable[[int, int], torch.Tensor], height: int, width: int, window: int,
           margin: int) -> torch.Tensor:
    """Call ``predict(y, x) -> (K, window, window)`` for every window of a ``height x width`` image (both at
    least ``window``) and return the stitched ``(K, height, width)``."""
    out: torch.Tensor | None = None
    for y in window_starts(height, window, margin):
        y0, y1 = kept_span(y, height, window, margin)
        for x in window_starts(width, window, margin):
            x0, x1 = kept_span(x, width, window, margin)
            part = predict(y, x)
            if out is None:
                out = torch.empty((part.shape[0], height, width), dtype=part.dtype)
            out[:, y0:y1, x0:x1] = part[:, y0 - y : y1 - y, x0 - x : x1 - x]
    assert out is not None
    return out
