"""Multi-scale sliced Wasserstein distance on Laplacian-pyramid patches."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffsat.evaluation import laplacian_pyramid, sliced_wasserstein_distance
from diffsat.evaluation.swd import pyr_up, pyramid_resolutions


def _collapse(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Invert a Laplacian pyramid: upsample the residual and add the band-pass levels back, coarse to fine."""
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = band + pyr_up(image, tuple(band.shape[-2:]))
    return image


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)``, reflect borders."""
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@pytest.fixture(scope="module")
def tiles(shared_data: Path) -> torch.Tensor:
    """64 real UC Merced tiles (every 25th file: 4 of each of the 16 classes), ``(64, 3, 128, 128)`` in [-1, 1]."""
    files = sorted((shared_data / "ucmerced-128").glob("*/*.png"))
    if len(files) < 64:
        pytest.skip("../shared/data/ucmerced-128 not found or incomplete")
    files = files[:: len(files) // 64][:64]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def test_pyramid_resolutions_follow_progan() -> None:
    assert pyramid_resolutions(128) == [128, 64, 32, 16]
    assert pyramid_resolutions(28) == [28] and pyramid_resolutions(50) == [50, 25]
    with pytest.raises(ValueError):
        pyramid_resolutions(15)


@pytest.mark.parametrize("size", [32, 50, 64])
def test_laplacian_pyramid_is_exactly_invertible(size: int) -> None:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    pyramid = laplacian_pyramid(x, len(pyramid_resolutions(size)))
    assert [p.shape[-1] for p in pyramid] == [-(-size // 2**i) for i in range(len(pyramid))]
    torch.testing.assert_close(_collapse(pyramid), x, atol=1e-5, rtol=0)


def test_identical_sets_score_zero_at_any_size() -> None:
    gen = torch.Generator().manual_seed(0)
    for size in (16, 28, 50):
        x = torch.rand(6, 1, size, size, generator=gen) * 2 - 1
        result = sliced_wasserstein_distance(x, x.clone(), nhoods_per_image=32)
        assert result.resolutions == tuple(pyramid_resolutions(size))
        assert max(result.per_level) < 1e-6 and result.mean < 1e-6


def test_seeded_and_unequal_set_sizes() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(10, 3, 32, 32, generator=gen), torch.rand(7, 3, 32, 32, generator=gen) * 0.5
    r1 = sliced_wasserstein_distance(a, b, nhoods_per_image=16, seed=3)
    r2 = sliced_wasserstein_distance(a, b, nhoods_per_image=16, generator=torch.Generator().manual_seed(3))
    assert r1 == r2 and len(r1.per_level) == 2 and r1.mean > 0
    assert r1.mean == pytest.approx(sum(r1.per_level) / 2)


def test_swd_grows_monotonically_with_blur_on_real_tiles(tiles: torch.Tensor) -> None:
    assert sliced_wasserstein_distance(tiles, tiles).mean < 1e-6
    blurred = [_gaussian_blur(tiles, sigma) for sigma in (0.5, 1.0, 2.0)]
    results = [sliced_wasserstein_distance(tiles, b, nhoods_per_image=64) for b in blurred]
    means = [r.mean for r in results]
    assert means[0] > 1.0 and means == sorted(means) and means[2] > 3 * means[0], means
    finest = [r.per_level[0] for r in results]
    assert finest == sorted(finest), finest
