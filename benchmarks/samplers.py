"""Sample quality against network evaluations (NFE) for the four samplers, on the trained mnist_cpu model.

For each (sampler, steps) of the plan: draw N digits (default 500, seed 0, one batch, what ``diffsat sample
RUN --sampler S --steps K --batch-size 500`` runs), timed (wall and process CPU time); write them as PNGs to
OUT/<sampler>-<steps>/; score the folder as ``diffsat evaluate OUT/<sampler>-<steps> --reference MNIST``
does (digit-classifier metrics against the MNIST test digits, each beside a real baseline of N test digits);
append the row to OUT/rows.jsonl. Rows already in that file are reused, so an interrupted run resumes.
At the end: a Markdown table (printed and written to OUT/summary.md) and the plot --plot (quality against
NFE, log x axis).

    python benchmarks/samplers.py --run runs/bench_mnist_cpu/run --mnist ../shared/data/mnist \\
        --out runs/bench_samplers [--estimate] [--plot benchmarks/results/samplers_nfe.png]

``--estimate`` times a few network evaluations at batch N and prints the expected total before running.
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
from diffsat.sample_folder import save_pngs
from diffsat.sampling import SampleSettings, generate

ROOT = Path(__file__).resolve().parents[1]
PLAN: dict[str, tuple[int, ...]] = {
    "ancestral": (25, 50, 100, 200, 1000),
    "ddim": (10, 20, 50, 100),
    "dpm++": (5, 10, 15, 20, 50),
    "dpm++sde": (5, 10, 15, 20, 50),
}
LABELS = {"ancestral": "ancestral (DDPM)", "ddim": "DDIM, eta = 0", "dpm++": "DPM-Solver++(2M)",
          "dpm++sde": "SDE-DPM-Solver++(2M)"}
EVAL_SECONDS_GUESS = 25.0  # one evaluation of 500 digits against 9,500 test digits on the 2-core CPU


def plan_items(only: list[str] | None) -> list[tuple[str, int]]:
    """(sampler, steps) pairs of :data:`PLAN`, restricted to ``only`` (e.g. ``dpm++-20``) when given."""
    items = [(s, k) for s, ks in PLAN.items() for k in ks]
    return [it for it in items if only is None or f"{it[0]}-{it[1]}" in only]


def timed_generate(net, n: int, seed: int, settings: SampleSettings) -> tuple[torch.Tensor, float, float]:
    """``(images (n, 1, 28, 28), wall seconds, process CPU seconds / threads)`` of one generate call."""
    wall, cpu = time.perf_counter(), time.process_time()
    images = generate(net.network, net.config, n, seed, settings, progress=True)
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


def measure(net, sampler: str, steps: int, args: argparse.Namespace, classifier, reference) -> dict:
    """Sample, save, load back (as PNG, like ``diffsat evaluate``) and score one configuration."""
    settings = SampleSettings(sampler, steps, batch_size=args.n, device="cpu")
    images, wall, cpu = timed_generate(net, args.n, args.seed, settings)
    folder = args.out / f"{sampler}-{steps}"
    save_pngs(images, folder)
    start = time.perf_counter()
    result = evaluate(load_samples(folder), reference, classifier=classifier,
                      settings=EvalSettings(seed=0, progress=False))
    m = {row.key: row for row in result.metrics}
    return {
        "sampler": sampler, "steps": steps, "nfe": steps, "n": args.n, "seconds": round(wall, 2),
        "cpu_seconds_per_thread": round(cpu, 2), "load": round(os.getloadavg()[0], 2),
        "recognisable": m["recognisable"].value, "recognisable_real": m["recognisable"].baseline,
        "fid": m["fid_classifier"].value, "fid_real": m["fid_classifier"].baseline,
        "classes_present": m["classes_present"].value, "class_entropy": m["class_entropy"].value,
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def table(rows: list[dict]) -> str:
    """Markdown table, one row per configuration in plan order, with quality relative to ancestral 1000."""
    ref = next((r for r in rows if (r["sampler"], r["steps"]) == ("ancestral", 1000)), None)
    header = ("| sampler | NFE | recognisable | FID (classifier features) | vs ancestral 1000: recognisable, FID "
              "| s / 500 digits (CPU s / thread) | load |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    order = {(s, k): i for i, (s, k) in enumerate(plan_items(None))}
    for r in sorted(rows, key=lambda r: order.get((r["sampler"], r["steps"]), 1e9)):
        rel = (f"{r['recognisable'] / ref['recognisable']:.2f}x, {r['fid'] / ref['fid']:.2f}x" if ref else "-")
        scale = 500 / r["n"]
        lines.append(f"| {LABELS[r['sampler']]} | {r['nfe']} | {r['recognisable']:.3f} | {r['fid']:.1f} | {rel} "
                     f"| {r['seconds'] * scale:.1f} ({r['cpu_seconds_per_thread'] * scale:.1f}) | {r['load']:.1f} |")
    if rows:
        real = rows[0]
        lines.append(f"| real test digits (baseline, {real['n']}) | - | {real['recognisable_real']:.3f} "
                     f"| {real['fid_real']:.1f} | - | - | - |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> Path:
    """Recognisable fraction and classifier FID against NFE (log x), one line per sampler, real baseline
    dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    metrics = (("recognisable", "recognisable fraction (higher is better)"),
               ("fid", "FID on classifier features (lower is better)"))
    for ax, (key, title) in zip(axes, metrics):
        for sampler in PLAN:
            mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
            if mine:
                ax.plot([r["nfe"] for r in mine], [r[key] for r in mine], "o-", label=LABELS[sampler])
        if rows:
            ax.axhline(rows[0][f"{key}_real"], ls="--", c="grey", label=f"real test digits ({rows[0]['n']})")
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps (one network call each; with guidance on a doubled batch)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mnist_cpu model, {rows[0]['n'] if rows else 0} digits per point, seed 0", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench_mnist_cpu" / "run")
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_samplers")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "samplers_nfe.png")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="SAMPLER-STEPS", help="e.g. dpm++-20 ancestral-1000")
    parser.add_argument("--estimate", action="store_true", help="print the expected run time and stop")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot from rows.jsonl")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "rows.jsonl"
    items = plan_items(args.only)
    if not args.report:
        net = load_model(args.run)
        if args.estimate:
            estimate(net, args.n, items)
            return
        classifier = load_classifier()
        reference = load_real(args.mnist, 1, 28, "test")
        for sampler, steps in items:
            if any((r["sampler"], r["steps"], r["n"]) == (sampler, steps, args.n) for r in read_rows(rows_file)):
                print(f"{sampler} {steps}: already in {rows_file}")
                continue
            row = measure(net, sampler, steps, args, classifier, reference)
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    rows = [r for r in read_rows(rows_file) if r["n"] == args.n]
    summary = table(rows)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"plot -> {plot(rows, args.plot)}")


if __name__ == "__main__":
    main()
