"""Run-directory checkpoints: safetensors weights, a weights-only train state, atomic writes.

A run directory holds ``config.json``, ``model.safetensors``, ``ema.safetensors`` and ``train_state.pt``
(optimizer and scheduler state, step, EMA update count, elapsed time). Each file is written to a temporary
name in the same directory and moved into place with ``os.replace``, so a crash leaves the previous
checkpoint intact. The three files carry the same ``step``; a mismatch on load is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import atomic_write

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "train_state.pt"
SCHEDULE_FILE = "schedule.safetensors"
"""Written by ``diffsat convert`` when a foreign checkpoint carries its own noise-schedule buffers."""
WEIGHTS_FORMAT = "diffsat-unet-v1"


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, ema: torch.nn.Module, state: dict[str, Any]) -> None:
    """Write model, EMA and train state for ``state["step"]`` atomically into ``run_dir``."""
    meta = {"step": str(state["step"]), "format": WEIGHTS_FORMAT}
    atomic_write(run_dir / MODEL_FILE, lambda p: save_file(_weights(model), p, metadata=meta))
    atomic_write(run_dir / EMA_FILE, lambda p: save_file(_weights(ema), p, metadata=meta))
    atomic_write(run_dir / STATE_FILE, lambda p: torch.save(state, p))


def weights_step(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("step", -1))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found (is this a diffsat run directory?)")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def load_train_state(run_dir: Path) -> dict[str, Any]:
    """Load ``train_state.pt`` (weights_only) and check the weight files belong to the same step."""
    path = run_dir / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no train state to resume from; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name in (MODEL_FILE, EMA_FILE):
        step = weights_step(run_dir / name)
        if step != state["step"]:
            raise CheckpointError(
                f"{run_dir / name}: holds step {step} but {STATE_FILE} holds step {state['step']} "
                f"(interrupted save?): restore a consistent copy or start a new run"
            )
    return state


def load_into(module: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``module`` with a clear message on key or shape mismatch."""
    weights = load_weights(path)
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in weights:
            raise CheckpointError(f"{path}: missing key '{key}': the config does not match these weights")
        if weights[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: key '{key}' has shape {tuple(weights[key].shape)} but the config builds "
                f"{tuple(value.shape)}: use the config.json saved with these weights"
            )
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: unexpected key '{extra[0]}': the config does not match these weights")
    module.load_state_dict(weights)
