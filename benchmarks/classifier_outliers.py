"""How the digit classifier's recognisable fraction treats real, damaged and non-digit images.

For 1,000 images of each kind (10,000 for the real test digits): the fraction with max class probability
>= 0.9, the number of argmax classes, and the mean max probability. Non-digits should score ~0, damaged
digits in between, real digits ~0.98.

    python benchmarks/classifier_outliers.py --mnist ../shared/data/mnist [--classifier PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from diffsat.evaluation import digit_metrics, load_classifier
from diffsat.evaluation.image_sets import load_real


def cases(x: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Named image sets ``(N, 1, 28, 28)`` in ``[-1, 1]`` built from real test digits ``x`` and noise."""
    shape = (1000, 1, 28, 28)
    d = x[:1000]
    left = torch.arange(28) < 14
    return {
        "real test digits (10,000)": x,
        "uniform noise": torch.rand(shape, generator=g) * 2 - 1,
        "gaussian noise, clamped": torch.randn(shape, generator=g).clamp(-1, 1),
        "black": -torch.ones(shape),
        "smooth noise (5x5 box) x3": (3 * F.avg_pool2d(torch.randn(shape, generator=g), 5, 1, 2)).clamp(-1, 1),
        "sparse dots (10 %)": torch.where(torch.rand(shape, generator=g) < 0.1, 1.0, -1.0),
        "digit + 0.2 N(0,1)": (0.8 * d + 0.2 * torch.randn(shape, generator=g)).clamp(-1, 1),
        "digit + 0.3 N(0,1)": (0.7 * d + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1),
        "digit + 0.5 N(0,1)": (0.5 * d + 0.5 * torch.randn(shape, generator=g)).clamp(-1, 1),
        "two digits superimposed": torch.maximum(d, d.roll(1, 0)),
        "digit shifted 4 px": torch.roll(d, 4, dims=3),
        "digit blurred (3x3 box)": F.avg_pool2d(d, 3, 1, 1),
        "digit thickened (3x3 max)": F.max_pool2d(d, 3, 1, 1),
        "left half of a digit": torch.where(left, d, torch.tensor(-1.0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--classifier", type=Path, help="weights file (default: the cached classifier)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classifier = load_classifier(args.classifier)
    x = load_real(args.mnist, 1, 28, split="test").images
    print("| images | recognisable (conf >= 0.9) | classes | mean confidence |")
    print("|---|---:|---:|---:|")
    for name, images in cases(x, torch.Generator().manual_seed(args.seed)).items():
        m = digit_metrics(classifier.predict_proba(images))
        print(f"| {name} | {m['recognisable']:.3f} | {m['classes_present']} | {m['mean_confidence']:.3f} |")


if __name__ == "__main__":
    main()
