"""diffsat: SR3-type denoising diffusion for satellite imagery and handwritten digits."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "random_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import diffsat`` does not import torch.
    if name in ("load_model", "random_model"):
        from . import rundir

        return getattr(rundir, name)
    raise AttributeError(f"module 'diffsat' has no attribute '{name}'")
