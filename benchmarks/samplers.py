"""Sample quality against network evaluations (NFE) for the four samplers, on the trained mnist_cpu model.

For each (sampler, steps) of the plan and each guidance scale of ``--guidance`` (default: the run's
``train.guidance``): draw N digits (default 500, seed 0, one batch, what ``diffsat sample RUN --sampler S
--steps K --guidance G --batch-size 500`` runs), timed (wall and process CPU time); write them as PNGs to
OUT/<sampler>-<steps>[-g<G>]/ with the timing in its ``timing.json``; score the folder as ``diffsat evaluate
OUT/<sampler>-<steps> --reference MNIST`` does (digit-classifier metrics against the MNIST test digits, each
beside a real baseline of N test digits); append the row to OUT/rows.jsonl. Rows already in that file are
reused, and a folder that already holds its ``timing.json`` is scored without sampling again, so an
interrupted run resumes and ``--sample-only`` on one machine (a GPU) can be scored on another.
At the end: a Markdown table (printed and written to OUT/summary.md), the plot --plot (quality against
NFE, log x axis) and, with several guidance scales, --guidance-plot (recognisable fraction and FID against
the guidance scale, one line per sampler setting).

    python benchmarks/samplers.py --run runs/bench_mnist_cpu/run --mnist ../shared/data/mnist \\
        --out runs/bench_samplers [--estimate] [--plot benchmarks/results/samplers_nfe.png]
    python benchmarks/samplers.py --run runs/mnist --plan defaults --guidance 1 1.5 2 2.5 3 \\
        --out runs/bench_defaults --plot benchmarks/results/defaults_nfe.png \\
        --guidance-plot benchmarks/results/defaults_guidance.png

``--plan defaults`` is the plan that chose ``diffsat sample``'s defaults (ancestral 100 and 1000, DPM-Solver++
10 and 20, SDE-DPM-Solver++ 10/15/20/25). ``--estimate`` times a few network evaluations at batch N and
prints the expected total before running.
Every sampler uses its default spacing (ancestral and DDIM: uniform; both DPM-Solver++: log-SNR) and static x0
clipping; DDIM runs with eta = 0.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from diffsat.evaluation import (
    EvalSettings,
    evaluate,
    load_classifier,
    load_real,
    load_samples,
)
from diffsat.rundir import load_model
from diffsat.sample_folder import save_pngs, write_labels
from diffsat.sampling import SampleSettings, class_labels, generate

ROOT = Path(__file__).resolve().parents[1]
PLAN: dict[str, tuple[int, ...]] = {
    "ancestral": (25, 50, 100, 200, 1000),
    "ddim": (10, 20, 50, 100),
    "dpm++": (5, 10, 15, 20, 50),
    "dpm++sde": (5, 10, 15, 20, 50),
}
PLANS: dict[str, dict[str, tuple[int, ...]]] = {
    "nfe": PLAN,
    "defaults": {"ancestral": (100, 1000), "dpm++": (10, 20), "dpm++sde": (10, 15, 20, 25)},
}
LABELS = {"ancestral": "ancestral (DDPM)", "ddim": "DDIM, eta = 0", "dpm++": "DPM-Solver++(2M)",
          "dpm++sde": "SDE-DPM-Solver++(2M)"}
EVAL_SECONDS_GUESS = 25.0  # one evaluation of 500 digits against 9,500 test digits on the 2-core CPU


def plan_items(only: list[str] | None, plan: str = "nfe") -> list[tuple[str, int]]:
    """(sampler, steps) pairs of ``PLANS[plan]``, restricted to ``only`` (e.g. ``dpm++-20``) when given."""
    items = [(s, k) for s, ks in PLANS[plan].items() for k in ks]
    return [it for it in items if only is None or f"{it[0]}-{it[1]}" in only]


def timed_generate(net, n: int, seed: int, settings: SampleSettings) -> tuple[torch.Tensor, float, float]:
    """``(images (n, 1, 28, 28), wall seconds, process CPU seconds / threads)`` of one generate call."""
    wall, cpu = time.perf_counter(), time.process_time()
    images = generate(net.network, net.config, n, seed, settings, encoder=net.encoder, progress=True)
    return images, time.perf_counter() - wall, (time.process_time() - cpu) / torch.get_num_threads()


def estimate(net, n: int, items: list[tuple[str, int]], evals: int = 3) -> float:
    """Seconds the plan should take: ``evals`` timed network evaluations at batch ``n`` times the plan's
    NFE, plus a guess per evaluation."""
    settings = SampleSettings("ddim", evals, batch_size=n, device="cpu")
    _, wall, _ = timed_generate(net, n, 0, settings)
    per_eval = wall / evals
    nfe = sum(k for _, k in items)
    total = nfe * per_eval + len(items) * EVAL_SECONDS_GUESS
    print(f"{per_eval:.3f} s per network evaluation at batch {n}; {nfe} evaluations in the plan; "
          f"about {total / 60:.1f} min with {len(items)} evaluations of ~{EVAL_SECONDS_GUESS:.0f} s")
    return total


def folder_of(out: Path, sampler: str, steps: int, guidance: float | None) -> Path:
    """OUT/<sampler>-<steps> (the run's guidance) or OUT/<sampler>-<steps>-g<guidance>."""
    return out / (f"{sampler}-{steps}" if guidance is None else f"{sampler}-{steps}-g{guidance:g}")


def sample_folder(net, sampler: str, steps: int, guidance: float | None, args: argparse.Namespace) -> dict:
    """Draw and save one configuration's digits (with ``labels.txt``); its timing goes to ``timing.json``
    in the folder, which is returned (and reused as it is when the folder already holds it)."""
    folder = folder_of(args.out, sampler, steps, guidance)
    if (folder / "timing.json").is_file():
        return json.loads((folder / "timing.json").read_text())
    settings = SampleSettings(sampler, steps, batch_size=args.n, device=args.device, guidance=guidance)
    images, wall, cpu = timed_generate(net, args.n, args.seed, settings)
    save_pngs(images, folder)
    write_labels(class_labels(net.config, args.n, settings)[0], folder / "labels.txt")
    timing = {"seconds": round(wall, 2), "cpu_seconds_per_thread": round(cpu, 2),
              "load": round(os.getloadavg()[0], 2), "device": args.device,
              "guidance_used": settings.for_model(net.config).guidance}
    (folder / "timing.json").write_text(json.dumps(timing) + "\n")
    return timing


def measure(net, sampler: str, steps: int, guidance: float | None, args: argparse.Namespace, classifier,
            reference) -> dict:
    """Sample (or reuse the folder), load back (as PNG, like ``diffsat evaluate``) and score one configuration."""
    timing = sample_folder(net, sampler, steps, guidance, args)
    folder = folder_of(args.out, sampler, steps, guidance)
    start = time.perf_counter()
    result = evaluate(load_samples(folder), reference, classifier=classifier,
                      settings=EvalSettings(seed=0, progress=False))
    m = {row.key: row for row in result.metrics}
    return {
        "sampler": sampler, "steps": steps, "nfe": steps, "n": args.n, "guidance": guidance,
        "guidance_used": timing["guidance_used"], "device": timing["device"], "seconds": timing["seconds"],
        "cpu_seconds_per_thread": timing["cpu_seconds_per_thread"], "load": timing["load"],
        "recognisable": m["recognisable"].value, "recognisable_real": m["recognisable"].baseline,
        "fid": m["fid_classifier"].value, "fid_real": m["fid_classifier"].baseline,
        "classes_present": m["classes_present"].value, "class_entropy": m["class_entropy"].value,
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def table(rows: list[dict]) -> str:
    """Markdown table, one row per configuration in plan order and guidance, with quality relative to
    ancestral 1000 at the same guidance."""
    refs = {r.get("guidance_used"): r for r in rows if (r["sampler"], r["steps"]) == ("ancestral", 1000)}
    header = ("| sampler | NFE | guidance | recognisable | FID (classifier features) "
              "| vs ancestral 1000: recognisable, FID | s / 500 digits (CPU s / thread) | load |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = {(s, k): i for i, (s, k) in enumerate(plan_items(None, "nfe") + plan_items(None, "defaults"))}
    for r in sorted(rows, key=lambda r: (r.get("guidance_used") or 0, order.get((r["sampler"], r["steps"]), 1e9))):
        ref = refs.get(r.get("guidance_used"))
        rel = f"{r['recognisable'] / ref['recognisable']:.2f}x, {r['fid'] / ref['fid']:.2f}x" if ref else "-"
        scale = 500 / r["n"]
        guidance = "-" if r.get("guidance_used") is None else f"{r['guidance_used']:g}"
        lines.append(f"| {LABELS[r['sampler']]} | {r['nfe']} | {guidance} | {r['recognisable']:.3f} | {r['fid']:.1f} "
                     f"| {rel} | {r['seconds'] * scale:.1f} ({r['cpu_seconds_per_thread'] * scale:.1f}) "
                     f"| {r['load']:.1f} |")
    if rows:
        real = rows[0]
        lines.append(f"| real test digits (baseline, {real['n']}) | - | - | {real['recognisable_real']:.3f} "
                     f"| {real['fid_real']:.1f} | - | - | - |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, axes, out: Path, title: str) -> Path:
    """Legend on the first panel, the title, and the figure written to ``out``."""
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot(rows: list[dict], out: Path) -> Path:
    """Recognisable fraction and classifier FID against NFE (log x), one line per sampler and guidance, real
    baseline dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    metrics = (("recognisable", "recognisable fraction (higher is better)"),
               ("fid", "FID on classifier features (lower is better)"))
    scales = sorted({r.get("guidance_used") for r in rows}, key=lambda g: -1 if g is None else g)
    for ax, (key, title) in zip(axes, metrics):
        for sampler in LABELS:
            for g in scales:
                mine = sorted((r for r in rows if r["sampler"] == sampler and r.get("guidance_used") == g),
                              key=lambda r: r["nfe"])
                if mine:
                    label = LABELS[sampler] + ("" if len(scales) == 1 or g is None else f", guidance {g:g}")
                    ax.plot([r["nfe"] for r in mine], [r[key] for r in mine], "o-", label=label)
        if rows:
            ax.axhline(rows[0][f"{key}_real"], ls="--", c="grey", label=f"real test digits ({rows[0]['n']})")
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps (one network call each; with guidance on a doubled batch)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_yscale("log")
    return _save(plt, fig, axes, out, f"mnist_cpu model, {rows[0]['n'] if rows else 0} digits per point, seed 0")


def plot_guidance(rows: list[dict], out: Path) -> Path:
    """Recognisable fraction and classifier FID against the guidance scale, one line per (sampler, steps)
    measured at two scales or more, real baseline dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    settings = sorted({(r["sampler"], r["steps"]) for r in rows})
    for ax, key, title in ((axes[0], "recognisable", "recognisable fraction (higher is better)"),
                           (axes[1], "fid", "FID on classifier features (lower is better)")):
        for sampler, steps in settings:
            mine = sorted((r for r in rows if (r["sampler"], r["steps"]) == (sampler, steps)),
                          key=lambda r: r["guidance_used"])
            if len(mine) > 1:
                ax.plot([r["guidance_used"] for r in mine], [r[key] for r in mine], "o-",
                        label=f"{LABELS[sampler]}, {steps} steps")
        if rows:
            ax.axhline(rows[0][f"{key}_real"], ls="--", c="grey", label=f"real test digits ({rows[0]['n']})")
        ax.set_xlabel("classifier-free guidance scale")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    return _save(plt, fig, axes, out, f"mnist_cpu model: guidance, {rows[0]['n'] if rows else 0} digits per point, seed 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench_mnist_cpu" / "run")
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_samplers")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "samplers_nfe.png")
    parser.add_argument("--guidance-plot", type=Path, default=None, help="figure of quality against guidance")
    parser.add_argument("--plan", choices=list(PLANS), default="nfe")
    parser.add_argument("--guidance", type=float, nargs="+", default=[None],
                        help="guidance scales (default: the run's train.guidance)")
    parser.add_argument("--device", default="cpu", help="where to sample (cpu, cuda); scoring runs on the CPU")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="SAMPLER-STEPS", help="e.g. dpm++-20 ancestral-1000")
    parser.add_argument("--estimate", action="store_true", help="print the expected run time and stop")
    parser.add_argument("--sample-only", action="store_true", help="only draw and save the digits (no scoring)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot from rows.jsonl")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "rows.jsonl"
    items = [(s, k, g) for g in args.guidance for s, k in plan_items(args.only, args.plan)]
    if not args.report:
        net = load_model(args.run)
        if args.estimate:
            estimate(net, args.n, [(s, k) for s, k, _ in items])
            return
        if args.sample_only:
            for sampler, steps, guidance in items:
                print(json.dumps(sample_folder(net, sampler, steps, guidance, args)), flush=True)
            return
        classifier = load_classifier()
        reference = load_real(args.mnist, 1, 28, "test")
        for sampler, steps, guidance in items:
            key = (sampler, steps, guidance, args.n)
            if any((r["sampler"], r["steps"], r.get("guidance"), r["n"]) == key for r in read_rows(rows_file)):
                print(f"{sampler} {steps} guidance {guidance}: already in {rows_file}")
                continue
            row = measure(net, sampler, steps, guidance, args, classifier, reference)
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    rows = [r for r in read_rows(rows_file) if r["n"] == args.n]
    summary = table(rows)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"plot -> {plot(rows, args.plot)}")
    if args.guidance_plot and len({r.get("guidance_used") for r in rows}) > 1:
        print(f"guidance plot -> {plot_guidance(rows, args.guidance_plot)}")


if __name__ == "__main__":
    main()
