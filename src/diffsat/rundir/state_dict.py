"""The one state-dict check: every key and shape of a checkpoint against the configured network, with the
likely cause of a difference; and loading checked weights into a network (also one on the ``meta`` device)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import CheckpointError

Shape = tuple[int, ...] | None


def _hint(key: str, file_shape: Shape, model_shape: Shape, model: nn.Module) -> str:
    """The likely cause of a key/shape difference, from the key name and the two shapes."""
    cfg = getattr(model, "config", None)
    if ".attn." in key:
        where = (f" (configured image_size {cfg.image_size}, attn_resolutions {tuple(cfg.attn_resolutions)})"
                 if cfg else "")
        return (f"attention placement differs{where}: attention sits where image_size / 2**level is in "
                f"attn_resolutions, so a wrong model.image_size (DDPM-CD: model.diffusion.image_size, 256 for "
                f"the released generator) or attn_res moves it")
    if file_shape and model_shape and len(file_shape) == len(model_shape) == 4:
        if key.startswith("init_conv.") and file_shape[1] != model_shape[1]:
            return (f"in_channels differ (checkpoint {file_shape[1]}, config {model_shape[1]}); a conditional "
                    f"SR3 model takes 2 x channels")
        if key.startswith("final_conv.") and file_shape[0] != model_shape[0]:
            return f"out_channels differ (checkpoint {file_shape[0]}, config {model_shape[0]})"
    if key.startswith("noise_level_mlp.") and file_shape and model_shape:
        return (f"model.base_channels (DDPM-CD inner_channel) differs: the checkpoint's is {file_shape[-1]}, "
                f"the config's {model_shape[-1]}")
    if key.startswith(("init_conv.", "downs.0.weight", "downs.0.bias")):
        return "the SR3 layout (first conv = downs.0) and the DDPM-CD layout (init_conv) are mixed up"
    return ("the config does not describe this network: check base_channels (inner_channel), channel_mults "
            "(channel_multiplier) and res_blocks, or the SR3 vs DDPM-CD layout")


def _shape(t: torch.Tensor | None) -> Shape:
    return None if t is None else tuple(t.shape)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` for the first missing key, shape mismatch, or unexpected key."""
    expected = model.state_dict()
    for key, ours in expected.items():
        theirs = state_dict.get(key)
        if theirs is None:
            raise CheckpointError(f"{source}: key '{key}' (shape {_shape(ours)}) is missing from the checkpoint: "
                                  f"{_hint(key, None, _shape(ours), model)}")
        if theirs.shape != ours.shape:
            raise CheckpointError(
                f"{source}: key '{key}' has shape {_shape(theirs)} in the checkpoint but the config builds "
                f"{_shape(ours)}: {_hint(key, _shape(theirs), _shape(ours), model)}")
    extra = next((k for k in state_dict if k not in expected), None)
    if extra is not None:
        shape = _shape(state_dict[extra])
        raise CheckpointError(f"{source}: unexpected key '{extra}' (shape {shape}) not in the configured network: "
                              f"{_hint(extra, shape, None, model)}")


def _materialise(model: nn.Module) -> None:
    """Give a meta-device model uninitialised CPU storage (no random init: every tensor is loaded next)."""
    persistent = set(model.state_dict())
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if names - persistent:
        raise RuntimeError(f"non-persistent tensors {sorted(names - persistent)[:3]} would stay uninitialised")
    model.to_empty(device="cpu")


def load_state_into(model: nn.Module, unet_state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Check keys and shapes (:func:`check_state_dict`), then copy the weights into ``model``.

    A model on the ``meta`` device is first given CPU storage, so the 391M network is never randomly
    initialised; the weights are copied (the model never aliases a memory-mapped file).
    """
    check_state_dict(model, unet_state_dict, source)
    if any(p.is_meta for p in model.parameters()):
        _materialise(model)
    model.load_state_dict(unet_state_dict, strict=True)
