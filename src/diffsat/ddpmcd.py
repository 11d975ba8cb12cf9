"""The DDPM-CD / SR3 adapter: their JSON configs and their checkpoint layouts, mapped onto ours.

**Configs.** DDPM-CD's configs carry ``//`` comments and describe the network under ``model.unet``
(``in_channel``, ``out_channel``, ``inner_channel``, ``channel_multiplier``, ``attn_res``, ``res_blocks``,
``dropout``, ``norm_groups``), the schedules under ``model.beta_schedule.{train,val}`` and the image under
``model.diffusion.{image_size, channels, loss, conditional}``. :func:`map_ddpmcd_config` maps them onto the
sections of our config (``norm_groups`` defaults to 32 when absent, as in DDPM-CD's ``define_G``);
:func:`diffsat.config.load_config` validates the result.

**Checkpoints.** Three weight layouts map onto :class:`~diffsat.models.unet.SR3UNet` by key names alone:

- ``ddpmcd``: ``torch.save(GaussianDiffusion.state_dict())`` of DDPM-CD (``*_gen.pth``): ``denoise_fn.<our key>``
  plus 12 float32 noise-schedule buffers of length ``n_timestep`` (:data:`BUFFER_NAMES`);
- ``sr3``: the original SR3 code (Janspiry/Image-Super-Resolution-via-Iterative-Refinement), whose first conv
  is ``downs.0`` (no ``init_conv``), so every later ``downs`` index is one higher than ours;
- ``bare``: a U-Net state dict with our (= DDPM-CD's unprefixed) keys.

A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is accepted. Reading the files safely is
:mod:`diffsat.rundir`'s business.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import torch

from .errors import CheckpointError, ConfigError

# ------------------------------------------------------------------------------------------------ configs


def is_ddpmcd_config(data: Any) -> bool:
    """True for a DDPM-CD/SR3 JSON config (it has ``model.unet``; ours never does)."""
    model = data.get("model") if isinstance(data, dict) else None
    return isinstance(model, dict) and isinstance(model.get("unet"), dict)


def foreign_keys(phase: str) -> dict[tuple[str, str], str]:
    """Our ``(section, key)`` -> the DDPM-CD key it is mapped from, for error messages."""
    unet = {
        "in_channels": "in_channel",
        "out_channels": "out_channel",
        "base_channels": "inner_channel",
        "channel_mults": "channel_multiplier",
        "attn_resolutions": "attn_res",
        "res_blocks": "res_blocks",
        "dropout": "dropout",
        "norm_groups": "norm_groups",
    }
    sched = {"schedule": "schedule", "timesteps": "n_timestep",
             "beta_start": "linear_start", "beta_end": "linear_end"}
    keys = {("model", ours): f"model.unet.{theirs}" for ours, theirs in unet.items()}
    keys |= {("diffusion", ours): f"model.beta_schedule.{phase}.{theirs}" for ours, theirs in sched.items()}
    keys |= {("model", "image_size"): "model.diffusion.image_size",
             ("data", "image_size"): "model.diffusion.image_size"}
    keys |= {("data", "channels"): "model.diffusion.channels", ("diffusion", "loss"): "model.diffusion.loss"}
    return keys


def _section(data: dict[str, Any], dotted: str, source: str) -> dict[str, Any]:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: DDPM-CD config key '{dotted}': missing or not an object")
    return node


def _required(section: dict[str, Any], key: str, dotted: str, source: str) -> Any:
    if key not in section:
        raise ConfigError(f"{source}: DDPM-CD config key '{dotted}.{key}': missing")
    return section[key]


def _model_section(unet: dict[str, Any], image_size: Any, source: str) -> dict[str, Any]:
    req = {k: _required(unet, k, "model.unet", source) for k in
           ("in_channel", "out_channel", "inner_channel", "channel_multiplier", "attn_res", "res_blocks", "dropout")}
    attn = req["attn_res"]
    return {
        "in_channels": req["in_channel"],
        "out_channels": req["out_channel"],
        "base_channels": req["inner_channel"],
        "channel_mults": req["channel_multiplier"],
        "attn_resolutions": attn if isinstance(attn, list) else [attn],
        "res_blocks": req["res_blocks"],
        "dropout": req["dropout"],
        "norm_groups": 32 if unet.get("norm_groups") is None else unet["norm_groups"],  # define_G: absent/null -> 32
        "image_size": image_size,
    }


def _diffusion_section(
    schedule: dict[str, Any], diffusion: dict[str, Any], phase: str, source: str
) -> dict[str, Any]:
    dotted = f"model.beta_schedule.{phase}"
    return {
        "schedule": _required(schedule, "schedule", dotted, source),
        "timesteps": _required(schedule, "n_timestep", dotted, source),
        "beta_start": schedule.get("linear_start", 1e-4),  # make_beta_schedule's defaults
        "beta_end": schedule.get("linear_end", 2e-2),
        "objective": "eps",
        "loss": diffusion.get("loss", "l1"),  # the original SR3 hard-codes loss_type='l1'
    }


def _is_conditional(diffusion: dict[str, Any], in_channel: Any, channels: Any) -> bool:
    flag = diffusion.get("conditional")
    return bool(flag) if flag is not None else in_channel != channels


def _data_channels(model: dict[str, Any], diffusion: dict[str, Any], source: str) -> Any:
    """``data.channels``: the image channels (a conditional SR3 model takes twice as many at its input)."""
    channels = _required(diffusion, "channels", "model.diffusion", source)
    if not _is_conditional(diffusion, model["in_channels"], channels) and model["in_channels"] != channels:
        raise ConfigError(
            f"{source}: DDPM-CD config key 'model.unet.in_channel' ({model['in_channels']}) must equal "
            f"'model.diffusion.channels' ({channels}) for an unconditional model (conditional is false)"
        )
    return channels


def _condition_section(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A conditional SR3 config's ``condition``: x(r_resolution / l_resolution) super-resolution with SR3's
    bicubic degradation, from ``datasets.train`` (or ``datasets.val``)."""
    for phase in ("train", "val"):
        node = data.get("datasets", {}).get(phase) if isinstance(data.get("datasets"), dict) else None
        if isinstance(node, dict) and "l_resolution" in node and "r_resolution" in node:
            low, high = node["l_resolution"], node["r_resolution"]
            if not (isinstance(low, int) and isinstance(high, int) and low > 0 and high % low == 0):
                raise ConfigError(f"{source}: DDPM-CD config keys 'datasets.{phase}.l_resolution' / 'r_resolution' "
                                  f"({low}, {high}) must be sizes whose ratio is an integer scale")
            return {"kind": "super_resolution", "scale": high // low, "downsample": "bicubic", "method": "diffusion"}
    raise ConfigError(f"{source}: DDPM-CD config key 'datasets.train.l_resolution': missing (a conditional SR3 "
                      "config names its low and high resolutions there, e.g. 16 and 128)")


def _check_network_kind(data: dict[str, Any], source: str) -> None:
    kind = data["model"].get("which_model_G", "sr3")
    if kind != "sr3":
        raise ConfigError(
            f"{source}: DDPM-CD config key 'model.which_model_G' is '{kind}': only the 'sr3' U-Net "
            f"(sr3_modules/unet.py) maps onto diffsat's network"
        )


def map_ddpmcd_config(data: dict[str, Any], source: str = "<ddpm-cd config>", phase: str = "val") -> dict[str, Any]:
    """Map a DDPM-CD/SR3 JSON config onto the sections of our config, as a plain dict (validated by
    :func:`diffsat.config.config_from_ddpmcd`).

    ``model`` from ``model.unet`` + ``model.diffusion.image_size``; ``diffusion`` from
    ``model.beta_schedule[phase]`` (objective ``eps``, loss from ``model.diffusion.loss``); ``data`` a folder
    with ``channels = model.diffusion.channels``; for a conditional SR3 model (``conditional``, or
    ``in_channel != channels``) also ``condition`` (super-resolution by ``datasets.train.r_resolution /
    l_resolution``). Other keys are ignored. A missing key is a
    :class:`~diffsat.errors.ConfigError` naming it.
    """
    _check_network_kind(data, source)
    unet, diffusion = _section(data, "model.unet", source), _section(data, "model.diffusion", source)
    schedule = _section(data, f"model.beta_schedule.{phase}", source)
    image_size = _required(diffusion, "image_size", "model.diffusion", source)
    model = _model_section(unet, image_size, source)
    channels = _data_channels(model, diffusion, source)
    mapped = {
        "model": model,
        "diffusion": _diffusion_section(schedule, diffusion, phase, source),
        "data": {"path": None, "kind": "folder", "image_size": image_size, "channels": channels},
    }
    if _is_conditional(diffusion, model["in_channels"], channels):
        mapped["condition"] = _condition_section(data, source)
    return mapped


# -------------------------------------------------------------------------------------------- checkpoints

Layout = Literal["ddpmcd", "sr3", "bare"]
StateDict = dict[str, torch.Tensor]

PREFIX = "denoise_fn."
BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
WRAPPER_KEYS = ("state_dict", "model")


_DOWNS = re.compile(r"^downs\.(\d+)\.(.+)$")


def detect_layout(state_dict: Mapping[str, Any]) -> Layout:
    """``sr3`` when the first conv is ``downs.0`` (no ``init_conv``); else ``ddpmcd`` (``denoise_fn.`` prefix)
    or ``bare`` (our keys)."""
    stripped = {k.removeprefix(PREFIX) for k in state_dict}
    if "downs.0.weight" in stripped and "init_conv.weight" not in stripped:
        return "sr3"
    return "ddpmcd" if any(k.startswith(PREFIX) for k in state_dict) else "bare"


def map_key(key: str, layout: Layout) -> str:
    """Our key for a U-Net key of ``layout`` (pure string function; schedule buffers are not U-Net keys).

    >>> map_key("denoise_fn.downs.0.weight", "sr3"), map_key("denoise_fn.downs.3.conv.bias", "sr3")
    ('init_conv.weight', 'downs.2.conv.bias')
    """
    if layout == "bare":
        return key
    key = key.removeprefix(PREFIX)
    if layout == "ddpmcd":
        return key
    if layout != "sr3":
        raise ValueError(f"unknown layout '{layout}': one of ddpmcd, sr3, bare")
    match = _DOWNS.match(key)
    if match is None:
        return key
    index, rest = int(match[1]), match[2]
    return f"init_conv.{rest}" if index == 0 else f"downs.{index - 1}.{rest}"


def to_our_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """Split a checkpoint into (U-Net state dict with our keys, schedule buffers); tensors are not copied."""
    layout = detect_layout(state_dict)
    buffers = {k: v for k, v in state_dict.items() if k in BUFFER_NAMES}
    unet: StateDict = {}
    for key, value in state_dict.items():
        if key in buffers:
            continue
        ours = map_key(key, layout)
        if ours in unet:
            raise CheckpointError(
                f"two checkpoint keys map to '{ours}' (layout {layout}): a mixed or corrupt state dict"
            )
        unet[ours] = value
    return unet, buffers


def unwrap_state_dict(obj: Mapping[str, Any], source: str) -> StateDict:
    """The tensors of a state dict, unwrapping ``{"state_dict": ...}`` / ``{"model": ...}``."""
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        hint = ": this looks like DDPM-CD's *_opt.pth; pass the *_gen.pth beside it" if "optimizer" in obj else ""
        raise CheckpointError(f"{source}: entry '{bad}' is a {type(obj[bad]).__name__}, not a tensor{hint}")
    if not obj:
        raise CheckpointError(f"{source}: the state dict is empty")
    return dict(obj)
