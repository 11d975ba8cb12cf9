"""Class labels for sampling and classifier-free guidance (Ho & Salimans 2022).

A class-conditional network ``net(x_t, level, labels)`` (see :class:`diffsat.models.unet.SR3UNet`) trained
with label dropout also predicts the unconditional output ``net(x_t, level, null)``. Guidance with scale
``s`` combines the two predictions (Ho & Salimans 2022, eq. 6, with their ``w = s - 1``):

    pred = pred(x_t, null) + s * (pred(x_t, c) - pred(x_t, null))

``s = 1`` is the conditional model alone, ``s = 0`` the unconditional one, ``s > 1`` pushes samples towards
what makes them recognisably of class ``c``. The combination is linear in the prediction, so it applies to
the eps, x0 and v objectives alike (each is an affine function of the others at a fixed x_t and level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import DiffsatError

Prediction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LabelError(DiffsatError):
    """Class labels or a guidance scale that the network cannot take (one line naming the option)."""


def sample_labels(n: int, num_classes: int, requested: Sequence[int] | None = None) -> torch.Tensor:
    """Labels of samples ``0..n-1``: ``(n,)`` int64; sample ``i`` gets ``requested[i % len(requested)]``,
    or ``i % num_classes`` (every class in turn, equal counts) when nothing is requested. Sample ``i``'s
    label depends on ``i`` alone, so it does not change with the batch size."""
    cycle = list(range(num_classes)) if not requested else list(requested)
    bad = [c for c in cycle if not 0 <= c < num_classes]
    if bad:
        raise LabelError(f"class label {bad[0]} out of range: this model has classes 0..{num_classes - 1} (--label)")
    return torch.tensor(cycle, dtype=torch.int64).repeat(-(-n // len(cycle)))[:n]


def guided_prediction(net: nn.Module, labels: torch.Tensor, scale: float, null_label: int) -> Prediction:
    """``(x_t (B, C, H, W), level (B,)) -> prediction (B, C_out, H, W)`` of the class-conditional ``net`` for
    ``labels`` ``(B,)``, guided with ``scale`` (module docstring). For ``scale != 1`` the conditional and
    unconditional predictions come from one network call on the doubled batch."""
    if scale == 1.0:
        return lambda x, level: net(x, level, labels.to(x.device))

    def guided(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        null = torch.full((b,), null_label, dtype=torch.int64, device=x.device)
        both = net(torch.cat([x, x]), torch.cat([level, level]), torch.cat([labels.to(x.device), null]))
        conditional, unconditional = both[:b], both[b:]
        return unconditional + scale * (conditional - unconditional)

    return guided
