"""The one converter of the metric modules: features or images given as numpy arrays or tensors."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def as_cpu_tensor(x: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (a tensor, or anything numpy reads as an array) as a detached CPU tensor of ``dtype``, same shape."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().cpu().to(dtype)
