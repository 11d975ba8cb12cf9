"""Sampling speed of the 391M DDPM-CD generator network at 256x256 on this CPU (random weights).

Measures, at batch 1:

1. seconds per network evaluation for each speed lever: fp32 vs bf16 autocast, channels_last on/off,
   ``torch.inference_mode`` vs ``torch.no_grad`` (and, with ``--compile``, what ``--compile`` does, beside
   eager mode), with the achieved GFLOP/s (forward FLOPs counted by PyTorch's FlopCounterMode). Wall time
   and CPU time / threads are both reported: on a shared machine the latter estimates the idle wall time;
2. the bf16-vs-fp32 difference of one network output and of the denoiser's x0 estimate;
3. seconds per image of ``diffsat.sampling.generate`` with DPM-Solver++ at 10/20/25 steps using the fastest
   lever setting (what ``diffsat sample RUN --sampler dpm++ --steps K`` runs).

    python benchmarks/sampling_391m.py                  # ~12 minutes on the idle 2-core CPU, ~20 when shared
    python benchmarks/sampling_391m.py --steps 20 --evals 1             # shorter
    python benchmarks/sampling_391m.py --compile --no-levers --no-dpm   # compile time, compiled vs eager
    python benchmarks/sampling_391m.py --no-levers --auto --steps 10 20  # what `diffsat sample` does by default

Random weights give meaningless images but the same arithmetic as trained ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffsat.config import Config
from diffsat.models.unet import build_unet, count_parameters
from diffsat.diffusion.objective import bf16_difference as precision_difference
from diffsat.runtime import cpu_has_bf16
from diffsat.sampling import SampleSettings, generate, prepare_net

CONFIG = Config.model_validate({
    # DDPM-CD's released generator (I190000_E97_gen.pth): see ../shared/reference/ddpm-cd-generator-keys.txt
    "model": {"in_channels": 3, "out_channels": 3, "base_channels": 128, "channel_mults": [1, 2, 4, 8, 8],
              "attn_resolutions": [16], "res_blocks": 2, "dropout": 0.2, "norm_groups": 32, "image_size": 256},
    "diffusion": {"schedule": "linear", "timesteps": 2000, "beta_start": 1e-6, "beta_end": 1e-2},
    "data": {"kind": "folder", "image_size": 256, "channels": 3},
})


def forward_flops(cfg: Config) -> int:
    """FLOPs of one batch-1 forward pass (convolutions, matmuls, attention), counted on the meta device."""
    with torch.device("meta"):
        net = build_unet(cfg.model)
        x, level = torch.empty(1, 3, cfg.model.image_size, cfg.model.image_size), torch.empty(1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, level)
    return int(counter.get_total_flops())


def timed(fn: Callable[[], object], evals: int) -> tuple[float, float, float]:
    """(first call seconds, fastest of ``evals`` later calls, that call's CPU seconds / threads).

    The machine is shared: the fastest call is the least disturbed one, and CPU time / threads estimates the
    wall time on an idle machine (other jobs stretch the wall time of the same work)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best, cpu = float("inf"), float("inf")
    for _ in range(evals):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, (time.process_time() - start_cpu) / torch.get_num_threads()
    return first, best, cpu


def lever_call(net: torch.nn.Module, bf16: bool, grad_mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    mode = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad

    def call(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        with mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(x, level).float()

    return call


def inputs(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    size = CONFIG.model.image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), torch.tensor([0.5])


def measure_levers(net: torch.nn.Module, flops: int, evals: int) -> list[dict]:
    rows = []
    for precision, channels_last, grad_mode in [
        ("fp32", False, "inference_mode"), ("fp32", True, "inference_mode"), ("fp32", True, "no_grad"),
        ("bf16", False, "inference_mode"), ("bf16", True, "inference_mode"),
    ]:
        net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        x, level = inputs(channels_last)
        call = lever_call(net, precision == "bf16", grad_mode)
        first, best, cpu = timed(lambda: call(x, level), evals)
        rows.append(dict(precision=precision, channels_last=channels_last, grad_mode=grad_mode, first=first,
                         seconds=best, cpu=cpu))
        print(f"  {precision} channels_last={channels_last!s:5} {grad_mode:14}: {best:6.2f} s/eval wall "
              f"({flops / best / 1e9:4.0f} GFLOP/s; first {first:.2f} s), CPU s/threads {cpu:6.2f} "
              f"({flops / cpu / 1e9:4.0f} GFLOP/s), load {os.getloadavg()[0]:.1f}", flush=True)
    return rows


def bf16_difference(net: torch.nn.Module) -> dict:
    """bf16-vs-fp32 difference of the raw output (relative to its largest entry, and in rms) and of the
    clipped x0 estimate (in image units, [-1, 1]) at two noise levels
    (:func:`diffsat.diffusion.objective.bf16_difference`)."""
    out = {}
    x, _ = inputs(True)
    net.to(memory_format=torch.channels_last)
    for level in (0.5, 0.05):
        row = out[level] = precision_difference(net, x, level)
        print(f"  level {level}: output |bf16 - fp32| max {row['output_rel_max']:.2e} of max |output|, rms "
              f"{row['output_rel_rms']:.2e}; x0 estimate: max {row['x0_max_abs']:.3f}, mean {row['x0_mean_abs']:.4f}",
              flush=True)
    return out


def measure_compile(net: torch.nn.Module, flops: int, evals: int) -> tuple[torch.nn.Module, dict]:
    """What ``--compile`` does (``prepare_net``: fp32, channels_last, torch.compile with freezing): compile time
    (the first call) and s/eval, then eager fp32 channels_last again under the same machine load."""
    compiled = prepare_net(net, SampleSettings(channels_last=True, compile=True), torch.device("cpu"))
    x, level = inputs(True)
    first, best, cpu = timed(lambda: lever_call(compiled, False, "inference_mode")(x, level), evals)
    print(f"  torch.compile (freezing) fp32 channels_last: compile + first call {first:.0f} s, then {best:.2f} "
          f"s/eval wall ({flops / best / 1e9:.0f} GFLOP/s), CPU s/threads {cpu:.2f}, load {os.getloadavg()[0]:.1f}",
          flush=True)
    _, eager_best, eager_cpu = timed(lambda: lever_call(net, False, "inference_mode")(x, level), evals)
    print(f"  eager fp32 channels_last, same conditions: {eager_best:.2f} s/eval wall, CPU s/threads "
          f"{eager_cpu:.2f}, load {os.getloadavg()[0]:.1f}", flush=True)
    return compiled, dict(precision="fp32", channels_last=True, first=first, seconds=best, cpu=cpu)


def measure_dpm(net: torch.nn.Module, steps_list: list[int], precision: str, channels_last: bool) -> list[dict]:
    """Seconds per image of ``generate`` (batch 1) with DPM-Solver++; ``net`` may be a compiled module;
    ``precision``: ``fp32``, ``bf16`` or ``auto`` (its one-off measurement, when not cached, counts in the first
    row)."""
    rows = []
    for steps in steps_list:
        settings = SampleSettings("dpm++", steps, batch_size=1, precision=precision, channels_last=channels_last,
                                  device="cpu")
        start, start_cpu = time.perf_counter(), time.process_time()
        image = generate(net, CONFIG, 1, 0, settings, progress=True)
        seconds, cpu = time.perf_counter() - start, (time.process_time() - start_cpu) / torch.get_num_threads()
        assert image.shape[0] == 1 and bool(torch.isfinite(image).all())
        rows.append(dict(steps=steps, seconds=seconds, cpu=cpu))
        print(f"  DPM-Solver++ {steps:2d} steps: {seconds:6.1f} s/image wall ({seconds / steps:.2f} s per step), "
              f"CPU s/threads {cpu:6.1f}, load {os.getloadavg()[0]:.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evals", type=int, default=2, help="timed evaluations per lever after one warm-up")
    parser.add_argument("--steps", type=int, nargs="*", default=[10, 20, 25], help="DPM-Solver++ step counts")
    parser.add_argument("--no-levers", action="store_true", help="skip the lever table (use fp32 channels_last)")
    parser.add_argument("--no-dpm", action="store_true", help="skip the per-image DPM-Solver++ runs")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--auto", action="store_true",
                        help="per-image runs with precision auto (what `diffsat sample` does with no precision "
                             "flag) instead of the fastest lever")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"oneDNN bf16 {cpu_has_bf16()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    flops = forward_flops(CONFIG)
    start = time.perf_counter()
    torch.manual_seed(0)
    net = build_unet(CONFIG.model).eval()
    print(f"391M preset: {count_parameters(net):,} parameters, {flops / 1e12:.2f} TFLOP per 256x256 evaluation "
          f"(built in {time.perf_counter() - start:.0f} s)", flush=True)
    best, runner = dict(precision="fp32", channels_last=True, seconds=float("inf")), net
    if not args.no_levers:
        print("seconds per network evaluation, batch 1:", flush=True)
        best = min(measure_levers(net, flops, args.evals), key=lambda r: r["seconds"])
        print("bf16 autocast vs fp32:", flush=True)
        bf16_difference(net)
    if args.compile:
        compiled, row = measure_compile(net, flops, args.evals)
        if row["seconds"] < best["seconds"]:
            best, runner = row, compiled
    if not args.no_dpm:
        how = "torch.compile, " if runner is not net else ""
        precision = "precision auto" if args.auto else best["precision"]
        print(f"per image ({how}{precision}, channels_last={best['channels_last']}):", flush=True)
        net.to(memory_format=torch.channels_last if best["channels_last"] else torch.contiguous_format)
        measure_dpm(runner, args.steps, "auto" if args.auto else best["precision"], best["channels_last"])
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
