"""Precision, decided once: the :data:`Precision` setting, its one resolver (:func:`resolve_precision`) and the
one autocast helper (:func:`autocast`). Every caller (training, sampling, latent encoding and decoding, cd
features, evaluation's fixed fp32) goes through them.

``precision auto``: bf16 autocast or fp32, chosen by timing the actual network on the machine at hand.

- CUDA: bf16 autocast when the GPU supports bf16 (:func:`torch.cuda.is_bf16_supported`), not measured
  (tensor cores make bf16 the faster choice on every bf16-capable NVIDIA GPU).
- A CPU without native bf16 (no AVX512-BF16 or AMX, see :func:`diffsat.runtime.cpu_has_bf16`): fp32, not
  measured (emulated bf16 is several times slower).
- A CPU with native bf16: a few timed forward passes (training: forward + backward) of the actual network
  at its actual input shape, fp32 against bf16 autocast, decide by :func:`decide`. Whether bf16 pays differs
  between CPUs of the same instruction set (it halved a 391M forward on a 2-core AMD Zen 4 and doubled it on
  a 2-core Intel without AMX), so only a measurement on this machine can tell.

A measurement is cached in ``precision.json`` in diffsat's cache folder under a key of everything that can
change it (:func:`precision_key`: device, CPU model and flags, threads, torch version, network, input
shape, inference or training), so it runs once per key. The pure decision (:func:`decide`) is separate from
the timer (:func:`inference_timer`, :func:`training_timer`), which :func:`choose_precision` takes as an
argument, so tests inject timings.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .fileio import atomic_write_text, cache_dir
from .runtime import cpu_has_bf16

Precision = Literal["fp32", "bf16", "auto"]
"""``fp32``; ``bf16``: bfloat16 autocast (weights and their updates stay float32); ``auto``: whichever
:func:`resolve_precision` finds right for the network on this machine."""
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")

BF16_MARGIN = 1.2
"""bf16 autocast is chosen only when it is at least this many times faster than fp32: fp32 is the more
exact of the two, and a smaller gain is within the noise of a few timed calls on a shared machine."""
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
"""The /proc/cpuinfo flags that decide how fast bf16 and fp32 convolutions run (part of the cache key)."""

Timer = Callable[[bool], float]
"""``timer(bf16) -> seconds`` of one representative call (forward, or forward + backward)."""


@dataclass(frozen=True)
class Timings:
    """Seconds of one call in fp32 and under bf16 autocast (both > 0)."""

    fp32_s: float
    bf16_s: float

    @property
    def speedup(self) -> float:
        """How many times faster bf16 autocast ran (< 1: slower)."""
        return self.fp32_s / self.bf16_s


def decide(timings: Timings, margin: float = BF16_MARGIN) -> bool:
    """True (bf16 autocast) when bf16 ran at least ``margin`` times faster than fp32, else False (fp32)."""
    return timings.speedup >= margin


@dataclass(frozen=True)
class PrecisionChoice:
    """The outcome of ``precision auto``: ``bf16``, why, and (when measured) the timings and cache file."""

    bf16: bool
    timings: Timings | None = None
    cache_file: Path | None = None
    reason: str = ""

    def line(self) -> str:
        """One line for the user, e.g. ``precision auto: bf16 autocast 2.2x faster than fp32 here (cached in
        ~/.cache/diffsat/precision.json)``."""
        if self.timings is None:
            return f"precision auto: {'bf16 autocast' if self.bf16 else 'fp32'} ({self.reason})"
        where = f"cached in {self.cache_file}"
        speedup = self.timings.speedup
        if self.bf16:
            return f"precision auto: bf16 autocast {speedup:.1f}x faster than fp32 here ({where})"
        return f"precision auto: fp32 (bf16 autocast ran at {speedup:.2f}x its speed here; {where})"


def cpu_description() -> str:
    """The CPU model and its bf16-relevant flags, e.g. ``AMD EPYC 9R14; avx2 avx512f avx512_bf16``."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return f"{model}; {' '.join(f for f in CPU_FLAGS if f in flags)}"


def network_signature(net: torch.nn.Module) -> str:
    """The network's class, parameter count and a digest of its parameters' names and shapes (not values)."""
    params = list(net.named_parameters())
    shapes = ";".join(f"{name}:{tuple(p.shape)}" for name, p in params)
    digest = hashlib.sha256(shapes.encode()).hexdigest()[:16]
    return f"{type(net).__name__} {sum(p.numel() for _, p in params)} params {digest}"


def precision_key(device: torch.device, net: torch.nn.Module, input_shape: Sequence[int], training: bool) -> dict:
    """Everything a bf16-vs-fp32 measurement depends on, as a JSON-able dict (the cache key)."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": gpu or "cpu", "cpu": cpu_description(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "network": network_signature(net), "input_shape": list(input_shape),
        "mode": "training" if training else "inference",
    }


def key_id(key: dict) -> str:
    """A stable short id of a :func:`precision_key` dict."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def precision_cache_file() -> Path:
    """``precision.json`` in diffsat's cache folder (``$DIFFSAT_CACHE`` or ``~/.cache/diffsat``)."""
    return cache_dir() / "precision.json"


def read_cache(path: Path) -> dict:
    """The cache's entries by key id; an unreadable or corrupt file counts as empty (it is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: a bf16-capable CUDA GPU, or a CPU with AVX512-BF16 / AMX."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()


def choose_precision(key: dict, timer: Timer, *, device_type: str, native_bf16: bool,
                     cache_file: Path | None = None) -> PrecisionChoice:
    """bf16 autocast or fp32 for the workload ``key`` describes (see the module docstring for the rules).

    ``timer`` runs only on a CPU with native bf16 whose key is not in ``cache_file`` (default
    :func:`precision_cache_file`); its timings are then written there (atomically, keeping other entries).
    """
    if device_type == "cuda":
        reason = "CUDA GPU with bf16, not measured" if native_bf16 else "this GPU has no bf16"
        return PrecisionChoice(native_bf16, reason=reason)
    if not native_bf16:
        return PrecisionChoice(False, reason="this CPU has no native bf16 (AVX512-BF16 or AMX), not measured")
    cache_file = cache_file or precision_cache_file()
    entries, kid = read_cache(cache_file), key_id(key)
    entry = entries.get(kid)
    if isinstance(entry, dict) and {"fp32_s", "bf16_s"} <= entry.keys():
        timings = Timings(float(entry["fp32_s"]), float(entry["bf16_s"]))
    else:
        timings = Timings(timer(False), timer(True))
        entries[kid] = {**key, "fp32_s": timings.fp32_s, "bf16_s": timings.bf16_s}
        atomic_write_text(cache_file, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return PrecisionChoice(decide(timings), timings, cache_file)


def best_time(call: Callable[[], object], budget_s: float = 1.0, max_repeats: int = 3) -> float:
    """The fastest of up to ``max_repeats`` timed calls after one warm-up call, stopping once ``budget_s``
    seconds were spent timing (a slow network gets one timed call)."""
    call()
    best, spent = float("inf"), 0.0
    for _ in range(max_repeats):
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
        best, spent = min(best, seconds), spent + seconds
        if spent >= budget_s:
            break
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input(input_shape: Sequence[int], device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return x, torch.full((input_shape[0],), 0.5, device=device)


def inference_timer(net: torch.nn.Module, input_shape: Sequence[int], device: torch.device,
                    channels_last: bool, with_level: bool = True) -> Timer:
    """A :data:`Timer` of ``net(x, level)`` (``with_level``; else ``net(x)``) at ``input_shape`` (B, C, H, W)
    under ``torch.inference_mode``, as the samplers call it (``net`` already on ``device`` in the memory format
    they use)."""
    x, level = _input(input_shape, device, channels_last)

    def timer(bf16: bool) -> float:
        def call() -> None:
            with torch.inference_mode(), autocast(device, bf16):
                net(x, level) if with_level else net(x)
            _sync(device)

        return best_time(call)

    return timer


def training_timer(net: torch.nn.Module, input_shape: Sequence[int], device: torch.device,
                   channels_last: bool, loss: Callable[[], torch.Tensor] | None = None) -> Timer:
    """A :data:`Timer` of a forward (under autocast) + backward of ``net`` at ``input_shape``; the gradients
    it leaves are cleared and the global random state is restored (``net``'s weights stay as they were).
    ``loss``: the forward pass to time, returning the scalar to backpropagate (a trainer's own loss);
    default: the mean square of ``net(x, level)``."""
    x, level = _input(input_shape, device, channels_last)

    def timer(bf16: bool) -> float:
        def call() -> None:
            with autocast(device, bf16):
                out = net(x, level).float().square().mean() if loss is None else loss()
            out.float().backward()
            _sync(device)

        # dropout draws from the global generators: fork them, so a measurement leaves training's draws alone
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                return best_time(call)
            finally:
                net.zero_grad(set_to_none=True)

    return timer


def autocast(device: torch.device | str, bf16: bool) -> torch.autocast:
    """The one autocast context: bfloat16 autocast on ``device``'s type when ``bf16``, else a no-op."""
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def resolve_precision(precision: Precision, net: torch.nn.Module, input_shape: Sequence[int],
                      device: torch.device, *, training: bool = False, timer: Timer | None = None,
                      channels_last: bool = False, with_level: bool = True,
                      announce: Callable[[str], None] | None = print) -> bool:
    """``precision`` for ``net`` (on ``device``) at ``input_shape`` (B, C, H, W) as a yes/no for bf16 autocast.

    ``fp32`` / ``bf16`` are taken as said. ``auto`` follows the rules of the module docstring, timing
    ``net(x, level)`` (``with_level``; else ``net(x)``, an autoencoder's encoder or decoder) in inference, or
    when ``training`` forward and backward; ``timer`` replaces what is timed (a trainer's own loss), while
    ``net``, ``input_shape`` and ``training`` still make the cache key. The decision's one line goes through
    ``announce`` (``None``: silent)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if timer is None:
        timer = (training_timer(net, input_shape, device, channels_last) if training else
                 inference_timer(net, input_shape, device, channels_last, with_level=with_level))
    choice = choose_precision(precision_key(device, net, input_shape, training), timer,
                              device_type=device.type, native_bf16=bf16_supported(device))
    if announce is not None:
        announce(choice.line())
    return choice.bf16
