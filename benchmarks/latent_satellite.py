"""Latent diffusion on UC Merced at 64 px: the autoencoder's loss terms, then the whole CPU recipe.

``ae-sweep``: trains ``configs/satellite64_autoencoder_cpu.json`` once per loss variant (the same steps each,
``--steps``), in parallel processes with ``--parallel`` (a GPU), and reads each run's
``reconstruction.json`` (held-out tiles: PSNR, SSIM, multi-scale SWD, beside bicubic at equal size).

``recipe``: the 60-CPU-minute recipe: the autoencoder config (its limits), then
``configs/satellite64_latent_cpu.json`` on its latents (its limits, which count the encoding), then 500 samples
with ``diffsat sample``'s defaults, ``diffsat evaluate`` against the held-out tiles (SWD at three scales beside
the real baseline, memorisation against the training tiles), a chain, and ``speed``.

``speed``: 500 latent tiles against 500 pixel-space ``satellite64_cpu`` tiles at the same sampler and steps
(random weights: the time does not depend on them), in precision auto (after an untimed first draw that
measures and caches the choice) and in fp32.

``frame``: whether sampled latents (crops of whole tiles' latents) decode with a frame, per autoencoder run:
L1 of the outer 4 pixels and of the inside, decoded as they are, with edge padding, and for the crop
encoded by itself.

Every stage appends one JSON line to OUT/results.jsonl; ``table`` prints them as Markdown.

    python benchmarks/latent_satellite.py ae-sweep --out runs/bench_latent64 --steps 1800 [--device cuda --parallel]
    python benchmarks/latent_satellite.py recipe --out runs/bench_latent64 [--ae-set loss.ssim_weight=0.2 ...]
    python benchmarks/latent_satellite.py speed --out runs/bench_latent64 [--sampler dpm++ --steps 10]
    python benchmarks/latent_satellite.py frame runs/bench_latent64/ae --out runs/bench_latent64
    python benchmarks/latent_satellite.py table --out runs/bench_latent64
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from diffsat.precision import cpu_description

ROOT = Path(__file__).resolve().parents[1]
AE_CONFIG = ROOT / "configs" / "satellite64_autoencoder_cpu.json"
LATENT_CONFIG = ROOT / "configs" / "satellite64_latent_cpu.json"
PIXEL_CONFIG = ROOT / "configs" / "satellite64_cpu.json"
VARIANTS: dict[str, list[str]] = {
    "l1": [],
    "l1+ssim": ["loss.ssim_weight=0.2"],
    "l1+fft": ["loss.fft_weight=0.5"],
    "l1+gan": ["loss.adversarial_weight=0.05"],
    "l1+ssim+fft+gan": ["loss.ssim_weight=0.2", "loss.fft_weight=0.5", "loss.adversarial_weight=0.05"],
}


def diffsat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffsat", *args]


def run(*args: str) -> str:
    """Run the ``diffsat`` command line; returns its stdout (stderr passes through)."""
    return subprocess.run(diffsat_command(*args), stdout=subprocess.PIPE, text=True, check=True).stdout


def sets(overrides: list[str]) -> list[str]:
    return [x for s in overrides for x in ("--set", s)]


def record(out: Path, line: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    line = {"date": date.today().isoformat(), "cpu": cpu_description(), **line}
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line, indent=1))


def train_summary(run_dir: Path) -> dict:
    from diffsat.rundir import load_train_state

    state = load_train_state(run_dir)
    return {"steps": int(state["step"]), "train_s": float(state["elapsed_s"])}


def ae_sweep(args: argparse.Namespace) -> None:
    common = [f"train.device={args.device}", f"train.max_steps={args.steps}", "train.time_limit_minutes=null",
              f"loss.adversarial_start={args.steps // 2}", *args.set]
    jobs = {}
    for name in args.variants:
        command = diffsat_command("train", str(AE_CONFIG), "--out", str(args.out / f"ae-{name}"), "--no-progress",
                                  *sets(common + VARIANTS[name]))
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / f"ae-{name}.log", "w") as log:
            jobs[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if not args.parallel:
            jobs[name].wait()
    for name, job in jobs.items():
        if job.wait() != 0:
            raise SystemExit(f"variant {name} failed: see {args.out / f'ae-{name}.log'}")
        run_dir = args.out / f"ae-{name}"
        report = json.loads((run_dir / "reconstruction.json").read_text())
        record(args.out, {"stage": "ae-sweep", "variant": name, "device": args.device,
                          "overrides": common + VARIANTS[name], **train_summary(run_dir), "reconstruction": report})


def timed_sample(run_dir: Path, out: Path, n: int, extra: list[str]) -> float:
    text = run("sample", str(run_dir), "--out", str(out), "--n", str(n), *extra)
    return float(re.search(r"in ([0-9.]+) s", text).group(1))


def sampling_seconds(loaded, n: int, sampler: str, steps: int, precision: str) -> float:
    """Seconds to draw ``n`` images of ``loaded`` (a :class:`~diffsat.rundir.LoadedModel`, decoded through its
    encoder) in one batch; ``precision`` ``auto`` first draws once untimed, so the one-off precision
    measurement (cached afterwards) is not counted."""
    from diffsat.sampling import SampleSettings, generate

    settings = SampleSettings(sampler, steps=steps, batch_size=n, device="cpu", precision=precision)
    with torch.inference_mode():
        if precision == "auto":
            generate(loaded.network, loaded.config, n, 0, settings, encoder=loaded.encoder, progress=False)
        start = time.perf_counter()
        generate(loaded.network, loaded.config, n, 0, settings, encoder=loaded.encoder, progress=False)
    return time.perf_counter() - start


def speed(args: argparse.Namespace) -> None:
    """500 latent tiles (the trained run) against 500 pixel-space ``satellite64_cpu`` tiles (random weights:
    the time does not depend on them), at equal sampler and steps, in precision auto and in fp32."""
    from diffsat.rundir import load_model, random_model

    latent, pixel = load_model(args.out / "latent"), random_model(PIXEL_CONFIG)
    row = {"stage": "speed", "n": args.n, "sampler": args.sampler, "steps": args.steps}
    for precision in ("auto", "fp32"):
        for name, loaded in (("latent", latent), ("pixel", pixel)):
            row[f"{name}_{precision}_s"] = sampling_seconds(loaded, args.n, args.sampler, args.steps, precision)
        row[f"speedup_{precision}"] = row[f"pixel_{precision}_s"] / row[f"latent_{precision}_s"]
    record(args.out, row)


def recipe(args: argparse.Namespace) -> None:
    ae_dir, latent_dir = args.out / "ae", args.out / "latent"
    if not args.skip_train:
        start = time.perf_counter()
        run("train", str(AE_CONFIG), "--out", str(ae_dir), "--no-progress", *sets(args.ae_set))
        ae_wall = time.perf_counter() - start
        record(args.out, {"stage": "autoencoder", "overrides": args.ae_set, **train_summary(ae_dir),
                          "wall_s": ae_wall, "reconstruction": json.loads((ae_dir / "reconstruction.json").read_text())})
        start = time.perf_counter()
        run("train", str(LATENT_CONFIG), "--out", str(latent_dir), "--no-progress",
            *sets([f"latent.autoencoder={ae_dir}", *args.latent_set]))
        latent_wall = time.perf_counter() - start
        record(args.out, {"stage": "latent diffusion", "overrides": args.latent_set, **train_summary(latent_dir),
                          "wall_s_with_encoding_and_grids": latent_wall, "both_stages_wall_s": ae_wall + latent_wall})
    samples = args.out / "samples"
    seconds = timed_sample(latent_dir, samples, args.n, [])
    run("chain", str(latent_dir), "--out", str(args.out / "chain.png"), "--n", "4")
    run("evaluate", str(samples), "--reference", str(latent_dir), "--train-set", str(latent_dir),
        "--out", str(args.out / "metrics.json"), "--no-progress")
    metrics = json.loads((args.out / "metrics.json").read_text())["metrics"]
    record(args.out, {"stage": "samples", "n": args.n, "latent_sampling_s": seconds, "metrics": metrics})
    speed(args)


def ring_and_inside_l1(decoded: torch.Tensor, target: torch.Tensor, ring: int = 4) -> tuple[float, float]:
    """Mean absolute error in the outer ``ring`` pixels and inside them (images ``(N, C, S, S)``)."""
    error = (decoded - target).abs().mean(dim=(0, 1))
    inside = torch.zeros_like(error, dtype=torch.bool)
    inside[ring:-ring, ring:-ring] = True
    return float(error[~inside].mean()), float(error[inside].mean())


def frame(args: argparse.Namespace) -> None:
    """Does a latent cut from the middle of a whole tile's latent decode with a frame? For each autoencoder
    run: ``--tiles`` held-out tiles encoded whole, the centre latent of a ``size`` px crop decoded with and
    without edge padding, against the crop encoded by itself; L1 in the outer 4 px and inside."""
    from diffsat.config import load_any_config
    from diffsat.data import load_dataset
    from diffsat.models.autoencoder import interior
    from diffsat.models.encoders import AutoencoderLatents
    from diffsat.rundir import load_autoencoder

    for run_dir in args.autoencoders:
        loaded = load_autoencoder(run_dir)
        ae, f, data = loaded.network, loaded.network.factor, load_any_config(run_dir / "config.json").data
        tiles = load_dataset(data.model_copy(update={"split": "test"}))
        whole = tiles.model_view(data.model_copy(update={"image_size": tiles.resolution}))[: args.tiles]
        size, side = data.image_size, tiles.resolution
        cut = (side - size) // 2
        target = whole[..., cut : cut + size, cut : cut + size]
        row = {"stage": "frame", "autoencoder": str(run_dir), "tiles": len(whole), "decode_pad_used": loaded.decode_pad}
        with torch.inference_mode():
            latent = ae.encode(whole)[0]
            cut_latent = ae.normalise(latent[..., cut // f : (cut + size) // f, cut // f : (cut + size) // f])
            for pad in (0, 2):  # as sampled latents are decoded, with and without edge padding
                decoded = AutoencoderLatents(ae, decode_pad=pad).decode(cut_latent)
                row[f"cut_pad{pad}_replicate"] = ring_and_inside_l1(decoded, target)
            context = latent[..., cut // f - 2 : (cut + size) // f + 2, cut // f - 2 : (cut + size) // f + 2]
            row["cut_pad2_true_context"] = ring_and_inside_l1(interior(ae.decode(context).clamp(-1, 1), 2 * f), target)
            row["crop_encoded_itself"] = ring_and_inside_l1(ae(target)[0].clamp(-1, 1), target)
        record(args.out, row)


def table(args: argparse.Namespace) -> None:
    for line in (args.out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["stage"] in ("ae-sweep", "autoencoder"):
            r = row["reconstruction"]
            cells = [f"{r[k]['psnr']:.2f} / {r[k]['ssim']:.3f} / {r[k]['swd']:.0f} "
                     f"({', '.join(f'{r[k][f]:.0f}' for f in sorted(r[k]) if f.startswith('swd_'))})"
                     for k in ("autoencoder", "bicubic")]
            print(f"| {row.get('variant', 'recipe')} | {row['steps']} | {row['train_s'] / 60:.1f} | {cells[0]} | {cells[1]} |")
        else:
            print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("ae-sweep")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", action="store_true", help="train the variants at the same time (a GPU)")
    p.add_argument("--set", action="append", default=[], help="override for every variant")
    p.set_defaults(run=ae_sweep)
    p = sub.add_parser("recipe")
    p.add_argument("--ae-set", action="append", default=[])
    p.add_argument("--latent-set", action="append", default=[])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--skip-train", action="store_true", help="reuse OUT/ae and OUT/latent")
    p.set_defaults(run=recipe)
    p = sub.add_parser("speed")
    p.add_argument("--n", type=int, default=500)
    p.set_defaults(run=speed)
    p = sub.add_parser("frame")
    p.add_argument("autoencoders", nargs="+", type=Path, help="autoencoder run directories")
    p.add_argument("--tiles", type=int, default=48)
    p.set_defaults(run=frame)
    p = sub.add_parser("table")
    p.set_defaults(run=table)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, required=True)
    for name in ("recipe", "speed"):
        sub.choices[name].add_argument("--sampler", default="dpm++sde", help="sampler of the speed comparison")
        sub.choices[name].add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
