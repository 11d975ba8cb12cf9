"""RGB renderings of multi-band images for grids, figures and reports: three chosen bands, stretched."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RGB_NAMES = (("B04", "B03", "B02"), ("red", "green", "blue"))
"""Band names taken as red, green, blue, in order of preference (Sentinel-2, then descriptions)."""


def rgb_indices(names: Sequence[str]) -> tuple[int, int, int]:
    """Indices of the bands shown as red, green, blue: Sentinel-2 B04/B03/B02 or bands called red/green/blue
    when present, else the first three bands (one band: grey)."""
    lower = [n.lower() for n in names]
    for triple in RGB_NAMES:
        if all(t.lower() in lower for t in triple):
            return tuple(lower.index(t.lower()) for t in triple)  # type: ignore[return-value]
    return (0, 1, 2) if len(names) >= 3 else (0, 0, 0)


def render_rgb(x: np.ndarray, indices: tuple[int, int, int], valid: np.ndarray | None = None,
               stretch: tuple[float, float] | None = (2.0, 98.0)) -> np.ndarray:
    """``x`` float ``(C, H, W)`` in [-1, 1] -> uint8 ``(H, W, 3)``: the three bands, each stretched so its
    ``stretch`` percentiles (over the ``valid`` pixels) become 0 and 255, or mapped as ``(x + 1) * 127.5``
    with ``stretch=None`` (8-bit images, which need no stretch). Invalid pixels are black."""
    rgb = np.stack([x[i] for i in indices]).astype(np.float32)
    keep = np.ones(rgb.shape[1:], dtype=bool) if valid is None else valid
    if stretch is None or not keep.any():
        out = (rgb + 1.0) * 127.5
    else:
        lo, hi = np.percentile(rgb[:, keep], stretch, axis=1)
        out = (rgb - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None] * 255.0
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    out[~keep] = 0
    return out
