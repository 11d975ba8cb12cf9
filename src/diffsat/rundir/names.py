"""Every file name of a run directory, and the paths of a run's outputs.

A diffusion or autoencoder run: :data:`RUN_FILES` (asked for through :func:`run_file`), the periodic sample
grids under :data:`SAMPLES_DIR` (:func:`grid_path`, :func:`periodic_grids`) and the step directories under
:data:`CHECKPOINTS_DIR` (:mod:`diffsat.rundir.checkpoints`). A change-detection run (``diffsat cd train``)
adds the ``CD_*`` names and :data:`BEST_FILE` beside :data:`CONFIG_FILE`, :data:`MODEL_FILE`,
:data:`STATE_FILE` and :data:`METRICS_FILE`.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "train_state.pt"
SCHEDULE_FILE = "schedule.safetensors"
"""Written by ``diffsat convert`` when a foreign checkpoint carries its own noise-schedule buffers."""
METRICS_FILE = "metrics.csv"
REPORT_FILE = "report.html"
LOSS_PLOT = "loss.png"
QUALITY_PLOT = "quality.png"
SAMPLES_DIR = "samples"
FINAL_GRID = "final.png"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
LATENT_CACHE = "latents.safetensors"
"""A latent diffusion run's cache of its training set's latents (:mod:`diffsat.training.batches`)."""
MANIFEST_FILE = "checkpoint.json"
"""Written last into a step directory: the step and the size of each file (a commit record)."""
WEIGHTS_FORMAT = "diffsat-unet-v1"
CHECKPOINT_FORMAT = "diffsat-checkpoint-v1"
CHECKPOINT_FILES = (MODEL_FILE, EMA_FILE, STATE_FILE)
RECONSTRUCTION_FILE = "reconstruction.json"
"""An autoencoder run's reconstruction quality on held-out tiles, beside the bicubic baseline."""
BEST_FILE = "best.safetensors"
"""A change-detection head's weights at its best validation F1 (:data:`MODEL_FILE` holds the last ones)."""
CD_TEST_METRICS_FILE = "test_metrics.json"
"""A change-detection run's test scores of every method (one confusion matrix each) and per-pair F1."""
NORMALISATION_FILE = "normalisation.json"
"""A run's per-band normalisation of raster inputs (:class:`diffsat.geo.normalise.BandNormalisation`), made
from its training data and applied again at prediction."""
CD_FEATURES_DIR = "features"
"""A change-detection run's cache of backbone features (``<sha256>.safetensors`` files)."""
CD_BASELINES_DIR = "baselines"
"""A change-detection run's baselines (``head.compare``), one run-like folder ``baselines/<name>/`` each."""
CD_TEST_DIR = "test"
"""The masks a change-detection method predicted for the test split, in its folder."""
CD_FIGURES_DIR = "figures"
CD_FOLDS_DIR = "folds"
"""A cross-validated change-detection run's folds, one ordinary run ``folds/<k>/`` each."""
"""Beside predicted masks: one before | after | truth | prediction figure per pair."""
RUN_FILES = (CONFIG_FILE, MODEL_FILE, EMA_FILE, STATE_FILE, SCHEDULE_FILE, METRICS_FILE, REPORT_FILE, LOSS_PLOT,
             QUALITY_PLOT, TENSORBOARD_DIR, CHECKPOINTS_DIR, LATENT_CACHE, RECONSTRUCTION_FILE,
             BEST_FILE, CD_TEST_METRICS_FILE, NORMALISATION_FILE)


_GRID_NAME = re.compile(r"step_(\d+)\.png")


def run_file(run_dir: str | Path, name: str) -> Path:
    """The path of the run file ``name`` (one of :data:`RUN_FILES`, e.g. :data:`METRICS_FILE`) in ``run_dir``."""
    if name not in RUN_FILES:
        raise ValueError(f"'{name}' is not a run file: one of {', '.join(RUN_FILES)}")
    return Path(run_dir) / name


def grid_path(run_dir: str | Path, step: int | None = None) -> Path:
    """The periodic sample grid of ``step`` (``samples/step_XXXXXXX.png``), or the final one (``step=None``)."""
    name = FINAL_GRID if step is None else f"step_{step:07d}.png"
    return Path(run_dir) / SAMPLES_DIR / name


def periodic_grids(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the periodic sample grids of a run, in step order."""
    found = []
    for path in (Path(run_dir) / SAMPLES_DIR).glob("step_*.png"):
        match = _GRID_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)
