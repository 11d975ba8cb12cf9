"""``diffsat convert``: a diffsat run directory from a DDPM-CD / SR3 / bare checkpoint."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..config import Config, save_config
from ..ddpmcd import StateDict, to_our_keys
from ..fileio import atomic_write
from ..models.unet import build_unet
from .loading import _resolve_config
from .names import CONFIG_FILE, EMA_FILE, MODEL_FILE, SCHEDULE_FILE, WEIGHTS_FORMAT
from .reading import _existing_file, read_checkpoint
from .schedules import _vector, schedule_from_buffers
from .state_dict import check_state_dict


def _ordered_for_save(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> StateDict:
    """Weights in the network's key order; only non-contiguous tensors are copied."""
    return {k: weights[k] if weights[k].is_contiguous() else weights[k].contiguous() for k in model.state_dict()}


def _schedule_tensors(buffers: Mapping[str, torch.Tensor]) -> StateDict:
    """``alphas_cumprod`` (T,) float64, plus the file's ``betas`` (T,) float64 when it has them."""
    out = {"alphas_cumprod": schedule_from_buffers(buffers).alphas_cumprod.contiguous()}
    if "betas" in buffers:
        out["betas"] = _vector(buffers["betas"]).contiguous()
    return out


def convert_checkpoint(src: str | Path, config: Config | str | Path | None, out_dir: str | Path) -> Path:
    """Write a diffsat run directory from a DDPM-CD/SR3/bare checkpoint; returns ``out_dir``.

    Files (each written atomically): ``ema.safetensors`` and ``model.safetensors`` (the same weights: a
    foreign generator file holds one set), ``schedule.safetensors`` (``alphas_cumprod`` and ``betas``, float64,
    when the file has buffers) and ``config.json`` (last, so its presence marks a complete directory). The source is
    memory-mapped and the tensors are written without cloning.
    """
    src, out = _existing_file(src), Path(out_dir)
    cfg = _resolve_config(config, src)
    weights, buffers = to_our_keys(read_checkpoint(src))
    with torch.device("meta"):
        model = build_unet(cfg.model)
    check_state_dict(model, weights, str(src))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": WEIGHTS_FORMAT, "source": src.name}
    atomic_write(out / EMA_FILE, lambda p: save_file(_ordered_for_save(model, weights), p, metadata=meta))
    atomic_write(out / MODEL_FILE, lambda p: shutil.copyfile(out / EMA_FILE, p))
    if buffers:
        atomic_write(out / SCHEDULE_FILE, lambda p: save_file(_schedule_tensors(buffers), p, metadata=meta))
    atomic_write(out / CONFIG_FILE, lambda p: save_config(cfg, p))
    return out
