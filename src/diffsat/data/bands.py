"""A run's band normalisation: made from its training images per the config, stored in the run directory
(``normalisation.json``) and read back at prediction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffsat.config import NormalisationConfig
from diffsat.fileio import atomic_write_text
from diffsat.geo.normalise import BandNormalisation, compute_normalisation, fixed_normalisation, uint8_normalisation
from diffsat.geo.raster import RasterError
from diffsat.rundir import NORMALISATION_FILE


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


def save_normalisation(norm: BandNormalisation, run_dir: str | Path) -> Path:
    return atomic_write_text(Path(run_dir) / NORMALISATION_FILE, json.dumps(norm.to_dict(), indent=2) + "\n")


def load_normalisation(run_dir: str | Path, default_names: Sequence[str] | None = None) -> BandNormalisation:
    """The run's stored map; a run without one (trained on 8-bit images before rasters were read) gets the
    8-bit map of ``default_names`` when given."""
    path = Path(run_dir) / NORMALISATION_FILE
    if not path.is_file():
        if default_names is not None:
            return uint8_normalisation(default_names)
        raise RasterError(f"{path}: missing; the run holds no band normalisation (train it again)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RasterError(f"{path}: unreadable ({err}); the run is damaged: train it again") from None
    return BandNormalisation.from_dict(data, str(path))
