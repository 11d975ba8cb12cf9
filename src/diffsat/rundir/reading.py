"""Reading weight files: ``torch.load(weights_only=True)`` with one-line errors, and ``.safetensors``.

A pickle that needs arbitrary code is refused, never executed.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..ddpmcd import StateDict, unwrap_state_dict
from ..errors import CheckpointError
from .names import CONFIG_FILE, EMA_FILE, MODEL_FILE


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
