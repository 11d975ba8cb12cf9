"""Load DDPM-CD / SR3 pretrained checkpoints and configs into diffsat.

Three weight layouts are read (all map onto :class:`~diffsat.models.unet.SR3UNet` by key names alone):

- ``ddpmcd``: ``torch.save(GaussianDiffusion.state_dict())`` of DDPM-CD (``*_gen.pth``): ``denoise_fn.<our key>``
  plus 12 float32 noise-schedule buffers of length ``n_timestep`` (:data:`BUFFER_NAMES`);
- ``sr3``: the original SR3 code (Janspiry/Image-Super-Resolution-via-Iterative-Refinement), whose first conv
  is ``downs.0`` (no ``init_conv``), so every later ``downs`` index is one higher than ours;
- ``bare``: a U-Net state dict with our (= DDPM-CD's unprefixed) keys.

A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is accepted. Files are read with
``torch.load(weights_only=True)``: a pickle that needs arbitrary code is refused, never executed. DDPM-CD/SR3
JSON configs (with ``//`` comments) map onto our :class:`~diffsat.config.Config`.
"""

from __future__ import annotations

import pickle
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..config import (
    SCHEDULE_NAMES,
    Config,
    DiffusionConfig,
    load_config,
    save_config,
)
from ..diffusion.schedules import F64, NoiseSchedule, make_betas
from ..errors import CheckpointError
from ..fileio import atomic_write
from ..training.checkpoint import (
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    SCHEDULE_FILE,
    WEIGHTS_FORMAT,
)
from .unet import build_unet

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


# ------------------------------------------------------------------------------------------------ keys

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


# ----------------------------------------------------------------------------------------------- files


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a run directory needs config.json and ema/model.safetensors)")
    return path


def _refusal_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines()]
    detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "")
    return f" ({detail})" if detail else ""


def _torch_load(path: Path, mmap: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused for safety: loading it needs arbitrary unpickling{_refusal_reason(err)}, which "
            f"could run code from the file; nothing was executed. Re-save it as a state dict of tensors "
            f"(torch.save(model.state_dict())) or safetensors on a trusted machine"
        ) from None
    except (EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError, OSError) as err:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {err})") from None


def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True, mmap=True)``, one-line errors.

    Falls back to ``mmap=False`` for the pre-1.6 (non-zip) format. Never executes code from the file.
    """
    path = _existing_file(path)
    try:
        obj = _torch_load(path, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({str(err).splitlines()[0]})") from None
        try:
            obj = _torch_load(path, mmap=False)
        except RuntimeError as err2:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({str(err2).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


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


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read_checkpoint(path: str | Path) -> StateDict:
    """All tensors of a ``.pth``/``.pt`` (weights-only, memory-mapped) or ``.safetensors`` file.

    The format is sniffed from the first bytes, not the suffix.
    """
    path = _existing_file(path)
    if not _is_safetensors(path):
        return unwrap_state_dict(safe_torch_load(path), str(path))
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


# ----------------------------------------------------------------------------------------------- model


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


def schedule_from_buffers(buffers: Mapping[str, torch.Tensor]) -> NoiseSchedule:
    """The schedule stored in a checkpoint: ``alphas_cumprod`` (T,) as float64 (else derived from ``betas``)."""
    if "alphas_cumprod" in buffers:
        return NoiseSchedule(buffers["alphas_cumprod"].detach().to(F64).reshape(-1).clone())
    if "betas" in buffers:
        return NoiseSchedule.from_betas(buffers["betas"].detach().reshape(-1))
    raise CheckpointError("the checkpoint holds no schedule buffers (alphas_cumprod / betas)")


def _guess_schedule(betas: torch.Tensor) -> str:
    n, start, end = betas.shape[0], float(betas[0]), float(betas[-1])
    for name in SCHEDULE_NAMES:
        candidate = make_betas(name, n, start, end)
        if torch.allclose(candidate, betas, rtol=1e-5, atol=0.0):
            return name
    return "custom"


def _describe(name: str, betas: torch.Tensor) -> str:
    return f"{name} (T={betas.shape[0]}, beta {float(betas[0]):.3g}..{float(betas[-1]):.3g})"


def _vector(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(F64).reshape(-1)


def _max_difference(theirs: torch.Tensor, ours: torch.Tensor, what: str) -> str | None:
    """``None`` when equal length and within 1e-6 relative, else a ``, max |... difference| x`` fragment."""
    if theirs.shape != ours.shape:
        return ""
    if bool(((theirs - ours).abs() <= 1e-6 * ours.abs()).all()):
        return None
    return f", max |{what} difference| {float((theirs - ours).abs().max()):.3g}"


def compare_schedule(buffers: Mapping[str, torch.Tensor], diffusion: DiffusionConfig) -> str | None:
    """One-line warning when the checkpoint's schedule differs from the config's; ``None`` if they agree.

    Compares ``betas`` (T,) with ``make_betas`` of the config to 1e-6 relative; a file with only
    ``alphas_cumprod`` is compared on alpha_bar (betas derived from float32 alpha_bar are too noisy).
    """
    ours = make_betas(diffusion.schedule, diffusion.timesteps, diffusion.beta_start, diffusion.beta_end)
    if "betas" in buffers:
        theirs = _vector(buffers["betas"])
        diff, held = _max_difference(theirs, ours, "beta"), _describe(_guess_schedule(theirs), theirs)
    else:
        theirs = schedule_from_buffers(buffers).alphas_cumprod
        diff = _max_difference(theirs, torch.cumprod(1.0 - ours, 0), "alpha_bar")
        held = f"a schedule of T={theirs.shape[0]} (alphas_cumprod only)"
    if diff is None:
        return None
    return (f"noise schedule mismatch: the checkpoint holds {held} but the config's diffusion section gives "
            f"{_describe(diffusion.schedule, ours)}{diff}; the checkpoint's schedule is used")


def _resolve_config(config: Config | str | Path | None, source: Path) -> Config:
    if config is None:
        raise CheckpointError(
            f"{source}: a weights file carries no network description: pass --config CONFIG.json "
            f"(a diffsat config or the DDPM-CD/SR3 JSON the weights were trained with)")
    return config if isinstance(config, Config) else load_config(config)


def _schedule(cfg: Config, buffers: Mapping[str, torch.Tensor], source: str) -> NoiseSchedule:
    if not buffers:
        return NoiseSchedule.from_config(cfg.diffusion)
    message = compare_schedule(buffers, cfg.diffusion)
    if message:
        warnings.warn(f"{source}: {message}", stacklevel=4)  # the caller of load_model
    return schedule_from_buffers(buffers)


def _assemble(
    cfg: Config, weights: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], source: str
) -> nn.Module:
    with torch.device("meta"):
        model = build_unet(cfg.model)
    load_state_into(model, weights, source)
    model.eval()
    model.diffsat_config = cfg
    model.diffsat_schedule = _schedule(cfg, buffers, source)
    return model


def _run_dir_parts(run_dir: Path, config: Config | str | Path | None, ema: bool) -> tuple[Config, Path, StateDict]:
    cfg = _resolve_config(config if config is not None else run_dir / CONFIG_FILE, run_dir)
    names = (EMA_FILE, MODEL_FILE) if ema else (MODEL_FILE,)
    weights = next((run_dir / n for n in names if (run_dir / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{run_dir}: no {' or '.join(names)} in this run directory")
    schedule = run_dir / SCHEDULE_FILE
    buffers = read_checkpoint(schedule) if schedule.is_file() else {}
    return cfg, weights, buffers


def load_model(checkpoint: str | Path, config: Config | str | Path | None = None, *, ema: bool = True) -> nn.Module:
    """Load a diffsat run directory, a DDPM-CD/SR3 ``.pth``, or a bare ``.safetensors`` as our ``SR3UNet``.

    ``checkpoint``: a run directory (``config.json`` + ``ema.safetensors``/``model.safetensors``; EMA unless
    ``ema=False``) or a weights file, which needs ``config`` (a :class:`Config`, our JSON, or a DDPM-CD JSON).
    Returns the network in eval mode with ``model.diffsat_config`` (our Config) and ``model.diffsat_schedule``
    (from the file's buffers when present, else the config; a mismatch is warned about).
    """
    path = Path(checkpoint)
    if path.is_dir():
        cfg, weights_path, buffers = _run_dir_parts(path, config, ema)
        weights, _ = to_our_keys(read_checkpoint(weights_path))
        return _assemble(cfg, weights, buffers, str(weights_path))
    path = _existing_file(path)
    cfg = _resolve_config(config, path)
    weights, buffers = to_our_keys(read_checkpoint(path))
    return _assemble(cfg, weights, buffers, str(path))


# --------------------------------------------------------------------------------------------- convert


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
    from safetensors.torch import save_file

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
