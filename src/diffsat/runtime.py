"""Where and how computation runs: device choice and bf16 support."""

from __future__ import annotations

import torch

from .errors import DiffsatError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffsatError(f"device '{name}' asked for, but PyTorch sees no CUDA GPU: use --device cpu or auto")
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise DiffsatError(f"unknown device '{name}': one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix work natively (AVX512-BF16 or AMX), so bf16 autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
