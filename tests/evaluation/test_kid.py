"""KID: unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets."""

import itertools

import numpy as np
import pytest
import torch

from diffsat.evaluation import kernel_inception_distance
from diffsat.evaluation.kid import kid_subset_values, polynomial_mmd2


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, by explicit loops."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_textbook_estimator() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 4)), rng.standard_normal((9, 4)) + 0.5
    assert polynomial_mmd2(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(_naive_mmd2(x, y), rel=1e-10)


def test_two_halves_of_one_distribution_give_zero_within_the_error() -> None:
    # Non-Gaussian, non-negative features like post-ReLU activations.
    f = torch.relu(torch.randn(4000, 64, generator=torch.Generator().manual_seed(1)))
    mean, stderr = kernel_inception_distance(f[:2000], f[2000:], subsets=50, subset_size=500, seed=0)
    assert stderr > 0
    assert abs(mean) < 3 * stderr


def test_standard_error_is_the_spread_of_the_mean_over_independent_draws() -> None:
    """With sets much larger than the subsets (independent subsets), the reported standard error
    std(subset values) / sqrt(subsets) matches how much the KID mean moves between seeds."""
    gen = torch.Generator().manual_seed(5)
    f1, f2 = torch.relu(torch.randn(20000, 8, generator=gen)), torch.relu(torch.randn(20000, 8, generator=gen) + 0.1)
    mean, stderr = kernel_inception_distance(f1, f2, subsets=20, subset_size=50, seed=0)
    values = kid_subset_values(f1, f2, subsets=20, subset_size=50, seed=0)
    assert mean == pytest.approx(float(values.mean())) and stderr == pytest.approx(float(values.std() / 20**0.5))
    draws = [kernel_inception_distance(f1, f2, subsets=20, subset_size=50, seed=s) for s in range(40)]
    spread, typical_error = np.std([m for m, _ in draws], ddof=1), np.mean([e for _, e in draws])
    assert 0.7 < spread / typical_error < 1.4


def test_shifted_distributions_are_clearly_positive() -> None:
    gen = torch.Generator().manual_seed(2)
    f1 = torch.relu(torch.randn(2000, 64, generator=gen))
    f2 = torch.relu(torch.randn(2000, 64, generator=gen) + 0.2)
    mean, stderr = kernel_inception_distance(f1, f2, subsets=50, subset_size=500, seed=0)
    assert mean > 0 and mean > 10 * stderr


def test_subset_size_is_clipped_and_seed_reproducible() -> None:
    gen = torch.Generator().manual_seed(3)
    f1, f2 = torch.randn(40, 8, generator=gen), torch.randn(60, 8, generator=gen).numpy()
    a = kernel_inception_distance(f1, f2, subsets=5, subset_size=1000, seed=7)
    b = kernel_inception_distance(f1, f2, subsets=5, subset_size=1000, generator=torch.Generator().manual_seed(7))
    assert a == b
    one_mean, one_std = kernel_inception_distance(f1, f2[:40], subsets=1)
    assert one_std == 0.0
    assert one_mean == pytest.approx(polynomial_mmd2(f1.double(), torch.from_numpy(f2[:40]).double()))


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError):
        kernel_inception_distance(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError):
        kernel_inception_distance(torch.zeros(1, 3), torch.zeros(10, 3))
