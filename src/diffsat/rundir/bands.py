"""A run's band normalisation on disk (``normalisation.json``): written when a run on rasters starts, read
back wherever the run predicts or samples."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..fileio import atomic_write_text
from ..geo.normalise import BandNormalisation, uint8_normalisation
from ..geo.raster import RasterError
from .names import NORMALISATION_FILE


def save_run_normalisation(norm: BandNormalisation, run_dir: str | Path) -> Path:
    return atomic_write_text(Path(run_dir) / NORMALISATION_FILE, json.dumps(norm.to_dict(), indent=2) + "\n")


def load_run_normalisation(run_dir: str | Path, default_names: Sequence[str] | None = None) -> BandNormalisation:
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


def run_bands(run_dir: str | Path) -> tuple[str, ...] | None:
    """The band names of a run trained on rasters (its stored normalisation), else None."""
    return load_run_normalisation(run_dir).names if (Path(run_dir) / NORMALISATION_FILE).is_file() else None
