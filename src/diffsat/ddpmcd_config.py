"""DDPM-CD / SR3 JSON configs, read as they are and mapped onto our :class:`~diffsat.config.Config`.

DDPM-CD's configs carry ``//`` comments and describe the network under ``model.unet`` (``in_channel``,
``out_channel``, ``inner_channel``, ``channel_multiplier``, ``attn_res``, ``res_blocks``, ``dropout``,
``norm_groups``), the schedules under ``model.beta_schedule.{train,val}`` and the image under
``model.diffusion.{image_size, channels, loss, conditional}``. ``norm_groups`` defaults to 32 when absent,
as in DDPM-CD's ``define_G``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .config import Config, ConfigError


def is_ddpmcd_config(data: Any) -> bool:
    """True for a DDPM-CD/SR3 JSON config (it has ``model.unet``; ours never does)."""
    model = data.get("model") if isinstance(data, dict) else None
    return isinstance(model, dict) and isinstance(model.get("unet"), dict)


# our (section, key) -> the DDPM-CD key it comes from (for error messages)
def _foreign_keys(phase: str) -> dict[tuple[str, str], str]:
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
    """``data.channels``: the image channels; for a conditional SR3 model the network input (2 x channels)."""
    channels = _required(diffusion, "channels", "model.diffusion", source)
    if _is_conditional(diffusion, model["in_channels"], channels):
        return model["in_channels"]
    if model["in_channels"] != channels:
        raise ConfigError(
            f"{source}: DDPM-CD config key 'model.unet.in_channel' ({model['in_channels']}) must equal "
            f"'model.diffusion.channels' ({channels}) for an unconditional model (conditional is false)"
        )
    return channels


def _check_network_kind(data: dict[str, Any], source: str) -> None:
    kind = data["model"].get("which_model_G", "sr3")
    if kind != "sr3":
        raise ConfigError(
            f"{source}: DDPM-CD config key 'model.which_model_G' is '{kind}': only the 'sr3' U-Net "
            f"(sr3_modules/unet.py) maps onto diffsat's network"
        )


def _foreign_validation_error(err: ValidationError, phase: str, source: str) -> ConfigError:
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    key = _foreign_keys(phase).get(loc[:2]) if len(loc) >= 2 else None
    where = f"DDPM-CD config key '{key}'" if key else f"config key '{'.'.join(loc) or '(top level)'}'"
    return ConfigError(f"{source}: {where}: {first['msg']} (while mapping the DDPM-CD config)")


def config_from_ddpmcd(data: dict[str, Any], source: str = "<ddpm-cd config>", phase: str = "val") -> Config:
    """Map a DDPM-CD/SR3 JSON config onto our :class:`Config`.

    ``model`` from ``model.unet`` + ``model.diffusion.image_size``; ``diffusion`` from
    ``model.beta_schedule[phase]`` (objective ``eps``, loss from ``model.diffusion.loss``); ``data`` a folder
    with ``channels = model.diffusion.channels`` (for a conditional SR3 model: ``in_channel``, so
    ``model.in_channels != model.out_channels``, see :func:`check_unconditional`). Other keys are ignored.
    """
    _check_network_kind(data, source)
    unet, diffusion = _section(data, "model.unet", source), _section(data, "model.diffusion", source)
    schedule = _section(data, f"model.beta_schedule.{phase}", source)
    image_size = _required(diffusion, "image_size", "model.diffusion", source)
    model = _model_section(unet, image_size, source)
    out = {
        "model": model,
        "diffusion": _diffusion_section(schedule, diffusion, phase, source),
        "data": {"path": None, "kind": "folder", "image_size": image_size,
                 "channels": _data_channels(model, diffusion, source)},
    }
    try:
        return Config.model_validate(out)
    except ValidationError as err:
        raise _foreign_validation_error(err, phase, source) from None


def is_conditional(cfg: Config) -> bool:
    """A conditional SR3 model takes the condition image concatenated to x_t: in_channels != out_channels."""
    return cfg.model.in_channels != cfg.model.out_channels


def check_unconditional(cfg: Config) -> None:
    """Raise :class:`ConfigError` for a conditional (SR3 super-resolution) model: diffsat cannot sample it."""
    if is_conditional(cfg):
        m = cfg.model
        raise ConfigError(
            f"this is a conditional SR3 model (in_channels {m.in_channels} = condition image + x_t, out_channels "
            f"{m.out_channels}): diffsat samples unconditional models only (DDPM-CD's generator is unconditional)"
        )
