"""A run's band normalisation, made from its training images per the config (stored in the run directory
by :mod:`diffsat.rundir.bands`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffsat.config import NormalisationConfig
from diffsat.geo.normalise import BandNormalisation, compute_normalisation, fixed_normalisation, uint8_normalisation
from diffsat.geo.raster import RasterError

def make_normalisation(cfg: NormalisationConfig, images: Sequence[Any], progress: bool = True) -> BandNormalisation:
    """The map of ``cfg`` for ``images`` (band stacks or decoded 8-bit images with ``names``, ``dtypes``,
    ``grid`` and ``read``: the training images), all with the same bands."""
    if not images:
        raise RasterError("no training images to make the band normalisation from")
    names = tuple(images[0].names)
    if cfg.method == "fixed":
        assert cfg.scale is not None  # the config's validator
        return fixed_normalisation(names, cfg.scale, cfg.offset)
    if cfg.method == "auto" and all(d == "uint8" for im in images for d in im.dtypes):
        return uint8_normalisation(names)
    method = "percentile" if cfg.method == "auto" else cfg.method
    return compute_normalisation(images, method, cfg.percentiles, cfg.std_range, progress=progress)
