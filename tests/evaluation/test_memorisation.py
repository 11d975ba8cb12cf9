"""Memorisation: nearest-neighbour distances to the training set, relative to held-out real data."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsat.evaluation import memorisation_report, nearest_neighbour_distances, save_closest_pairs_figure


def test_nearest_neighbours_match_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    q, ref = torch.randn(37, 2, 4, 4, generator=gen), torch.randn(53, 32, generator=gen).numpy()
    dist, index = nearest_neighbour_distances(q, ref, chunk=5)
    full = torch.cdist(q.reshape(37, -1), torch.from_numpy(ref))
    assert dist.shape == (37,) and index.dtype == torch.int64
    torch.testing.assert_close(index, full.argmin(dim=1))
    torch.testing.assert_close(dist, full.min(dim=1).values)


def test_exact_copies_and_fresh_samples_synthetic() -> None:
    gen = torch.Generator().manual_seed(1)
    train, heldout, fresh = (torch.randn(n, 64, generator=gen) for n in (1000, 300, 300))
    picked = torch.randperm(1000, generator=gen)[:300]
    copied = memorisation_report(train[picked], train, heldout)
    assert copied["memorisation_ratio"] < 1e-6 and copied["near_copy_fraction"] == 1.0
    for s, t, d in copied["closest_pairs"]:
        assert t == int(picked[s]) and d < 1e-4
    healthy = memorisation_report(fresh, train, heldout)
    assert 0.9 < healthy["memorisation_ratio"] < 1.1 and healthy["near_copy_fraction"] < 0.05


@pytest.fixture(scope="module")
def mnist_pixels(shared_data: Path) -> torch.Tensor:
    """The 10,000 real MNIST test digits as float32 ``(N, 1, 28, 28)`` in [-1, 1]."""
    from diffsat.data.mnist import load_mnist_idx

    if not (shared_data / "mnist").is_dir():
        pytest.skip("../shared/data/mnist not found")
    images, _ = load_mnist_idx(shared_data / "mnist", "test")
    return torch.from_numpy(images).float().div(127.5).sub(1.0)[:, None]


def test_real_digits_copies_vs_fresh(mnist_pixels: torch.Tensor, tmp_path: Path) -> None:
    train, heldout, fresh = mnist_pixels[:3000], mnist_pixels[3000:3500], mnist_pixels[3500:4000]
    gen = torch.Generator().manual_seed(2)
    copies = (train[torch.randint(0, 3000, (500,), generator=gen)] + 0.02 * torch.randn(500, 1, 28, 28, generator=gen))
    memorised = memorisation_report(copies, train, heldout)
    healthy = memorisation_report(fresh, train, heldout)
    assert memorised["memorisation_ratio"] < 0.1 and memorised["near_copy_fraction"] == 1.0
    assert 0.9 < healthy["memorisation_ratio"] < 1.15 and healthy["near_copy_fraction"] < 0.05
    assert healthy["copy_threshold"] == pytest.approx(float(np.percentile(
        nearest_neighbour_distances(heldout, train)[0].numpy(), 1)), rel=1e-5)
    fixed = memorisation_report(fresh, train, heldout, copy_threshold=1e9)
    assert fixed["near_copy_fraction"] == 1.0 and fixed["n_train"] == 3000

    path = save_closest_pairs_figure(copies, train, memorised["closest_pairs"][:6], tmp_path / "fig" / "pairs.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > img.height > 100
