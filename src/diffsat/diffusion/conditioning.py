"""How a super-resolution network sees its condition, and the regression baseline's loss.

Diffusion (SR3): ``net(cat(condition, x_t), level)``: the bicubically upsampled low-resolution image first,
then x_t, along the channels (SR3's ``torch.cat([x_in['SR'], x_noisy], dim=1)``). The samplers stay pure: they
call :func:`conditioned`, a function of ``(x_t, level)`` like any network.

Regression (SR3's baseline): the same U-Net maps the condition alone to the high-resolution image,
``net(condition, 1)`` (the noise-level input held at 1, "clean"), trained on the direct L1 or L2 loss.

With ``condition.target "residual"`` either method learns the high-resolution image minus the condition
(:func:`to_target`) and its output is added back to the condition (:func:`from_target`).

Tensors: condition and images ``(B, C, H, W)`` in [-1, 1]; levels ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

REGRESSION_LEVEL = 1.0
"""The noise-level input of a regression network (sqrt(alpha_bar) = 1: no noise)."""


def conditioned(net: Callable[..., torch.Tensor], condition: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x_t, level) -> net(cat(condition, x_t), level)``: an SR3 network with its condition bound."""

    def prediction(x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return net(torch.cat((condition.to(x_t.dtype), x_t), dim=1), level)

    return prediction


def to_target(image: torch.Tensor, condition: torch.Tensor, target: str) -> torch.Tensor:
    """What the network learns to make of the high-resolution ``image``: the image itself (``target "image"``)
    or ``image - condition`` (``"residual"``, values in [-2, 2], mostly within [-1, 1])."""
    return image - condition if target == "residual" else image


def from_target(made: torch.Tensor, condition: torch.Tensor, target: str) -> torch.Tensor:
    """The image in [-1, 1] from what the network made (:func:`to_target`'s inverse, clamped)."""
    return (condition + made).clamp(-1, 1) if target == "residual" else made


def regress(net: nn.Module, condition: torch.Tensor) -> torch.Tensor:
    """A regression network's output ``(B, C, H, W)`` for ``condition`` ``(B, C, H, W)``."""
    level = torch.full((condition.shape[0],), REGRESSION_LEVEL, device=condition.device)
    return net(condition, level)


@dataclass(frozen=True)
class RegressionLoss:
    """``loss(net, condition, target) -> {"loss": scalar}``: the mean L1 or L2 difference of
    :func:`regress`'s output from ``target`` ``(B, C, H, W)``."""

    loss: str = "l1"

    def __call__(self, net: nn.Module, condition: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        diff = regress(net, condition).float() - target.float()
        return {"loss": (diff.abs() if self.loss == "l1" else diff.square()).mean()}
