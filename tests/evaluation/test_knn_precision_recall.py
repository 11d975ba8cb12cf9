"""Improved precision/recall (k-NN manifolds) on Gaussian features with known overlap."""

import pytest
import torch

from diffsat.evaluation import precision_recall
from diffsat.evaluation.knn_precision_recall import inside_manifold, knn_radii


@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2000, 8, generator=gen), torch.randn(4000, 8, generator=gen)


def test_knn_radii_match_brute_force() -> None:
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    brute = torch.cdist(x, x).sort(dim=1).values[:, 3]  # column 0 is the point itself
    torch.testing.assert_close(knn_radii(x, k=3, chunk=7), brute)
    inside = inside_manifold(x[:5] + 100.0, x, brute, chunk=2)
    assert not inside.any()


def test_identical_sets_give_one_one(sets) -> None:
    real, _ = sets
    assert precision_recall(real, real) == (1.0, 1.0)


def test_same_distribution_is_near_one_one(sets) -> None:
    real, fake = sets
    precision, recall = precision_recall(real, fake[:2000])
    assert precision > 0.85 and recall > 0.85


def test_shifted_distribution_has_low_precision_and_recall(sets) -> None:
    real, fake = sets
    precision, recall = precision_recall(real, fake[:2000] + 3.0)
    assert precision < 0.05 and recall < 0.05


def test_half_the_distribution_keeps_precision_and_loses_recall(sets) -> None:
    real, fake = sets
    half = fake[fake[:, 0] > 0][:2000]  # only one side of the real distribution: mode dropping
    precision, recall = precision_recall(real, half)
    _, full_recall = precision_recall(real, fake[:2000])
    assert precision > 0.85 and recall < 0.7 and full_recall - recall > 0.2


def test_too_few_samples_for_k_is_an_error() -> None:
    with pytest.raises(ValueError, match="k=3"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2))
