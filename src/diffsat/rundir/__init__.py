"""Run directories: every file name of a run, crash-consistent checkpoints, metrics.csv, and loading a network.

A run directory holds ``config.json`` (the resolved config), ``checkpoints/`` (the newest
``train.keep_checkpoints`` checkpoints, one directory each), ``model.safetensors`` and ``ema.safetensors``
(the newest checkpoint's weights, exported for users and other tools), ``metrics.csv``, ``loss.png`` /
``quality.png``, ``samples/`` (periodic grids ``step_XXXXXXX.png`` and ``final.png``), ``report.html`` and
optionally ``tensorboard/``; a converted foreign checkpoint adds ``schedule.safetensors``, a change-detection
run ``best.safetensors``, ``test_metrics.json``, ``features/``, ``baselines/`` and ``test/``. Only this package
spells those names: callers ask it for a run's config, its checkpoint or the path of one of its outputs.

A checkpoint is ``checkpoints/step-XXXXXXX/`` holding ``model.safetensors``, ``ema.safetensors`` (weights,
with the step in their metadata), ``train_state.pt`` (optimiser state, step, EMA update count, time in
training steps; read with ``weights_only=True``) and ``checkpoint.json`` (the step and each file's size). It is
written whole into ``step-XXXXXXX.tmp-<pid>/``, fsync'ed, and committed by one atomic rename, so a kill, a
full disk or a power cut leaves either the whole new checkpoint or none of it beside the previous ones;
training and :func:`load_model` read the newest committed checkpoint that reads, falling back to the one
before with a warning. Runs of the older flat layout (``train_state.pt`` beside the weights) are read as they
are; the first checkpoint a resumed run writes moves them to the new layout. Every other file is written to
a temporary name beside it and moved into place with ``os.replace``.

Foreign weight files (DDPM-CD / SR3 ``*_gen.pth``, bare state dicts, ``.safetensors``) are read with
``torch.load(weights_only=True)``: a pickle that needs arbitrary code is refused, never executed; their
layouts are mapped by :mod:`diffsat.ddpmcd`. :func:`load_model` returns a :class:`LoadedModel`.

The modules, lowest first (each imports only those before it):

- :mod:`~diffsat.rundir.names`: every file name of a run (:data:`RUN_FILES`, the change-detection run's
  ``CD_*`` names and :data:`BEST_FILE`), :func:`run_file`, :func:`grid_path`, :func:`periodic_grids`;
- :mod:`~diffsat.rundir.metrics`: ``metrics.csv``: :class:`MetricsLog`, :func:`read_metrics`;
- :mod:`~diffsat.rundir.reading`: :func:`safe_torch_load`, :func:`read_safetensors`, :func:`read_checkpoint`;
- :mod:`~diffsat.rundir.state_dict`: the one state-dict check (:func:`check_state_dict`) and
  :func:`load_state_into`;
- :mod:`~diffsat.rundir.checkpoints`: the checkpoint layout (:class:`Checkpoint`, :func:`step_dir`,
  :func:`committed_checkpoints`, :func:`is_run_dir`) and reading checkpoints back (:func:`resume_checkpoint`,
  :func:`load_train_state`);
- :mod:`~diffsat.rundir.writing`: :func:`save_checkpoint` (write, commit, prune) and :func:`export_weights`;
- :mod:`~diffsat.rundir.resume`: :func:`remove_uncommitted`, :func:`set_aside_newer`,
  :func:`check_fresh_start`;
- :mod:`~diffsat.rundir.schedules`: a checkpoint's noise-schedule buffers (:func:`schedule_from_buffers`,
  :func:`compare_schedule`);
- :mod:`~diffsat.rundir.loading`: :func:`load_run_config`, :func:`load_any_run_config`, :func:`load_model`,
  :func:`random_model`, :func:`load_autoencoder`, :func:`check_latent_shapes`;
- :mod:`~diffsat.rundir.convert`: :func:`convert_checkpoint`.
"""

from __future__ import annotations

from ..errors import CheckpointError
from .checkpoints import (
    Checkpoint,
    TrainCheckpoint,
    Weights,
    committed_checkpoints,
    is_run_dir,
    load_train_state,
    resume_checkpoint,
    step_dir,
)
from .convert import convert_checkpoint
from .loading import (
    LoadedAutoencoder,
    LoadedModel,
    check_latent_shapes,
    is_taesd_source,
    load_any_run_config,
    load_autoencoder,
    load_model,
    load_run_config,
    load_taesd_for,
    random_model,
    run_encoder,
)
from .metrics import TRAIN_FIELDS, MetricsLog, read_metrics
from .names import (
    BEST_FILE,
    CD_BASELINES_DIR,
    CD_FEATURES_DIR,
    CD_FIGURES_DIR,
    CD_FOLDS_DIR,
    CD_TEST_DIR,
    CD_TEST_METRICS_FILE,
    CHECKPOINT_FILES,
    CHECKPOINT_FORMAT,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EMA_FILE,
    FINAL_GRID,
    LATENT_CACHE,
    LOSS_PLOT,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    NORMALISATION_FILE,
    QUALITY_PLOT,
    RECONSTRUCTION_FILE,
    REPORT_FILE,
    RUN_FILES,
    SAMPLES_DIR,
    SCHEDULE_FILE,
    STATE_FILE,
    TENSORBOARD_DIR,
    WEIGHTS_FORMAT,
    grid_path,
    periodic_grids,
    run_file,
)
from .reading import read_checkpoint, read_safetensors, safe_torch_load
from .resume import check_fresh_start, remove_uncommitted, set_aside_newer
from .schedules import compare_schedule, schedule_from_buffers
from .state_dict import check_state_dict, load_state_into
from .writing import export_weights, save_checkpoint

__all__ = [
    "BEST_FILE", "CD_BASELINES_DIR", "CD_FEATURES_DIR", "CD_FIGURES_DIR", "CD_FOLDS_DIR", "CD_TEST_DIR", "CD_TEST_METRICS_FILE",
    "CHECKPOINTS_DIR", "CHECKPOINT_FILES", "CHECKPOINT_FORMAT", "CONFIG_FILE", "EMA_FILE", "FINAL_GRID",
    "LATENT_CACHE", "LOSS_PLOT", "MANIFEST_FILE", "METRICS_FILE", "MODEL_FILE",
    "NORMALISATION_FILE", "QUALITY_PLOT",
    "RECONSTRUCTION_FILE", "REPORT_FILE", "RUN_FILES", "SAMPLES_DIR", "SCHEDULE_FILE", "STATE_FILE",
    "TENSORBOARD_DIR", "TRAIN_FIELDS", "WEIGHTS_FORMAT",
    "Checkpoint", "CheckpointError", "LoadedAutoencoder", "LoadedModel", "MetricsLog", "TrainCheckpoint", "Weights",
    "check_fresh_start", "check_latent_shapes", "check_state_dict", "committed_checkpoints", "compare_schedule",
    "convert_checkpoint", "export_weights", "grid_path", "is_run_dir", "load_any_run_config", "load_autoencoder",
    "load_model", "load_run_config", "load_state_into", "load_train_state", "periodic_grids", "random_model",
    "read_checkpoint", "read_metrics", "read_safetensors", "remove_uncommitted", "resume_checkpoint", "run_encoder",
    "is_taesd_source", "load_taesd_for",
    "run_file",
    "safe_torch_load", "save_checkpoint", "schedule_from_buffers", "set_aside_newer", "step_dir",
]
