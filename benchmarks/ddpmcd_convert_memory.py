"""Peak memory of ``diffsat convert`` on a DDPM-CD generator of the released size (391M parameters).

Builds a synthetic ``I0_E0_gen.pth`` in a temporary folder with every key and shape of
``../shared/reference/ddpm-cd-generator-keys.txt`` (random float32 weights; the 12 schedule buffers of the
linear 1e-6..1e-2 schedule over 2000 steps, as DDPM-CD stores them), converts it in a fresh Python process
and reports that process's peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which counts
memory-mapped file pages it touched) against the file size. Then, in another fresh process, the converted
run directory is loaded with ``diffsat.load_model`` (what ``diffsat sample`` does) and its peak reported.
Finally every converted tensor is compared with the source, bit for bit.

    python benchmarks/ddpmcd_convert_memory.py            # about 1-2 minutes, 3 GB of temporary disk

The issue's budget: converting must not hold more than about twice the file's size in memory.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_KEYS = REPO_ROOT.parent / "shared" / "reference" / "ddpm-cd-generator-keys.txt"
CONFIG = {  # the released generator's network, as DDPM-CD's JSON describes it (norm_groups absent -> 32)
    "model": {
        "which_model_G": "sr3",
        "unet": {"in_channel": 3, "out_channel": 3, "inner_channel": 128, "channel_multiplier": [1, 2, 4, 8, 8],
                 "attn_res": [16], "res_blocks": 2, "dropout": 0.2},
        "beta_schedule": {phase: {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6,
                                  "linear_end": 1e-2} for phase in ("train", "val")},
        "diffusion": {"image_size": 256, "channels": 3, "loss": "l2", "conditional": False},
    }
}


def reference_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        match = re.fullmatch(r"(?:buffer )?(\S+) \(([\d, ]*)\)", line.strip())
        if match and not line.startswith("#"):
            shapes[match[1]] = tuple(int(d) for d in match[2].split(",") if d.strip())
    return shapes


def ddpmcd_buffers(betas):
    """GaussianDiffusion.set_new_noise_schedule's 12 buffers (float64 maths, stored float32)."""
    import torch

    b = betas.double()
    ac = torch.cumprod(1 - b, 0)
    prev = torch.cat([torch.ones(1, dtype=b.dtype), ac[:-1]])
    post_var = b * (1 - prev) / (1 - ac)
    return {
        "betas": b, "alphas_cumprod": ac, "alphas_cumprod_prev": prev, "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(), "log_one_minus_alphas_cumprod": torch.log(1 - ac),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(), "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": post_var, "posterior_log_variance_clipped": torch.log(post_var.clamp(min=1e-20)),
        "posterior_mean_coef1": b * prev.sqrt() / (1 - ac), "posterior_mean_coef2": (1 - prev) * (1 - b).sqrt() / (1 - ac),
    }


def build(path: Path) -> None:
    """Write the synthetic generator file (run in its own process so its 1.5 GB is returned afterwards)."""
    import torch

    from diffsat.diffusion.schedules import make_betas

    shapes = reference_shapes()
    gen = torch.Generator().manual_seed(0)
    buffers = {k: v.float() for k, v in ddpmcd_buffers(make_betas("linear", 2000, 1e-6, 1e-2)).items()}
    assert set(buffers) <= set(shapes) and all(shapes[k] == tuple(v.shape) for k, v in buffers.items())
    sd = {k: buffers[k] if k in buffers else torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    torch.save(sd, path)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, src: Path, config: Path, run_dir: Path) -> None:
    """Child process: convert or load, print a JSON line with baseline (after imports) and peak RSS."""
    import torch  # noqa: F401  (counted in the baseline, as in the CLI)

    from diffsat.rundir import convert_checkpoint, load_model

    baseline, start = rss_mib(), time.perf_counter()
    if mode == "convert":
        convert_checkpoint(src, config, run_dir)
    else:
        model = load_model(run_dir).network
        assert sum(p.numel() for p in model.parameters()) == 391_048_067
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak_mib(), "seconds": time.perf_counter() - start}))


def check_identical(src: Path, run_dir: Path) -> int:
    """Every converted tensor equals the source's, bit for bit; returns the number compared."""
    import torch
    from safetensors import safe_open

    source = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    count = 0
    with safe_open(str(run_dir / "ema.safetensors"), "pt") as f:
        for key in f.keys():
            assert torch.equal(f.get_tensor(key), source["denoise_fn." + key]), key
            count += 1
    return count


def child(mode: str, *paths: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, mode, *map(str, paths)], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("build", "convert", "load"):
        mode, *paths = sys.argv[1:]
        build(Path(paths[0])) if mode == "build" else measure(mode, *map(Path, paths))
        return
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory(prefix="diffsat-convert-") as tmp:
        src, config, run_dir = Path(tmp) / "I0_E0_gen.pth", Path(tmp) / "ddpm_cd.json", Path(tmp) / "run"
        config.write_text("// DDPM-CD generator config (network part)\n" + json.dumps(CONFIG, indent=2))
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "build", str(src)], check=True)
        size = src.stat().st_size / 2**20
        print(f"built {src.name}: {size:.0f} MiB in {time.perf_counter() - start:.0f} s")
        conv = child("convert", src, config, run_dir)
        load = child("load", src, config, run_dir)
        n = check_identical(src, run_dir)
        out = sum(p.stat().st_size for p in run_dir.iterdir()) / 2**20
        print(f"converted: {n} tensors bit-identical; run directory {out:.0f} MiB (ema + model copies)")
        for name, r in (("convert", conv), ("load_model(run dir)", load)):
            extra = r["peak_mib"] - r["baseline_mib"]
            print(f"{name:20s} peak RSS {r['peak_mib']:7.0f} MiB = {r['peak_mib'] / size:.2f} x file "
                  f"(baseline after imports {r['baseline_mib']:.0f} MiB; above it {extra:.0f} MiB = "
                  f"{extra / size:.2f} x file); {r['seconds']:.1f} s")
        assert math.isfinite(conv["peak_mib"])


if __name__ == "__main__":
    main()
