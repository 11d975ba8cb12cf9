"""Run directories: every file name of a run, crash-consistent checkpoints, and loading a network.

A run directory holds ``config.json`` (the resolved config), ``checkpoints/`` (the newest
``train.keep_checkpoints`` checkpoints, one directory each), ``model.safetensors`` and ``ema.safetensors``
(the newest checkpoint's weights, exported for users and other tools), ``metrics.csv``, ``loss.png`` /
``quality.png``, ``samples/`` (periodic grids ``step_XXXXXXX.png`` and ``final.png``), ``report.html`` and
optionally ``tensorboard/``; a converted foreign checkpoint adds ``schedule.safetensors``. Only this module
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
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import (
    SCHEDULE_NAMES,
    AutoencoderRunConfig,
    Config,
    DiffusionConfig,
    load_any_config,
    load_config,
    save_config,
)
from .ddpmcd import StateDict, to_our_keys, unwrap_state_dict
from .diffusion.schedules import F64, NoiseSchedule, make_betas
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write, fsync_path, remove_stray_tmp_files
from .models.autoencoder import Autoencoder, build_autoencoder
from .models.latent import DECODE_PAD, LatentDiffusionNet
from .models.unet import build_unet

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
RUN_FILES = (CONFIG_FILE, MODEL_FILE, EMA_FILE, STATE_FILE, SCHEDULE_FILE, METRICS_FILE, REPORT_FILE, LOSS_PLOT,
             QUALITY_PLOT, TENSORBOARD_DIR, CHECKPOINTS_DIR, LATENT_CACHE, RECONSTRUCTION_FILE)

Weights = Literal["ema", "model"]
_GRID_NAME = re.compile(r"step_(\d+)\.png")
_STEP_DIR = re.compile(r"step-(\d+)")
_UNCOMMITTED = re.compile(r"step-\d+\.(?:tmp|old)-\d+")

# ------------------------------------------------------------------------------------------ names and paths


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a diffsat run directory (``config.json`` and model weights or checkpoints)."""
    path = Path(path)
    weights = any((path / n).is_file() for n in (MODEL_FILE, EMA_FILE)) or bool(committed_checkpoints(path))
    return (path / CONFIG_FILE).is_file() and weights


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


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """The config of a run directory (its ``config.json``) or of a config file (ours or DDPM-CD's), with
    ``section.key=value`` overrides (see :func:`diffsat.config.load_config`)."""
    path = Path(path)
    return load_config(run_file(path, CONFIG_FILE) if path.is_dir() else path, overrides)


def load_any_run_config(path: str | Path, overrides: list[str] | None = None) -> Config | AutoencoderRunConfig:
    """As :func:`load_run_config`, also for an autoencoder run or config (:func:`diffsat.config.load_any_config`)."""
    path = Path(path)
    return load_any_config(run_file(path, CONFIG_FILE) if path.is_dir() else path, overrides)


# --------------------------------------------------------------------------------------------- reading files


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a run directory needs {CONFIG_FILE} and {EMA_FILE} or {MODEL_FILE})")
    return path


def _refusal_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines()]
    detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "")
    return f" ({detail})" if detail else ""


def _torch_load(path: Path, mmap: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused for safety: loading it needs arbitrary unpickling{_refusal_reason(err)}, which "
            f"could run code from the file; nothing was executed. Re-save it as a state dict of tensors "
            f"(torch.save(model.state_dict())) or safetensors on a trusted machine"
        ) from None
    except (EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError, OSError) as err:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {err})") from None


def safe_torch_load(path: str | Path, mmap: bool = True) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)``, one-line errors.

    Falls back to ``mmap=False`` for the pre-1.6 (non-zip) format. Never executes code from the file.
    """
    path = _existing_file(path)
    try:
        obj = _torch_load(path, mmap=mmap)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({str(err).splitlines()[0]})") from None
        try:
            obj = _torch_load(path, mmap=False)
        except RuntimeError as err2:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({str(err2).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read_safetensors(path: Path) -> StateDict:
    """All tensors of a ``.safetensors`` file; a missing or corrupt file is a one-line error."""
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found (is this a diffsat run directory?)")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def read_checkpoint(path: str | Path) -> StateDict:
    """All tensors of a ``.pth``/``.pt`` (weights-only, memory-mapped) or ``.safetensors`` file.

    The format is sniffed from the first bytes, not the suffix.
    """
    path = _existing_file(path)
    if not _is_safetensors(path):
        return unwrap_state_dict(safe_torch_load(path), str(path))
    return read_safetensors(path)



# ---------------------------------------------------------------------------- the one state-dict check


Shape = tuple[int, ...] | None


def _hint(key: str, file_shape: Shape, model_shape: Shape, model: nn.Module) -> str:
    """The likely cause of a key/shape difference, from the key name and the two shapes."""
    cfg = getattr(model, "config", None)
    if ".attn." in key:
        where = (f" (configured image_size {cfg.image_size}, attn_resolutions {tuple(cfg.attn_resolutions)})"
                 if cfg else "")
        return (f"attention placement differs{where}: attention sits where image_size / 2**level is in "
                f"attn_resolutions, so a wrong model.image_size (DDPM-CD: model.diffusion.image_size, 256 for "
                f"the released generator) or attn_res moves it")
    if file_shape and model_shape and len(file_shape) == len(model_shape) == 4:
        if key.startswith("init_conv.") and file_shape[1] != model_shape[1]:
            return (f"in_channels differ (checkpoint {file_shape[1]}, config {model_shape[1]}); a conditional "
                    f"SR3 model takes 2 x channels")
        if key.startswith("final_conv.") and file_shape[0] != model_shape[0]:
            return f"out_channels differ (checkpoint {file_shape[0]}, config {model_shape[0]})"
    if key.startswith("noise_level_mlp.") and file_shape and model_shape:
        return (f"model.base_channels (DDPM-CD inner_channel) differs: the checkpoint's is {file_shape[-1]}, "
                f"the config's {model_shape[-1]}")
    if key.startswith(("init_conv.", "downs.0.weight", "downs.0.bias")):
        return "the SR3 layout (first conv = downs.0) and the DDPM-CD layout (init_conv) are mixed up"
    return ("the config does not describe this network: check base_channels (inner_channel), channel_mults "
            "(channel_multiplier) and res_blocks, or the SR3 vs DDPM-CD layout")


def _shape(t: torch.Tensor | None) -> Shape:
    return None if t is None else tuple(t.shape)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` for the first missing key, shape mismatch, or unexpected key."""
    expected = model.state_dict()
    for key, ours in expected.items():
        theirs = state_dict.get(key)
        if theirs is None:
            raise CheckpointError(f"{source}: key '{key}' (shape {_shape(ours)}) is missing from the checkpoint: "
                                  f"{_hint(key, None, _shape(ours), model)}")
        if theirs.shape != ours.shape:
            raise CheckpointError(
                f"{source}: key '{key}' has shape {_shape(theirs)} in the checkpoint but the config builds "
                f"{_shape(ours)}: {_hint(key, _shape(theirs), _shape(ours), model)}")
    extra = next((k for k in state_dict if k not in expected), None)
    if extra is not None:
        shape = _shape(state_dict[extra])
        raise CheckpointError(f"{source}: unexpected key '{extra}' (shape {shape}) not in the configured network: "
                              f"{_hint(extra, shape, None, model)}")


def _materialise(model: nn.Module) -> None:
    """Give a meta-device model uninitialised CPU storage (no random init: every tensor is loaded next)."""
    persistent = set(model.state_dict())
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if names - persistent:
        raise RuntimeError(f"non-persistent tensors {sorted(names - persistent)[:3]} would stay uninitialised")
    model.to_empty(device="cpu")


def load_state_into(model: nn.Module, unet_state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Check keys and shapes (:func:`check_state_dict`), then copy the weights into ``model``.

    A model on the ``meta`` device is first given CPU storage, so the 391M network is never randomly
    initialised; the weights are copied (the model never aliases a memory-mapped file).
    """
    check_state_dict(model, unet_state_dict, source)
    if any(p.is_meta for p in model.parameters()):
        _materialise(model)
    model.load_state_dict(unet_state_dict, strict=True)



# ------------------------------------------------------------------------------------ checkpoints of a run


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint of a run: ``folder`` holds its :data:`CHECKPOINT_FILES` (a step directory
    ``checkpoints/step-XXXXXXX``, or the run directory itself for a run of the old, flat layout)."""

    step: int
    folder: Path

    def file(self, name: str) -> Path:
        return self.folder / name


@dataclass(frozen=True)
class TrainCheckpoint:
    """Everything training resumes from, read whole: the ``model`` and ``ema`` weights (state dicts of CPU
    tensors) and the train ``state`` (``step``, ``elapsed_s``, ``ema_updates``, ``optimizer``)."""

    checkpoint: Checkpoint
    model: StateDict
    ema: StateDict
    state: dict[str, Any]


def step_dir(run_dir: str | Path, step: int) -> Path:
    """The committed directory of the checkpoint of ``step``: ``RUN/checkpoints/step-XXXXXXX``."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:07d}"


def committed_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """The run's committed step directories, newest first (an old-layout run has none)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    found = [(int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else ())
             if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [Checkpoint(step, path) for step, path in sorted(found, reverse=True)]


def _old_layout(run_dir: Path) -> Checkpoint | None:
    """The flat checkpoint of a run written before step directories (``train_state.pt`` at the top)."""
    state = run_dir / STATE_FILE
    return Checkpoint(-1, run_dir) if state.is_file() else None


# ------------------------------------------------------------------------------------------- reading them


def _manifest(folder: Path) -> dict[str, Any]:
    """The commit manifest of a step directory, after checking every file has the size it recorded."""
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files, step = dict(manifest["files"]), int(manifest["step"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (the checkpoint directory was damaged after its commit)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint manifest ({type(err).__name__}: {err})") from None
    for name in CHECKPOINT_FILES:
        file = folder / name
        size = file.stat().st_size if file.is_file() else None
        if size != files.get(name):
            held = "missing" if size is None else f"{size} bytes"
            raise CheckpointError(f"{file}: {held} but the checkpoint recorded {files.get(name)} bytes (truncated "
                                  f"or damaged after its commit)")
    return {"step": step, "files": files}


def _train_state(path: Path) -> dict[str, Any]:
    """A train state written by :func:`save_checkpoint` (always torch's zip format: other bytes are damage,
    never a legacy pickle to refuse)."""
    with _existing_file(path).open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (no zip header: damaged)")
    state = safe_torch_load(path, mmap=False)
    if not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: holds no training step (not a diffsat train state)")
    return state


def _read_step_dir(checkpoint: Checkpoint) -> TrainCheckpoint:
    _manifest(checkpoint.folder)
    state = _train_state(checkpoint.file(STATE_FILE))
    if state["step"] != checkpoint.step:
        raise CheckpointError(f"{checkpoint.file(STATE_FILE)}: holds step {state['step']}, not the step "
                              f"{checkpoint.step} its directory names")
    model, ema = (read_safetensors(checkpoint.file(n)) for n in (MODEL_FILE, EMA_FILE))
    return TrainCheckpoint(checkpoint, model, ema, state)


def _read_old_layout(checkpoint: Checkpoint) -> TrainCheckpoint:
    """An old-layout checkpoint, after checking that both weight files belong to the train state's step."""
    state = _train_state(checkpoint.file(STATE_FILE))
    for name in (MODEL_FILE, EMA_FILE):
        step = _weights_step(checkpoint.file(name))
        if step != state["step"]:
            raise CheckpointError(
                f"{checkpoint.file(name)}: holds step {step} but {STATE_FILE} holds step {state['step']} "
                f"(interrupted save?): restore a consistent copy or start a new run")
    model, ema = (read_safetensors(checkpoint.file(n)) for n in (MODEL_FILE, EMA_FILE))
    return TrainCheckpoint(Checkpoint(state["step"], checkpoint.folder), model, ema, state)


T = TypeVar("T")


def _newest_readable(checkpoints: list[Checkpoint], read: Callable[[Checkpoint], T]) -> T:
    """``read`` of the newest checkpoint it succeeds on; each unreadable newer one is a warning naming the
    file, and a :class:`CheckpointError` when none is readable."""
    errors: list[CheckpointError] = []
    for checkpoint in checkpoints:
        try:
            result = read(checkpoint)
        except CheckpointError as err:
            errors.append(err)
            continue
        for err, skipped in zip(errors, checkpoints):
            warnings.warn(f"{err}; the checkpoint of step {skipped.step} is skipped, step {checkpoint.step} is "
                          f"used", stacklevel=3)
        return result
    raise errors[0] if len(errors) == 1 else CheckpointError(f"{errors[0]} (and no older checkpoint is readable)")


def _weights_step(path: Path) -> int:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("step", -1))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def resume_checkpoint(run_dir: str | Path, step: int | None = None) -> TrainCheckpoint:
    """The checkpoint training resumes from, read whole: the newest committed one that reads (an unreadable
    newer one is a warning naming its file), the flat files of an old-layout run, or exactly ``step``."""
    run_dir = Path(run_dir)
    checkpoints = committed_checkpoints(run_dir)
    if checkpoints:
        if step is not None:
            checkpoints = [c for c in checkpoints if c.step == step]
            if not checkpoints:
                raise CheckpointError(f"{step_dir(run_dir, step)}: not found; another process of this run "
                                      f"committed it (do all ranks see the same run directory?)")
        return _newest_readable(checkpoints, _read_step_dir)
    old = _old_layout(run_dir)
    if old is None:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from (no {CHECKPOINTS_DIR}/step-* or "
                              f"{STATE_FILE}); start without --resume")
    return _read_old_layout(old)


def load_train_state(run_dir: str | Path) -> dict[str, Any]:
    """The train state (``step``, ``elapsed_s``, ``ema_updates``, ``optimizer``) training would resume from."""
    return resume_checkpoint(run_dir).state


def _run_weights(run_dir: Path, which: Weights, fallback: bool) -> tuple[Path, StateDict]:
    """The file and tensors of the newest readable checkpoint's ``which`` weights (a step directory's, else
    the flat run's; the trained weights when ``fallback`` and the run has no EMA file)."""
    names = {"ema": (EMA_FILE, MODEL_FILE) if fallback else (EMA_FILE,), "model": (MODEL_FILE,)}[which]
    checkpoints = committed_checkpoints(run_dir)
    if checkpoints:
        def read(checkpoint: Checkpoint) -> tuple[Path, StateDict]:
            _manifest(checkpoint.folder)
            return checkpoint.file(names[0]), read_safetensors(checkpoint.file(names[0]))
        return _newest_readable(checkpoints, read)
    found = next((run_dir / n for n in names if (run_dir / n).is_file()), None)
    if found is None:
        raise CheckpointError(f"{run_dir}: no {' or '.join(names)} in this run directory")
    return found, read_checkpoint(found)


# ------------------------------------------------------------------------------------------- writing them


def _weights_of(module: nn.Module) -> StateDict:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _io_failure(err: BaseException) -> str:
    """One line of an OSError / safetensors / torch write error (its first line, errno name included)."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror} [{errno.errorcode.get(err.errno, err.errno)}]"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _save_error(err: BaseException, path: Path, step: int, needed: int, run_dir: Path) -> CheckpointError:
    try:
        free = f"; {_mib(shutil.disk_usage(run_dir).free)} free there"
    except OSError:
        free = ""
    last = (committed_checkpoints(run_dir) or [None])[0] or _old_layout(run_dir)
    intact = (f"the last committed checkpoint ({last.folder}) is intact, so fix the cause and run "
              f"diffsat train --resume --out {run_dir}") if last else "no earlier checkpoint exists"
    return CheckpointError(f"could not write the checkpoint of step {step}: {path}: {_io_failure(err)} (the "
                           f"checkpoint needs about {_mib(needed)}{free}); training stopped; {intact}")


def _write_step_dir(tmp: Path, model: StateDict, ema: StateDict, state: dict[str, Any],
                    on_file: Callable[[Path], None]) -> None:
    """Write and fsync the checkpoint files and then the manifest into the new directory ``tmp``;
    ``on_file`` is told each path before it is written (for error messages)."""
    meta = {"step": str(state["step"]), "format": WEIGHTS_FORMAT}
    tmp.mkdir(parents=True)
    for name, weights in ((MODEL_FILE, model), (EMA_FILE, ema)):
        on_file(tmp / name)
        save_file(weights, str(tmp / name), metadata=meta)
    on_file(tmp / STATE_FILE)
    torch.save(state, tmp / STATE_FILE)
    sizes = {name: (tmp / name).stat().st_size for name in CHECKPOINT_FILES}
    on_file(tmp / MANIFEST_FILE)
    manifest = {"format": CHECKPOINT_FORMAT, "step": state["step"], "files": sizes}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name in (*CHECKPOINT_FILES, MANIFEST_FILE):
        fsync_path(tmp / name)
    fsync_path(tmp)


def _remove_dir(folder: Path) -> None:
    """Delete a directory so that a kill part-way leaves an uncommitted leftover, never half a checkpoint:
    first renamed to ``NAME.old-<pid>``, then removed."""
    aside = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    os.rename(folder, aside)
    shutil.rmtree(aside)


def _commit(tmp: Path, final: Path) -> None:
    """The one atomic step: rename the complete directory ``tmp`` to ``final`` (replacing a checkpoint of
    the same step, which only an unreadable one set aside can be), then make the rename durable."""
    if final.exists():
        _remove_dir(final)
    os.rename(tmp, final)
    fsync_path(final.parent)


def _link_or_copy(src: Path, dst: str) -> None:
    """Make ``dst`` a hard link to ``src`` (no space, no time), or a copy where links are not possible."""
    Path(dst).unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def export_weights(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    """Make the run's top-level ``model.safetensors`` / ``ema.safetensors`` (what users and other tools read)
    the weights of ``checkpoint``, each replaced atomically; a flat ``train_state.pt`` of the old layout,
    now superseded, is removed."""
    run_dir = Path(run_dir)
    if checkpoint.folder == run_dir:
        return
    for name in (MODEL_FILE, EMA_FILE):
        target = run_dir / name
        if target.is_file() and os.path.samefile(target, checkpoint.file(name)):
            continue  # linked already (a rename onto the same file would do nothing and leave the temporary)
        atomic_write(target, lambda tmp, n=name: _link_or_copy(checkpoint.file(n), tmp))
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def _prune(run_dir: Path, keep: int) -> None:
    for old in committed_checkpoints(run_dir)[keep:]:
        _remove_dir(old.folder)


def save_checkpoint(run_dir: str | Path, model: nn.Module, ema: nn.Module, state: dict[str, Any],
                    keep: int = 2) -> Checkpoint:
    """Write a whole checkpoint and commit it by one atomic rename; then export the weights and keep only the
    newest ``keep`` checkpoints.

    ``state``: tensors and numbers with ``state["step"]``. The files go into ``checkpoints/step-XXXXXXX.tmp-<pid>``
    with a manifest of their sizes, are fsync'ed, and the directory is renamed to ``checkpoints/step-XXXXXXX``:
    a reader sees the whole checkpoint or none of it. Any I/O failure removes the partial directory and is one
    :class:`CheckpointError` line (the path, the cause, the space the checkpoint needs); the checkpoints
    committed before stay as they were.
    """
    run_dir, step = Path(run_dir), int(state["step"])
    final = step_dir(run_dir, step)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    model_weights, ema_weights = _weights_of(model), _weights_of(ema)
    needed = _tensor_bytes((model_weights, ema_weights, state))
    current = [tmp]
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        _write_step_dir(tmp, model_weights, ema_weights, state, current.append)
        current.append(final)
        _commit(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports write errors as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(err, current[-1], step, needed, run_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    checkpoint = Checkpoint(step, final)
    try:
        export_weights(run_dir, checkpoint)
        _prune(run_dir, keep)
    except OSError as err:
        raise CheckpointError(f"the checkpoint of step {step} is committed in {final}, but updating "
                              f"{err.filename or run_dir} failed: {_io_failure(err)}; training stopped; fix the "
                              f"cause and run diffsat train --resume --out {run_dir}") from None
    return checkpoint


# ------------------------------------------------------------------------------------- starting and resuming


def remove_uncommitted(run_dir: str | Path) -> list[Path]:
    """Delete what killed saves left behind: ``checkpoints/step-*.tmp-<pid>`` / ``.old-<pid>`` directories
    and the temporary files of atomic writes in the run directory and ``samples/``; returns their paths.
    Only while no process writes into the run."""
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINTS_DIR
    leftovers = [p for p in (folder.iterdir() if folder.is_dir() else ()) if _UNCOMMITTED.fullmatch(p.name)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers + remove_stray_tmp_files(run_dir) + remove_stray_tmp_files(run_dir / SAMPLES_DIR)


def set_aside_newer(run_dir: str | Path, resumed: Checkpoint) -> list[Path]:
    """Rename the committed checkpoints newer than ``resumed`` (those that did not read) to
    ``step-XXXXXXX.unreadable``, kept for inspection, so the resumed run's saves succeed them; returns the
    new paths."""
    moved = []
    for checkpoint in committed_checkpoints(run_dir):
        if checkpoint.step > resumed.step:
            target = checkpoint.folder.with_name(f"{checkpoint.folder.name}.unreadable")
            if target.exists():
                shutil.rmtree(target)
            os.rename(checkpoint.folder, target)
            moved.append(target)
    return moved


def check_fresh_start(run_dir: str | Path) -> None:
    """Refuse to start a new run over one that holds a checkpoint (it would mix the two runs' checkpoints)."""
    run_dir = Path(run_dir)
    held = (committed_checkpoints(run_dir) or [None])[0] or _old_layout(run_dir)
    if held is not None:
        raise CheckpointError(f"{run_dir} already holds a training checkpoint ({held.folder}): continue it with "
                              f"--resume, or train into another --out")


# ------------------------------------------------------------------------------------------------ schedules


def schedule_from_buffers(buffers: Mapping[str, torch.Tensor]) -> NoiseSchedule:
    """The schedule stored in a checkpoint: ``alphas_cumprod`` (T,) as float64 (else derived from ``betas``)."""
    if "alphas_cumprod" in buffers:
        return NoiseSchedule(buffers["alphas_cumprod"].detach().to(F64).reshape(-1).clone())
    if "betas" in buffers:
        return NoiseSchedule.from_betas(buffers["betas"].detach().reshape(-1))
    raise CheckpointError("the checkpoint holds no schedule buffers (alphas_cumprod / betas)")


def _guess_schedule(betas: torch.Tensor) -> str:
    n, start, end = betas.shape[0], float(betas[0]), float(betas[-1])
    for name in SCHEDULE_NAMES:
        candidate = make_betas(name, n, start, end)
        if torch.allclose(candidate, betas, rtol=1e-5, atol=0.0):
            return name
    return "custom"


def _describe(name: str, betas: torch.Tensor) -> str:
    return f"{name} (T={betas.shape[0]}, beta {float(betas[0]):.3g}..{float(betas[-1]):.3g})"


def _vector(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(F64).reshape(-1)


def _max_difference(theirs: torch.Tensor, ours: torch.Tensor, what: str) -> str | None:
    """``None`` when equal length and within 1e-6 relative, else a ``, max |... difference| x`` fragment."""
    if theirs.shape != ours.shape:
        return ""
    if bool(((theirs - ours).abs() <= 1e-6 * ours.abs()).all()):
        return None
    return f", max |{what} difference| {float((theirs - ours).abs().max()):.3g}"


def compare_schedule(buffers: Mapping[str, torch.Tensor], diffusion: DiffusionConfig) -> str | None:
    """One-line warning when the checkpoint's schedule differs from the config's; ``None`` if they agree.

    Compares ``betas`` (T,) with ``make_betas`` of the config to 1e-6 relative; a file with only
    ``alphas_cumprod`` is compared on alpha_bar (betas derived from float32 alpha_bar are too noisy).
    """
    ours = make_betas(diffusion.schedule, diffusion.timesteps, diffusion.beta_start, diffusion.beta_end)
    if "betas" in buffers:
        theirs = _vector(buffers["betas"])
        diff, held = _max_difference(theirs, ours, "beta"), _describe(_guess_schedule(theirs), theirs)
    else:
        theirs = schedule_from_buffers(buffers).alphas_cumprod
        diff = _max_difference(theirs, torch.cumprod(1.0 - ours, 0), "alpha_bar")
        held = f"a schedule of T={theirs.shape[0]} (alphas_cumprod only)"
    if diff is None:
        return None
    return (f"noise schedule mismatch: the checkpoint holds {held} but the config's diffusion section gives "
            f"{_describe(diffusion.schedule, ours)}{diff}; the checkpoint's schedule is used")



# ------------------------------------------------------------------------------------------------ networks


@dataclass(frozen=True)
class LoadedModel:
    """A network loaded by :func:`load_model`.

    ``network``: the :class:`~diffsat.models.unet.SR3UNet` in eval mode on the CPU (for a latent diffusion run
    a :class:`~diffsat.models.latent.LatentDiffusionNet`: the U-Net with its autoencoder); ``config``: our config of
    it; ``schedule``: the noise schedule it was trained with (the file's own when it carries one);
    ``weights``: which weights were loaded: ``"ema"`` or ``"model"`` of a run directory, or the path of a
    foreign weights file.
    """

    network: nn.Module
    config: Config
    schedule: NoiseSchedule
    weights: str


def _resolve_config(config: Config | str | Path | None, source: Path) -> Config:
    if config is None:
        raise CheckpointError(
            f"{source}: a weights file carries no network description: pass --config CONFIG.json "
            f"(a diffsat config or the DDPM-CD/SR3 JSON the weights were trained with)")
    return config if isinstance(config, Config) else load_run_config(config)


def _schedule(cfg: Config, buffers: Mapping[str, torch.Tensor], source: str) -> NoiseSchedule:
    if not buffers:
        return NoiseSchedule.from_config(cfg.diffusion)
    message = compare_schedule(buffers, cfg.diffusion)
    if message:
        warnings.warn(f"{source}: {message}", stacklevel=4)  # the caller of load_model
    return schedule_from_buffers(buffers)


def _network(cfg: Config, weights: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    with torch.device("meta"):
        model = build_unet(cfg.model)
    load_state_into(model, weights, source)
    return _with_autoencoder(model.eval(), cfg)


def _with_autoencoder(unet: nn.Module, cfg: Config) -> nn.Module:
    """``unet`` itself, or for a latent config the :class:`LatentDiffusionNet` with the named autoencoder."""
    if cfg.latent is None:
        return unet
    return load_autoencoder(cfg.latent.autoencoder, cfg).latent_net(unet).eval()


@dataclass(frozen=True)
class LoadedAutoencoder:
    """An autoencoder run loaded by :func:`load_autoencoder`: its ``network`` (EMA weights, eval mode, CPU,
    with the latent statistics it was saved with), its ``config`` and the ``weights`` file read."""

    network: Autoencoder
    config: AutoencoderRunConfig
    weights: str

    @property
    def decode_pad(self) -> int:
        """Edge padding its latents need when decoded: none for a decoder trained on interior latents
        (``loss.interior_margin``), else :data:`~diffsat.models.latent.DECODE_PAD`."""
        return 0 if self.config.loss.interior_margin else DECODE_PAD

    def latent_net(self, unet: nn.Module) -> LatentDiffusionNet:
        """``unet`` with this autoencoder, decoding as its training calls for."""
        return LatentDiffusionNet(unet, self.network, self.decode_pad)


def _autoencoder_config(path: Path, named: str) -> AutoencoderRunConfig:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(
            f"latent.autoencoder '{named}': no autoencoder run at {path} (a directory with config.json and weights "
            "from `diffsat train` on an autoencoder config): train one there or correct the path")
    config = load_any_config(config_file)
    if not isinstance(config, AutoencoderRunConfig):
        raise ConfigError(f"latent.autoencoder '{named}': {path} is a diffusion run, not an autoencoder run: name "
                          "the run directory of `diffsat train` on an autoencoder config")
    return config


def check_latent_shapes(cfg: Config, autoencoder: AutoencoderRunConfig, path: Path) -> None:
    """One-line :class:`ConfigError` unless ``cfg``'s U-Net and data fit the autoencoder run at ``path``."""
    ae, m, d = autoencoder.autoencoder, cfg.model, cfg.data
    size, latent = d.image_size // ae.factor, ae.latent_channels
    if d.channels != ae.in_channels or d.image_size % ae.factor:
        raise ConfigError(
            f"latent.autoencoder {path} encodes {ae.in_channels}-channel images whose sides are multiples of "
            f"{ae.factor}: data.channels is {d.channels} and data.image_size {d.image_size}")
    if (m.in_channels, m.out_channels, m.image_size) != (latent, latent, size):
        raise ConfigError(
            f"latent.autoencoder {path} turns {d.image_size} px images into ({latent}, {size}, {size}) latents: "
            f"set model.in_channels and model.out_channels to {latent} and model.image_size to {size} (they are "
            f"{m.in_channels}, {m.out_channels} and {m.image_size})")


def load_autoencoder(run_dir: str | Path, for_config: Config | None = None) -> LoadedAutoencoder:
    """The autoencoder run ``run_dir`` (its newest readable checkpoint's EMA weights); with ``for_config``,
    first checks that this latent diffusion config fits it (:func:`check_latent_shapes`). Every problem is
    one :class:`ConfigError` or :class:`CheckpointError` line naming the run."""
    path = Path(run_dir)
    cfg = _autoencoder_config(path, str(run_dir))
    if for_config is not None:
        check_latent_shapes(for_config, cfg, path)
    weights_path, tensors = _run_weights(path, "ema", fallback=True)
    with torch.device("meta"):
        network = build_autoencoder(cfg.autoencoder)
    load_state_into(network, tensors, str(weights_path))
    return LoadedAutoencoder(network.eval(), cfg, str(weights_path))


def load_model(checkpoint: str | Path, config: Config | str | Path | None = None, *, ema: bool = True) -> LoadedModel:
    """Load a diffsat run directory, a DDPM-CD/SR3 ``.pth``, or a bare ``.safetensors`` as our ``SR3UNet``.

    ``checkpoint``: a run directory (its latest checkpoint's EMA weights, or the trained weights when
    ``ema=False`` or when it has no EMA file; an unreadable newest checkpoint is a warning and the one before
    it is read) or a weights file, which needs ``config`` (a :class:`Config`,
    our JSON, a DDPM-CD JSON or a run directory). The schedule comes from the file's buffers when present
    (a mismatch with the config is warned about), else from the config.
    """
    path = Path(checkpoint)
    if path.is_dir():
        cfg = _resolve_config(config if config is not None else path, path)
        weights_path, tensors = _run_weights(path, "ema" if ema else "model", fallback=True)
        schedule_file = path / SCHEDULE_FILE
        buffers = read_checkpoint(schedule_file) if schedule_file.is_file() else {}
        weights, _ = to_our_keys(tensors)
        which = "ema" if weights_path.name == EMA_FILE else "model"
        source = str(weights_path)
    else:
        path = _existing_file(path)
        cfg = _resolve_config(config, path)
        weights, buffers = to_our_keys(read_checkpoint(path))
        which = source = str(path)
    return LoadedModel(_network(cfg, weights, source), cfg, _schedule(cfg, buffers, source), which)


def random_model(config: Config | str | Path, seed: int = 0) -> LoadedModel:
    """The network ``config`` describes (a :class:`Config`, our JSON, a DDPM-CD JSON or a run directory) with
    freshly initialised weights from ``seed``, as a :class:`LoadedModel` whose ``weights`` is
    ``"random (seed N)"``: the same architecture and schedule as a trained model, for shapes, speed and
    pipelines when the trained weights are not at hand. The caller's random state is left untouched."""
    cfg = config if isinstance(config, Config) else load_run_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_unet(cfg.model).eval()
    return LoadedModel(_with_autoencoder(network, cfg), cfg, NoiseSchedule.from_config(cfg.diffusion), f"random (seed {seed})")


# ------------------------------------------------------------------------------------------------- convert


def _ordered_for_save(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> StateDict:
    """Weights in the network's key order; only non-contiguous tensors are copied."""
    return {k: weights[k] if weights[k].is_contiguous() else weights[k].contiguous() for k in model.state_dict()}


def _schedule_tensors(buffers: Mapping[str, torch.Tensor]) -> StateDict:
    """``alphas_cumprod`` (T,) float64, plus the file's ``betas`` (T,) float64 when it has them."""
    out = {"alphas_cumprod": schedule_from_buffers(buffers).alphas_cumprod.contiguous()}
    if "betas" in buffers:
        out["betas"] = _vector(buffers["betas"]).contiguous()
    return out


def convert_checkpoint(src: str | Path, config: Config | str | Path | None, out_dir: str | Path) -> Path:
    """Write a diffsat run directory from a DDPM-CD/SR3/bare checkpoint; returns ``out_dir``.

    Files (each written atomically): ``ema.safetensors`` and ``model.safetensors`` (the same weights: a
    foreign generator file holds one set), ``schedule.safetensors`` (``alphas_cumprod`` and ``betas``, float64,
    when the file has buffers) and ``config.json`` (last, so its presence marks a complete directory). The source is
    memory-mapped and the tensors are written without cloning.
    """
    src, out = _existing_file(src), Path(out_dir)
    cfg = _resolve_config(config, src)
    weights, buffers = to_our_keys(read_checkpoint(src))
    with torch.device("meta"):
        model = build_unet(cfg.model)
    check_state_dict(model, weights, str(src))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": WEIGHTS_FORMAT, "source": src.name}
    atomic_write(out / EMA_FILE, lambda p: save_file(_ordered_for_save(model, weights), p, metadata=meta))
    atomic_write(out / MODEL_FILE, lambda p: shutil.copyfile(out / EMA_FILE, p))
    if buffers:
        atomic_write(out / SCHEDULE_FILE, lambda p: save_file(_schedule_tensors(buffers), p, metadata=meta))
    atomic_write(out / CONFIG_FILE, lambda p: save_config(cfg, p))
    return out
