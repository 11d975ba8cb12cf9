"""Digit-classifier accuracy: the full training recipe on real MNIST must reach >= 99 % test accuracy.

Trains :func:`diffsat.evaluation.train_classifier` exactly as ``diffsat evaluate --train-classifier`` does
(all 60,000 training digits, 3 epochs, seed 0, float32, 1 thread; a few CPU minutes), writes the weights to
OUT/mnist_cnn.safetensors and a summary to OUT/result.json, and prints the test accuracy, the training
seconds and the CPU. It then checks the trained weights as the evaluation uses them: the accuracy (>= 0.99),
the stored metadata, a reload against the MNIST folder, the 32 px input path, the digit metrics of 1,000
test digits (all 10 classes, > 95 % recognisable, >= 98 % right) and of uniform noise (< 5 % recognisable:
outlier exposure). Exits 1 when a check fails. The test suite trains the same loop on a few thousand
digits only (``tests/evaluation/test_classifier.py``); this is the by-hand check of the full recipe.

    python benchmarks/classifier_accuracy.py --mnist ../shared/data/mnist --out runs/bench_classifier_accuracy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffsat.data.mnist import load_mnist_idx
from diffsat.evaluation import digit_metrics, load_classifier, train_classifier
from diffsat.evaluation.classifier import classifier_metadata
from diffsat.precision import cpu_description


def check_trained(model, accuracy: float, weights: Path, mnist: Path) -> dict[str, bool]:
    """The checks of the trained classifier described in the module docstring, by name -> passed."""
    meta = classifier_metadata(weights)
    sums_file = mnist / "SHA256SUMS.gz.txt"
    checks = {"test accuracy >= 0.99": accuracy >= 0.99,
              "metadata test_accuracy": abs(float(meta["test_accuracy"]) - accuracy) <= 1e-6}
    if sums_file.is_file():
        sums = dict(line.split()[::-1] for line in sums_file.read_text().splitlines() if line.strip())
        checks["metadata train_images_sha256"] = meta["train_images_sha256"] == sums["train-images-idx3-ubyte.gz"]
    loaded = load_classifier(weights, mnist_root=mnist)
    images, labels = load_mnist_idx(mnist, "test")
    x = torch.from_numpy(images[:1000]).float().div(127.5).sub(1.0)[:, None]
    probs = loaded.predict_proba(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)  # the 32 px MNIST of the diffusion models
    checks["reloaded weights predict alike"] = torch.allclose(probs, model.predict_proba(x), atol=1e-5)
    checks["32 px input predicts alike"] = torch.allclose(loaded.predict_proba(padded), probs, atol=1e-5)
    m = digit_metrics(probs)
    checks["1,000 test digits: 10 classes"] = m["classes_present"] == 10
    checks["1,000 test digits: > 95 % recognisable"] = m["recognisable"] > 0.95
    checks["1,000 test digits: >= 98 % right"] = (probs.argmax(dim=1).numpy() == labels[:1000]).mean() >= 0.98
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    checks["noise: < 5 % recognisable"] = digit_metrics(loaded.predict_proba(noise))["recognisable"] < 0.05
    return {name: bool(ok) for name, ok in checks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", required=True, type=Path, help="folder with the four MNIST idx files")
    parser.add_argument("--out", required=True, type=Path, help="folder for the weights and result.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "mnist_cnn.safetensors"
    cpu = cpu_description()
    print(f"CPU: {cpu}; training the digit classifier on {args.mnist} (3 epochs, seed {args.seed}) ...", flush=True)
    start = time.perf_counter()
    model, accuracy = train_classifier(args.mnist, weights, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"test accuracy {accuracy:.4f} on the 10,000 MNIST test digits in {seconds:.0f} s", flush=True)

    checks = check_trained(model, accuracy, weights, args.mnist)
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    result = {"test_accuracy": accuracy, "seconds": round(seconds, 1), "cpu": cpu, "seed": args.seed,
              "torch": torch.__version__, "checks": checks}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
