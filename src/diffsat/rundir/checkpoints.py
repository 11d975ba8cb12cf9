"""The checkpoints of a run, and reading them back.

A checkpoint is ``checkpoints/step-XXXXXXX/`` holding ``model.safetensors``, ``ema.safetensors`` (weights,
with the step in their metadata), ``train_state.pt`` (optimiser state, step, EMA update count, time in
training steps; read with ``weights_only=True``) and ``checkpoint.json`` (the step and each file's size,
checked on reading). Readers take the newest committed checkpoint that reads, falling back to the one before
with a warning. Runs of the older flat layout (``train_state.pt`` beside the weights) are read as they are.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from safetensors import safe_open

from ..ddpmcd import StateDict
from ..errors import CheckpointError
from .names import CHECKPOINT_FILES, CHECKPOINTS_DIR, CONFIG_FILE, EMA_FILE, MANIFEST_FILE, MODEL_FILE, STATE_FILE
from .reading import _existing_file, read_checkpoint, read_safetensors, safe_torch_load

Weights = Literal["ema", "model"]
_STEP_DIR = re.compile(r"step-(\d+)")


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


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a diffsat run directory (``config.json`` and model weights or checkpoints)."""
    path = Path(path)
    weights = any((path / n).is_file() for n in (MODEL_FILE, EMA_FILE)) or bool(committed_checkpoints(path))
    return (path / CONFIG_FILE).is_file() and weights


# ------------------------------------------------------------------------------------ reading checkpoints


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
