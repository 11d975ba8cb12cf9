"""Per-band normalisation of raster values to the model range [-1, 1], and its inverse.

Each band ``c`` maps by ``x = clip((v - offset[c]) * scale[c], -1, 1)`` and back by ``v = x / scale[c] +
offset[c]`` (exact inside the range; values the clip cut come back at the range's ends). Nodata pixels map to
0 and are masked out of losses and metrics by the validity mask that travels with them. The map is made from
statistics of the training data (:func:`compute_normalisation`) or fixed (:func:`fixed_normalisation`, e.g.
Sentinel-2 L1C reflectance ``1 / 10000``; :func:`uint8_normalisation` for 8-bit images, ``v / 127.5 - 1``),
and it is stored in a run as JSON so prediction applies exactly the map training used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from diffsat.geo.raster import BandStack, RasterError
from diffsat.progress import progress_bar

Method = Literal["percentile", "meanstd", "fixed"]
STATS_PIXELS = 1 << 22
"""At most this many pixels (of all images together) are read, on decimated grids, for the statistics."""


@dataclass(frozen=True)
class BandNormalisation:
    """``names``, ``offset`` and ``scale`` per band (see the module docstring); ``method`` and ``detail`` say
    how they were made."""

    method: str
    names: tuple[str, ...]
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    detail: str = ""

    @property
    def channels(self) -> int:
        return len(self.names)

    def apply(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """``values`` float ``(C, h, w)`` in file units -> float32 ``(C, h, w)`` in [-1, 1]; 0 where
        ``valid`` (bool ``(h, w)``) is False."""
        offset, scale = self._column(self.offset), self._column(self.scale)
        x = np.clip((values.astype(np.float32) - offset) * scale, -1.0, 1.0)
        if valid is not None:
            x[:, ~valid] = 0.0
        return x

    def invert(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``(C, h, w)`` in [-1, 1] -> float32 values in file units."""
        return (x.astype(np.float32) / self._column(self.scale) + self._column(self.offset)).astype(np.float32)

    def _column(self, values: tuple[float, ...]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)[:, None, None]

    def check_bands(self, names: Sequence[str], where: str) -> None:
        """A :class:`RasterError` naming ``where`` unless its bands are this map's bands, in order."""
        if tuple(names) != self.names:
            raise RasterError(f"{where}: bands {', '.join(names)} but the run was trained on {len(self.names)} "
                              f"band(s) {', '.join(self.names)}; give inputs with the run's bands (or set its bands)")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "names": list(self.names), "offset": list(self.offset),
                "scale": list(self.scale), "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "BandNormalisation":
        try:
            norm = cls(str(data["method"]), tuple(str(n) for n in data["names"]),
                       tuple(float(v) for v in data["offset"]), tuple(float(v) for v in data["scale"]),
                       str(data.get("detail", "")))
        except (KeyError, TypeError, ValueError):
            raise RasterError(f"{where}: not a band normalisation (method, names, offset, scale); the run is "
                              "damaged: train it again") from None
        if not len(norm.names) == len(norm.offset) == len(norm.scale) or not all(s != 0 for s in norm.scale):
            raise RasterError(f"{where}: the band normalisation's lists differ in length or hold a zero scale")
        return norm


def fixed_normalisation(names: Sequence[str], scale: float | Sequence[float], offset: float | Sequence[float],
                        detail: str = "") -> BandNormalisation:
    """``x = (v - offset) * scale`` per band (one value for every band, or one per band)."""
    n = len(names)
    scales = tuple(float(v) for v in (scale if isinstance(scale, Sequence) else [scale] * n))
    offsets = tuple(float(v) for v in (offset if isinstance(offset, Sequence) else [offset] * n))
    if len(scales) != n or len(offsets) != n:
        raise RasterError(f"a fixed normalisation of {n} bands needs 1 or {n} scale and offset values")
    return BandNormalisation("fixed", tuple(names), offsets, scales, detail or f"scale {scale}, offset {offset}")


def uint8_normalisation(names: Sequence[str]) -> BandNormalisation:
    """8-bit images: ``v / 127.5 - 1`` (0 -> -1, 255 -> 1), as diffsat reads PNG and JPEG files."""
    return fixed_normalisation(names, 1 / 127.5, 127.5, "8-bit: v / 127.5 - 1")


def from_samples(names: Sequence[str], samples: np.ndarray, method: Method, percentiles: tuple[float, float],
                 std_range: float, detail: str) -> BandNormalisation:
    """The map of ``samples`` float ``(C, N)`` (valid pixels): ``percentile`` sends the ``percentiles`` to
    -1 and 1; ``meanstd`` sends mean -/+ ``std_range`` standard deviations to -1 and 1."""
    if samples.shape[1] == 0:
        raise RasterError(f"{detail}: no valid pixel to compute band statistics from (all nodata); check the "
                          "rasters' nodata value or choose other images")
    x = samples.astype(np.float64)
    if method == "percentile":
        lo, hi = np.percentile(x, percentiles, axis=1)
        centre, half = (lo + hi) / 2, (hi - lo) / 2
    elif method == "meanstd":
        centre, half = x.mean(axis=1), std_range * x.std(axis=1)
    else:
        raise RasterError(f"band statistics: unknown method '{method}' (percentile, meanstd or fixed)")
    flat = [names[c] for c in range(len(names)) if half[c] <= 0]
    if flat:
        warnings.warn(f"{detail}: band(s) {', '.join(flat)} are constant; scale 1 used for them", stacklevel=2)
    scale = np.where(half > 0, 1.0 / np.where(half > 0, half, 1.0), 1.0)
    what = f"percentiles {percentiles[0]:g}-{percentiles[1]:g}" if method == "percentile" else \
        f"mean +/- {std_range:g} std"
    return BandNormalisation(method, tuple(names), tuple(float(v) for v in centre), tuple(float(v) for v in scale),
                             f"{what} of {samples.shape[1]} pixels of {detail}")


def compute_normalisation(stacks: Sequence[BandStack], method: Method = "percentile",
                          percentiles: tuple[float, float] = (2.0, 98.0), std_range: float = 3.0,
                          max_pixels: int = STATS_PIXELS, progress: bool = True) -> BandNormalisation:
    """Statistics of the valid pixels of ``stacks`` (the training images, all with the same bands), each read
    on a decimated grid so that at most ``max_pixels`` pixels are read in all (memory bounded)."""
    if not stacks:
        raise RasterError("band statistics need at least one training image")
    names = stacks[0].names
    per = max(1, max_pixels // len(stacks))
    parts = []
    with progress_bar(len(stacks), "band statistics", "image", enabled=progress and len(stacks) > 4) as bar:
        for stack in stacks:
            if stack.names != names:
                raise RasterError(f"{stack.source}: bands {', '.join(stack.names)}, but the first training image "
                                  f"has {', '.join(names)}; give every image the same bands")
            h, w = stack.grid.shape
            f = max(1.0, (h * w / per) ** 0.5)
            values, valid = stack.read(out_shape=(max(1, int(h / f)), max(1, int(w / f))))
            parts.append(values[:, valid])
            bar.update(1)
    return from_samples(names, np.concatenate(parts, axis=1), method, percentiles, std_range,
                        f"{len(stacks)} training image(s)")
