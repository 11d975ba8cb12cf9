"""Training-step speed of diffsat's SR3 U-Net beside denoising-diffusion-pytorch's ``Unet`` (lucidrains) and
diffusers' ``UNet2DModel``, at equal training FLOPs per image, on the CPU.

Two workloads, each with the model section of a shipped recipe: 28x28 grey digits, batch 128
(``configs/mnist_cpu.json``) and 64x64 RGB tiles, batch 32 (``configs/satellite64_cpu.json``). Each
competitor keeps its library's architecture and defaults; only its width (and, for diffusers, the
structural knobs that mirror the SR3 plan: blocks per level, attention levels, single-head attention) is
chosen, the width being the one whose counted FLOPs per training image come closest to diffsat's.

Every model gets the same step: random images, integer steps t ~ U{0..T-1} of the config's schedule,
x_t = sqrt(ab) x0 + sqrt(1-ab) eps, eps-prediction MSE, backward, fused AdamW; fp32 with channels_last, and
bf16 autocast (channels_last) as a second row. diffsat is conditioned on sqrt(ab), the others on t.
Timing: after warm-up, windows of a few seconds, models and precisions interleaved round-robin (order
rotated each round) so load from other jobs on a shared machine falls on all alike; medians reported.

The competitors belong in a benchmark-only environment, never in diffsat's dependencies::

    python3 -m venv /work/bench-venv && . /work/bench-venv/bin/activate
    pip install torch==2.13.0 && pip install -e .
    pip install --no-deps denoising-diffusion-pytorch==2.3.4 diffusers==0.42.1
    pip install einops ema-pytorch accelerate scipy huggingface_hub regex requests importlib_metadata
    python benchmarks/compare_unets.py [--windows 4] [--window-seconds 2] [--out summary.md]

denoising-diffusion-pytorch imports ``torchvision`` at module level for its Trainer's data transforms and
image saving; its ``Unet`` never touches it. Without torchvision installed, this script lends the import a
placeholder module that raises on any use, so no torchvision is installed anywhere.

FLOPs are counted by ``diffsat.training.throughput.train_step_flops`` (PyTorch's ``FlopCounterMode`` over
forward + backward: matmuls, convolutions and attention, including the CPU kernel of
``scaled_dot_product_attention`` that diffsat and diffusers run; element-wise work is not counted). Widths
are matched and GFLOP/s reported on that count. (Results in RESULTS.md from before commit a939f4a show a
second, smaller column: the count without the CPU attention kernel.)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class MissingPackage(Exception):
    """A package the comparison needs cannot be imported; the message says what to install."""


# ---------------------------------------------------------------------------------------------------------
# Competitor imports


@contextlib.contextmanager
def _placeholder_torchvision() -> Iterator[None]:
    """Lend ``torchvision`` (and its ``transforms`` / ``utils``) to an import that names it at module level
    but does not use it for what we run; any attribute use raises. Removed again afterwards."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return

    class _Placeholder(types.ModuleType):
        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            raise RuntimeError(f"torchvision is not installed (benchmark placeholder): {self.__name__}.{name}")

    names = ("torchvision", "torchvision.transforms", "torchvision.utils")
    modules = {n: _Placeholder(n) for n in names}
    for n, m in modules.items():
        m.__spec__ = importlib.machinery.ModuleSpec(n, loader=None)
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision"].utils = modules["torchvision.utils"]
    sys.modules.update(modules)
    try:
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)


def import_competitors() -> tuple[type, type]:
    """``(lucidrains Unet, diffusers UNet2DModel)``; :class:`MissingPackage` names what to install."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; make sure nothing tries
    if importlib.util.find_spec("diffsat") is None:
        raise MissingPackage(f"diffsat is not installed in this environment ({sys.prefix}): pip install -e {ROOT}")
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise MissingPackage(
            f"diffusers cannot be imported ({e}); in the benchmark environment run "
            f"`pip install --no-deps diffusers==0.42.1 && pip install huggingface_hub safetensors regex requests "
            f"importlib_metadata filelock` (never into diffsat's own environment)"
        ) from None
    try:
        import accelerate  # noqa: F401  (imported before the torchvision placeholder is lent)
        import einops  # noqa: F401
        import ema_pytorch  # noqa: F401

        with _placeholder_torchvision():
            from denoising_diffusion_pytorch import Unet
    except ImportError as e:
        raise MissingPackage(
            f"denoising-diffusion-pytorch cannot be imported ({e}); in the benchmark environment run "
            f"`pip install --no-deps denoising-diffusion-pytorch==2.3.4 && pip install einops ema-pytorch accelerate "
            f"scipy` (no torchvision needed; never into diffsat's own environment)"
        ) from None
    return Unet, UNet2DModel


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("diffsat", "denoising-diffusion-pytorch", "diffusers", "einops", "ema-pytorch", "accelerate",
                 "huggingface_hub", "safetensors"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


# ---------------------------------------------------------------------------------------------------------
# Models and the shared training step


@dataclass(frozen=True)
class Workload:
    name: str
    channels: int
    size: int
    batch: int
    model: dict  # diffsat ModelConfig fields


def workloads() -> list[Workload]:
    import json

    def model(name: str) -> dict:
        return json.loads((ROOT / "configs" / name).read_text())["model"]

    return [Workload("28x28 grey, batch 128 (configs/mnist_cpu.json)", 1, 28, 128, model("mnist_cpu.json")),
            Workload("64x64 RGB, batch 32 (configs/satellite64_cpu.json)", 3, 64, 32, model("satellite64_cpu.json"))]


# A network adapter: (x_t, t as int64 (B,), level = sqrt(alpha_bar_t) (B,)) -> eps prediction (B, C, H, W).
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Contender:
    library: str
    width: str  # human description of the chosen width
    model: nn.Module
    forward: Forward
    flops: float = 0.0  # per image, train_step_flops
    optimizer: torch.optim.Optimizer | None = None

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def diffsat_contender(w: Workload) -> Contender:
    from diffsat.config import ModelConfig
    from diffsat.models.unet import build_unet

    cfg = ModelConfig(**w.model)
    net = build_unet(cfg)
    desc = (f"base {cfg.base_channels}, mults {list(cfg.channel_mults)}, {cfg.res_blocks} res block, "
            f"attn {list(cfg.attn_resolutions)}")
    return Contender("diffsat SR3UNet", desc, net, lambda x, t, level: net(x, level))


def lucidrains_factory(w: Workload, unet_cls: type) -> tuple[list[int], Callable[[int], Contender]]:
    """denoising-diffusion-pytorch ``Unet``: its own block structure (2 res blocks per level, linear attention
    at every level, 4x32-head full attention where diffsat has attention, and in the middle); width = ``dim``."""
    mults = tuple(w.model["channel_mults"])
    full = tuple(w.size // 2**i in w.model["attn_resolutions"] or i == len(mults) - 1 for i in range(len(mults)))

    def build(dim: int) -> Contender:
        net = unet_cls(dim=dim, dim_mults=mults, channels=w.channels, full_attn=full)
        return Contender("denoising-diffusion-pytorch Unet", f"dim {dim}, full attn {list(full)}", net,
                         lambda x, t, level: net(x, t.float()))

    return list(range(4, 8 * w.model["base_channels"] + 1, 2)), build


def diffusers_factory(w: Workload, unet_cls: type) -> tuple[list[int], Callable[[int], Contender]]:
    """diffusers ``UNet2DModel`` laid out like the SR3 plan: ``layers_per_block = res_blocks`` (up blocks get
    one more, as in SR3), attention blocks at diffsat's attention resolutions, single-head attention."""
    mults = w.model["channel_mults"]
    attn = [w.size // 2**i in w.model["attn_resolutions"] for i in range(len(mults))]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))

    def build(width: int) -> Contender:
        groups = math.gcd(width, w.model["norm_groups"])
        net = unet_cls(sample_size=w.size, in_channels=w.channels, out_channels=w.channels,
                       block_out_channels=tuple(width * m for m in mults), layers_per_block=w.model["res_blocks"],
                       down_block_types=down, up_block_types=up, attention_head_dim=None, norm_num_groups=groups)
        return Contender("diffusers UNet2DModel", f"base {width}, groups {groups}", net,
                         lambda x, t, level: net(x, t, return_dict=False)[0])

    return list(range(4, 8 * w.model["base_channels"] + 1, 4)), build


@dataclass
class StepInputs:
    """Fixed images and the schedule the shared step draws from."""

    x0: torch.Tensor  # (B, C, H, W) in [-1, 1], channels_last
    alphas_cumprod: torch.Tensor  # (T,) float32
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))


def make_inputs(w: Workload, batch: int, seed: int = 0) -> StepInputs:
    from diffsat.diffusion.schedules import NoiseSchedule

    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(batch, w.channels, w.size, w.size, generator=g) * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    ab = NoiseSchedule.named("linear", 1000).alphas_cumprod.float()
    return StepInputs(x0, ab, torch.Generator().manual_seed(seed + 1))


def loss_of(c: Contender, inp: StepInputs, bf16: bool = False) -> torch.Tensor:
    """Forward pass of the shared objective: eps-prediction MSE at random steps (scalar float32)."""
    from diffsat.diffusion.objective import q_sample

    b = inp.x0.shape[0]
    t = torch.randint(0, inp.alphas_cumprod.shape[0], (b,), generator=inp.generator)
    level = inp.alphas_cumprod[t].sqrt()
    noise = torch.randn(inp.x0.shape, generator=inp.generator).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pred = c.forward(q_sample(inp.x0, level, noise), t, level)
    return F.mse_loss(pred.float(), noise)


def train_step(c: Contender, inp: StepInputs, bf16: bool) -> None:
    loss = loss_of(c, inp, bf16)
    c.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    c.optimizer.step()


def count_flops(c: Contender, w: Workload, batch: int = 2) -> None:
    """Per-image FLOPs of forward + backward, from a small batch (the count is linear in B)."""
    from diffsat.training.throughput import train_step_flops

    inp = make_inputs(w, batch)
    c.model.train()
    c.flops = train_step_flops(lambda: loss_of(c, inp)) / batch
    c.model.zero_grad(set_to_none=True)


def match_width(target: float, widths: list[int], build: Callable[[int], Contender], w: Workload) -> Contender:
    """The build whose full FLOP count per image is closest (in ratio) to ``target``; widths ascending."""
    best: Contender | None = None
    for width in widths:
        torch.manual_seed(0)
        c = build(width)
        count_flops(c, w)
        if best is None or abs(math.log(c.flops / target)) < abs(math.log(best.flops / target)):
            best = c
        if c.flops > 1.5 * target:
            break
    return best


# ---------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Row:
    workload: Workload
    contender: Contender
    bf16: bool
    inputs: StepInputs
    steps_per_window: int = 1
    wall_ips: list[float] = field(default_factory=list)
    cpu_ips: list[float] = field(default_factory=list)


def warm_up(row: Row, window_s: float, steps: int = 3) -> None:
    """Run a few steps (allocator, oneDNN primitive caches) and size the timing window from the last."""
    for _ in range(steps):
        start = time.perf_counter()
        train_step(row.contender, row.inputs, row.bf16)
    row.steps_per_window = max(1, round(window_s / (time.perf_counter() - start)))


def time_window(row: Row) -> None:
    """One timed window: images/s from wall time and from process CPU time / THREADS."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(row.steps_per_window):
        train_step(row.contender, row.inputs, row.bf16)
    images = row.steps_per_window * row.workload.batch
    row.wall_ips.append(images / (time.perf_counter() - wall))
    row.cpu_ips.append(images / ((time.process_time() - cpu) / THREADS))


def run_rounds(rows: list[Row], windows: int) -> None:
    for r in range(windows):
        order = rows[r % len(rows):] + rows[: r % len(rows)]
        for row in order:
            time_window(row)
        print(f"  round {r + 1}/{windows} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Report


def _fmt_flops(f: float) -> str:
    return f"{f / 1e9:.3f}" if f < 1e10 else f"{f / 1e9:.1f}"


SPEED_HEADER = ("| model | precision | images/s (median) | range | images/s from CPU time | GFLOP/s "
                "| % fp32 peak | % bf16 peak |")


def markdown(rows: list[Row], contenders: dict[str, list[Contender]], peaks: dict[str, float],
             meta: dict[str, str]) -> str:
    lines = [f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
             (f"Matmul peak measured in the same run (2048^3, 2 threads): fp32 {peaks['fp32']:.0f} GFLOP/s, "
              f"bf16 {peaks['bf16']:.0f} GFLOP/s. Load average (1 min) {meta['load']}."),
             f"Timing: {meta['timing']}.", ""]
    for wname, cs in contenders.items():
        lines += [f"**{wname}**", "",
                  "| model | width | parameters | GFLOP/image | vs diffsat |",
                  "|---|---|---:|---:|---:|"]
        ref = cs[0].flops
        for c in cs:
            lines.append(f"| {c.library} | {c.width} | {c.params:,} | {_fmt_flops(c.flops)} | {c.flops / ref:.2f} |")
        lines += ["", SPEED_HEADER, "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in (r for r in rows if r.workload.name == wname):
            ips = statistics.median(row.wall_ips)
            gflops = ips * row.contender.flops / 1e9
            lines.append(
                f"| {row.contender.library} | {'bf16 autocast' if row.bf16 else 'fp32'} | {ips:.1f} "
                f"| {min(row.wall_ips):.1f}-{max(row.wall_ips):.1f} | {statistics.median(row.cpu_ips):.1f} "
                f"| {gflops:.1f} | {100 * gflops / peaks['fp32']:.0f}% | {100 * gflops / peaks['bf16']:.0f}% |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=4, help="timed windows per row (median reported)")
    parser.add_argument("--window-seconds", type=float, default=2.0, help="approximate length of one window")
    parser.add_argument("--workload", choices=["28", "64", "both"], default="both")
    parser.add_argument("--out", type=Path, help="also write the Markdown summary here")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        lucidrains_cls, diffusers_cls = import_competitors()
    except MissingPackage as e:
        print(f"compare_unets: {e}", file=sys.stderr)
        return 2
    from diffsat.training.throughput import matmul_peak_gflops

    torch.set_num_threads(THREADS)
    load_start = os.getloadavg()[0]
    peaks = {k: matmul_peak_gflops(dtype) for k, dtype in DTYPES.items()}
    chosen = [w for w in workloads() if args.workload == "both" or w.name.startswith(args.workload)]
    rows: list[Row] = []
    contenders: dict[str, list[Contender]] = {}
    for w in chosen:
        torch.manual_seed(0)
        ours = diffsat_contender(w)
        count_flops(ours, w)
        cs = [ours] + [match_width(ours.flops, *factory(w, cls), w) for factory, cls in
                       ((lucidrains_factory, lucidrains_cls), (diffusers_factory, diffusers_cls))]
        contenders[w.name] = cs
        for c in cs:
            c.model.to(memory_format=torch.channels_last).train()
            c.optimizer = torch.optim.AdamW(c.model.parameters(), lr=1e-4, fused=True)
            print(f"{w.name}: {c.library} [{c.width}] {c.params:,} parameters, "
                  f"{c.flops / 1e9:.3f} GFLOP/image", file=sys.stderr, flush=True)
        for bf16 in (False, True):
            rows += [Row(w, c, bf16, make_inputs(w, w.batch)) for c in cs]
    for row in rows:
        warm_up(row, args.window_seconds)
    print(f"warm-up done after {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    for w in chosen:
        run_rounds([r for r in rows if r.workload is w], args.windows)
    # the peak is the machine's capability: keep the better of the measurements before and after
    peaks = {k: max(v, matmul_peak_gflops(DTYPES[k])) for k, v in peaks.items()}
    meta = {"versions": versions(), "load": f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end",
            "timing": f"{THREADS} threads, {args.windows} windows of ~{args.window_seconds:g} s per row after 3 "
                      f"warm-up steps, rows interleaved; whole script {time.perf_counter() - started:.0f} s"}
    text = markdown(rows, contenders, peaks, meta)
    print(text)
    if args.out:
        from diffsat.fileio import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
