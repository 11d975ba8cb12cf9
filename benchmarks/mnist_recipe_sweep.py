"""Search the mnist_cpu recipe in *steps*, not seconds: train candidates for the number of steps each would
fit into 10 CPU minutes, sample 500 digits, and score them with the digit classifier.

The CPU budget of a candidate is ``steps = 600 s * (images/s measured on the 2-core CPU) / batch``; the
candidates then run wherever is fastest (a GPU if there is one, several in parallel), and the winner is
confirmed by a real 10-minute CPU run (benchmarks/mnist_cpu.py). Usage:

    python benchmarks/mnist_recipe_sweep.py --mnist ../shared/data/mnist --candidates sweep.json --workers 6

``sweep.json``: a list of ``{"name": ..., "steps": ..., "set": ["train.lr=1e-3", ...]}`` applied on top of
configs/mnist_cpu.json (with ``train.time_limit_minutes`` removed so the step count rules).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def score(images: torch.Tensor, classifier, test_features: torch.Tensor) -> dict:
    from diffsat.evaluation import digit_metrics, fid_from_features

    probs = classifier.predict_proba(images)
    metrics = digit_metrics(probs)
    metrics["fid"] = fid_from_features(classifier.features(images), test_features)
    return metrics


def run_candidate(job: dict) -> dict:
    from diffsat.config import load_config
    from diffsat.data.mnist import load_mnist_idx
    from diffsat.evaluation import load_classifier
    from diffsat.sampling import SampleSettings, generate
    from diffsat.training.runs import make_trainer

    torch.set_num_threads(2)
    overrides = ["train.time_limit_minutes=null", f"train.max_steps={job['steps']}", f"data.path={job['mnist']}",
                 "train.sample_every=1000000", "train.save_every=1000000", f"train.device={job['device']}"]
    config = load_config(ROOT / "configs" / "mnist_cpu.json", overrides + job.get("set", []))
    run_dir = Path(job["out"]) / job["name"]
    start = time.perf_counter()
    trainer = make_trainer(config, run_dir)
    result = trainer.run(progress=False)
    train_s = time.perf_counter() - start
    classifier = load_classifier(job["classifier"]).to(job["device"])
    test_images, _ = load_mnist_idx(job["mnist"], "test")
    test = torch.from_numpy(test_images[:5000]).float().div(127.5).sub(1)[:, None]
    test_features = classifier.features(test.to(job["device"])).cpu()
    row = {"name": job["name"], "steps": job["steps"], "set": job.get("set", []), "train_s": round(train_s, 1),
           "final_loss": result.last_loss}
    for sampler, steps in job.get("sample", [["ancestral", 50]]):
        settings = SampleSettings(sampler, steps, batch_size=500, device=job["device"])
        images = generate(trainer.ema.model, config, 500, seed=10_000, settings=settings, progress=False)
        m = score(images.to(job["device"]), classifier, test_features)
        keys = ("recognisable", "classes_present", "class_ratio", "fid", "histogram")
        row[f"{sampler}{steps}"] = {k: m[k] for k in keys}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", required=True)
    parser.add_argument("--candidates", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="/tmp/sweep")
    parser.add_argument("--classifier", default="/tmp/sweep/classifier.safetensors")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", default=None, help="append JSON lines here")
    args = parser.parse_args()
    from diffsat.evaluation import train_classifier

    if not Path(args.classifier).exists():
        _, acc = train_classifier(args.mnist, args.classifier, progress=False, threads=None)
        print(f"classifier test accuracy {acc:.4f}", flush=True)
    jobs = json.loads(Path(args.candidates).read_text())
    for job in jobs:
        job.update(mnist=args.mnist, out=args.out, classifier=args.classifier, device=args.device)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        for row in pool.imap_unordered(run_candidate, jobs):
            print(json.dumps(row), flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
