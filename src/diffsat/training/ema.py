"""Exponential moving average of model weights.

``shadow <- d * shadow + (1 - d) * param`` with the warm-up ``d = min(decay, (1 + n) / (10 + n))`` after
``n`` updates, so a short run is not dominated by the random initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds an eval-mode copy of ``model`` whose floating-point state follows the EMA of the model's."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current state (one fused multi-tensor lerp for the floats)."""
        d = self.current_decay()
        ema_state, state = self.model.state_dict(), model.state_dict()
        floats = [name for name, value in ema_state.items() if value.dtype.is_floating_point]
        torch._foreach_lerp_([ema_state[n] for n in floats], [state[n].detach() for n in floats], 1.0 - d)
        for name, value in ema_state.items():
            if not value.dtype.is_floating_point:
                value.copy_(state[name])
        self.updates += 1
