"""A diffusion run's starting weights: another run's or checkpoint's (``train.init_from``), and parts of the
U-Net kept frozen (``train.freeze``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..rundir import load_model, load_state_into

PARTS = {
    "noise_embedding": ("noise_level_mlp.", "label_emb."),
    "encoder": ("init_conv.", "downs."),
    "middle": ("mid.",),
    "decoder": ("ups.", "final_conv."),
}
"""The named parts of an SR3 U-Net, as prefixes of its parameter names."""


def initialise_from(net: nn.Module, source: str, config: str | None) -> None:
    """Copy the weights of ``source`` (see ``train.init_from``; ``config`` for a weights file) into ``net``;
    a key or shape that differs is one line naming the source and the key."""
    loaded = load_model(source, config)
    load_state_into(net, loaded.network.state_dict(), f"train.init_from {source}")


def freeze(net: nn.Module, parts: Sequence[str]) -> int:
    """Turn off the gradients of the parameters in ``parts`` (names of :data:`PARTS` or name prefixes);
    returns how many parameters (elements) are frozen. A part that matches nothing is a :class:`ConfigError`.

    The frozen modules hand on contiguous outputs: an attention block's output is laid out channels-last, and
    PyTorch 2.13's CPU GroupNorm backward crashes (a segmentation fault) on a channels-last input that needs no
    gradient while its own weights do, which is what a trainable block after a frozen one sees."""
    frozen = 0
    named = dict(net.named_parameters())
    for part in parts:
        prefixes = PARTS.get(part, (part,))
        hits = [name for name in named if name.startswith(prefixes)]
        if not hits:
            raise ConfigError(f"train.freeze '{part}': no such part of the U-Net (parts: {', '.join(PARTS)}, or a "
                              "parameter-name prefix such as 'downs.0')")
        for name in hits:
            if named[name].requires_grad:
                named[name].requires_grad_(False)
                frozen += named[name].numel()
        for prefix in prefixes:
            _contiguous_outputs(net, prefix.rstrip("."))
    return frozen


def _contiguous_outputs(net: nn.Module, name: str) -> None:
    """Make the outputs of module ``name`` of ``net`` (each entry, for a list of modules) contiguous."""
    try:
        module = net.get_submodule(name)
    except AttributeError:  # a parameter-name prefix that is not a module name (e.g. 'downs.0.res')
        return
    for m in module if isinstance(module, nn.ModuleList) else [module]:
        m.register_forward_hook(_contiguous)


def _contiguous(module: nn.Module, inputs: object, output: object) -> object:
    return output.contiguous() if isinstance(output, torch.Tensor) else output
