"""Multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, ProGAN, app. D).

The maths of ProGAN's ``metrics/sliced_wasserstein.py``, in torch:

1. Laplacian pyramid of every image with the 5x5 binomial kernel (``cv2.pyrDown``/``pyrUp``, mirror borders),
   one level per resolution ``H, H/2, ...`` down to >= 16 px; the last level is the low-pass residual.
2. Per level, ``nhoods_per_image`` random 7x7 neighbourhoods per image (all channels) as descriptors.
3. Per set and level, each channel of the descriptors is normalised by its mean/std over the whole set.
4. SWD between the two descriptor sets: ``dir_repeats`` x ``dirs_per_repeat`` random unit directions,
   project, sort, mean absolute difference; averaged over repeats. Reported x1e3, per level and their mean.

Differences from ProGAN: the neighbourhood positions are drawn once and shared by both sets (so a set
compared with itself scores exactly 0), and when the sets differ in size the larger descriptor set is
randomly subsampled to the smaller. All randomness comes from ``seed`` or a ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_KERNEL = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0
MIN_RESOLUTION = 16


@dataclass(frozen=True)
class SWDResult:
    """``resolutions``: pyramid level sizes (finest first); ``per_level``: SWD x1e3 per level; ``mean``: their mean."""

    resolutions: tuple[int, ...]
    per_level: tuple[float, ...]
    mean: float


def _binomial_blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5x5 binomial filter of each channel of ``x`` ``(N, C, H, W)``, mirror (reflect) borders, times ``gain``."""
    c = x.shape[1]
    weight = (_KERNEL * gain).to(x.dtype).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur and take every other pixel (``cv2.pyrDown``): ``(N, C, H, W)`` -> ``(N, C, ceil(H/2), ceil(W/2))``."""
    return _binomial_blur(x)[..., ::2, ::2]


def pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-interleave to twice the size, blur with gain 4 (``cv2.pyrUp``), crop to ``size`` ``(H, W)``."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    return _binomial_blur(up, 4.0)[..., : size[0], : size[1]]


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` band-pass images of ``x`` ``(N, C, H, W)``, finest first; the last is the low-pass residual."""
    pyramid = [x]
    for _ in range(1, levels):
        down = pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - pyr_up(down, tuple(pyramid[-1].shape[-2:]))
        pyramid.append(down)
    return pyramid


def pyramid_resolutions(size: int) -> list[int]:
    """Level sizes ``size, size // 2, ...`` while >= 16 (ProGAN's rule); ``size`` must be >= 16."""
    if size < MIN_RESOLUTION:
        raise ValueError(f"SWD needs images of at least {MIN_RESOLUTION} px, got {size}")
    out = []
    while size >= MIN_RESOLUTION:
        out.append(size)
        size //= 2
    return out


def _extract(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, half: int) -> torch.Tensor:
    """Neighbourhoods of ``level`` ``(N, C, h, w)`` centred at ``ys, xs`` ``(N, K)`` -> ``(N*K, C, 2h+1, 2h+1)``."""
    n, k = ys.shape
    off = torch.arange(-half, half + 1)
    rows = (ys.reshape(-1, 1, 1) + off.view(1, -1, 1)).expand(-1, 2 * half + 1, 2 * half + 1)
    cols = (xs.reshape(-1, 1, 1) + off.view(1, 1, -1)).expand(-1, 2 * half + 1, 2 * half + 1)
    img = torch.arange(n).repeat_interleave(k).view(-1, 1, 1)
    return level.permute(0, 2, 3, 1)[img, rows, cols].permute(0, 3, 1, 2)  # (P, 7, 7, C) -> (P, C, 7, 7)


def _descriptors(images: torch.Tensor, positions: list[tuple[torch.Tensor, torch.Tensor]], half: int,
                 batch_size: int) -> list[torch.Tensor]:
    """Per level: normalised flattened descriptors ``(N*K, C*(2h+1)^2)`` of ``images`` at ``positions``."""
    per_level: list[list[torch.Tensor]] = [[] for _ in positions]
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(torch.float32)
        for lvl, (band, (ys, xs)) in enumerate(zip(laplacian_pyramid(batch, len(positions)), positions)):
            end = start + len(batch)
            per_level[lvl].append(_extract(band, ys[start:end], xs[start:end], half))
    out = []
    for chunks in per_level:
        desc = torch.cat(chunks)
        desc = (desc - desc.mean(dim=(0, 2, 3), keepdim=True)) / desc.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
        out.append(desc.reshape(len(desc), -1))
    return out


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, dir_repeats: int, dirs_per_repeat: int,
                       generator: torch.Generator) -> float:
    """SWD between descriptor sets ``a``, ``b`` ``(P, D)`` (same P): mean over repeats of the mean |sorted
    projection difference| over ``dirs_per_repeat`` random unit directions."""
    results = []
    for _ in range(dir_repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=generator)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        proj_a, proj_b = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values
        results.append((proj_a - proj_b).abs().mean())
    return float(torch.stack(results).mean())


def _positions(n: int, size: tuple[int, int], per_image: int, half: int, gen: torch.Generator):
    """Random neighbourhood centres ``(ys, xs)``, each ``(n, per_image)``, keeping the patch inside the image."""
    ys = torch.randint(half, size[0] - half, (n, per_image), generator=gen)
    xs = torch.randint(half, size[1] - half, (n, per_image), generator=gen)
    return ys, xs


def sliced_wasserstein_distance(
    images1: torch.Tensor,
    images2: torch.Tensor,
    nhoods_per_image: int = 128,
    nhood_size: int = 7,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
    seed: int = 0,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> SWDResult:
    """Multi-scale SWD (x1e3) between image sets ``(N1, C, H, W)`` and ``(N2, C, H, W)`` in ``[-1, 1]``, H, W >= 16.

    ``dir_repeats * dirs_per_repeat`` directions per level (ProGAN: 4 x 128). Lower is better; 0 for
    identical sets. Descriptor memory is ``N * nhoods_per_image * C * nhood_size^2`` floats per level.
    """
    if images1.ndim != 4 or images1.shape[1:] != images2.shape[1:]:
        shapes = f"{tuple(images1.shape)}, {tuple(images2.shape)}"
        raise ValueError(f"need two (N, C, H, W) sets of equal C, H, W; got {shapes}")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    half, n_max = nhood_size // 2, max(len(images1), len(images2))
    resolutions = pyramid_resolutions(min(images1.shape[-2:]))
    sizes = [tuple(t.shape[-2:]) for t in laplacian_pyramid(images1[:1].float(), len(resolutions))]
    positions = [_positions(n_max, s, nhoods_per_image, half, gen) for s in sizes]
    desc1 = _descriptors(images1.detach().cpu(), positions, half, batch_size)
    desc2 = _descriptors(images2.detach().cpu(), positions, half, batch_size)
    values = []
    for a, b in zip(desc1, desc2):
        p = min(len(a), len(b))
        a = a if len(a) == p else a[torch.randperm(len(a), generator=gen)[:p]]
        b = b if len(b) == p else b[torch.randperm(len(b), generator=gen)[:p]]
        values.append(1e3 * sliced_wasserstein(a, b, dir_repeats, dirs_per_repeat, gen))
    return SWDResult(tuple(resolutions), tuple(values), sum(values) / len(values))
