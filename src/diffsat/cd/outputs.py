"""What a prediction leaves on disk.

- 8-bit inputs (PNG, JPEG): masks as PNG 0/255 under the input's name, optional probability maps (PNG,
  P(change) x 255).
- Georeferenced inputs: the mask as a GeoTIFF with the input's CRS and transform (uint8 1 = change,
  0 = no change, :data:`MASK_NODATA` where a date is nodata), the probability map as a float32 GeoTIFF
  (nodata :data:`PROBABILITY_NODATA`), both written window by window (:class:`GeoOutput`), and the changed
  areas as GeoJSON polygons with their area and mean probability (:func:`diffsat.geo.write.write_polygons`).
- A figure per pair (small enough to draw): before | after | truth | prediction, RGB renderings of the
  dates, the prediction coloured by agreement with the truth (true positive white, false positive red,
  false negative blue, true negative black). Drawn with PIL alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write
from ..geo.raster import Grid
from ..geo.write import GeoTiffWriter
from .predict import Region

TP, FP, FN = (255, 255, 255), (230, 40, 40), (40, 90, 255)
GAP = 4
"""White pixels between the panels of a figure."""
MASK_NODATA = 255
PROBABILITY_NODATA = -1.0
FIGURE_PIXELS = 1 << 22
"""Pairs of more pixels than this get no figure (it would hold the whole scene in memory)."""


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
    true = truth == 1
    out[pred & true], out[pred & ~true], out[~pred & true] = TP, FP, FN
    return out


def pair_figure(before: np.ndarray, after: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray) -> np.ndarray:
    """``before``/``after`` RGB renderings uint8 ``(H, W, 3)``; masks ``(H, W)`` (truth in {0, 1}, other values
    shown grey) -> uint8 ``(H, n * W + gaps, 3)``, n = 4 panels (3 without a truth)."""
    panels = [before, after]
    if truth is not None:
        shown = np.where(truth > 1, 128, truth.astype(np.uint8) * 255).astype(np.uint8)
        panels.append(np.repeat(shown[..., None], 3, axis=2))
    panels.append(agreement_colours(prediction, truth))
    h = panels[0].shape[0]
    gap = np.full((h, GAP, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1)


class GeoOutput:
    """``with GeoOutput(mask_path, probability_path, grid) as out: out(region, mask, probability, valid)``:
    both GeoTIFFs written window by window on ``grid``."""

    def __init__(self, mask_path: Path, probability_path: Path, grid: Grid) -> None:
        self.mask = GeoTiffWriter(mask_path, grid, 1, "uint8", MASK_NODATA, ("change",))
        self.probability = GeoTiffWriter(probability_path, grid, 1, "float32", PROBABILITY_NODATA, ("P(change)",))

    def __enter__(self) -> "GeoOutput":
        self.mask.__enter__()
        try:
            self.probability.__enter__()
        except BaseException:
            self.mask.__exit__(RuntimeError, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.probability.__exit__(*exc)  # type: ignore[arg-type]
        finally:
            self.mask.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, region: Region, mask: np.ndarray, probability: np.ndarray, valid: np.ndarray) -> None:
        self.mask.write(np.where(valid, mask, MASK_NODATA).astype(np.uint8), region.y0, region.x0)
        self.probability.write(np.where(valid, probability, PROBABILITY_NODATA).astype(np.float32),
                               region.y0, region.x0)
