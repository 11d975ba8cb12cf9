"""Memorisation checks: how close generated samples sit to their nearest training image.

The reference scale is held-out real data: a fresh real image is some typical distance away from its nearest
training image. The memorisation ratio

    median NN distance (samples -> train) / median NN distance (held-out -> train)

is ~1 for a model that generalises and << 1 when samples are (near-)copies of training images. Works on
flattened raw pixels (images in ``[-1, 1]``) or on any feature vectors; L2 distances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffsat.evaluation.arrays import as_cpu_tensor

DEFAULT_CHUNK = 1024


def _flat(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` images or features -> float32 CPU ``(N, D)``."""
    t = as_cpu_tensor(x, torch.float32)
    return t.reshape(len(t), -1)


def nearest_neighbour_distances(
    queries: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distance ``(N,)`` float32 and index ``(N,)`` int64 of each query's nearest reference row.

    ``queries`` ``(N, ...)`` and ``reference`` ``(M, ...)`` are flattened to ``(N, D)`` / ``(M, D)``; the distance
    matrix is built ``chunk`` queries at a time (memory O(chunk * M)).
    """
    q, ref = _flat(queries), _flat(reference)
    if q.shape[1] != ref.shape[1] or len(ref) == 0:
        raise ValueError(f"queries {tuple(q.shape)} and reference {tuple(ref.shape)}: need the same D and M > 0")
    dist, index = [], []
    for block in q.split(chunk):
        d, i = torch.cdist(block, ref).min(dim=1)
        dist.append(d)
        index.append(i)
    if not dist:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(dist), torch.cat(index)


def memorisation_report(
    samples: np.ndarray | torch.Tensor,
    train: np.ndarray | torch.Tensor,
    heldout: np.ndarray | torch.Tensor,
    copy_threshold: float | None = None,
    top_k: int = 8,
) -> dict:
    """Nearest-training-neighbour statistics of ``samples`` ``(N, ...)`` against ``train`` ``(M, ...)``, with
    held-out real data ``heldout`` ``(H, ...)`` (not in ``train``) as the reference scale.

    Returns a dict:
      - ``sample_median``: median NN distance samples -> train; ``heldout_median``: the same for held-out;
      - ``memorisation_ratio``: sample_median / heldout_median (~1 healthy, << 1 memorised);
      - ``copy_threshold``: the near-copy distance (given, or the 1st percentile of held-out -> train distances);
      - ``near_copy_fraction``: fraction of samples whose NN distance is < copy_threshold, in ``[0, 1]``
        (~0.01 expected by construction for samples distributed like held-out data);
      - ``closest_pairs``: list of ``(sample index, train index, distance)`` for the ``top_k`` samples closest
        to the training set, closest first; ``n_samples``, ``n_train``, ``n_heldout``.
    """
    s_dist, s_idx = nearest_neighbour_distances(samples, train)
    h_dist, _ = nearest_neighbour_distances(heldout, train)
    threshold = float(torch.quantile(h_dist.double(), 0.01)) if copy_threshold is None else float(copy_threshold)
    sample_median, heldout_median = float(s_dist.median()), float(h_dist.median())
    order = torch.argsort(s_dist)[:top_k]
    return {
        "sample_median": sample_median,
        "heldout_median": heldout_median,
        "memorisation_ratio": sample_median / heldout_median if heldout_median > 0 else float("nan"),
        "copy_threshold": threshold,
        "near_copy_fraction": float((s_dist < threshold).float().mean()),
        "closest_pairs": [(int(i), int(s_idx[i]), float(s_dist[i])) for i in order],
        "n_samples": len(s_dist),
        "n_train": len(train),
        "n_heldout": len(h_dist),
    }


def _to_display(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """One image ``(C, H, W)``/``(H, W)`` in ``[-1, 1]`` -> ``(H, W)``/``(H, W, 3)`` float in ``[0, 1]`` for imshow."""
    a = torch.as_tensor(img).detach().cpu().to(torch.float32).numpy()
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    return np.clip((a + 1.0) / 2.0, 0.0, 1.0)


def save_closest_pairs_figure(
    samples_imgs: np.ndarray | torch.Tensor,
    train_imgs: np.ndarray | torch.Tensor,
    pairs: list[tuple[int, int, float]],
    path: str | Path,
) -> Path:
    """Save a PNG (or any matplotlib format, by suffix) with one column per pair: the sample on top, its
    nearest training image below, the distance in the title. ``*_imgs``: ``(N, C, H, W)`` or ``(N, H, W)`` in
    ``[-1, 1]``; ``pairs``: ``(sample index, train index, distance)`` as in ``memorisation_report``'s
    ``closest_pairs``. Drawn on a bare ``Figure`` (Agg canvas, no pyplot): needs no display and leaves the
    global matplotlib backend untouched. Returns the path.
    """
    from matplotlib.figure import Figure

    n = max(1, len(pairs))
    fig = Figure(figsize=(1.6 * n, 3.8))
    axes = fig.subplots(2, n, squeeze=False)
    for col, (si, ti, dist) in enumerate(pairs):
        for row, img in enumerate((samples_imgs[si], train_imgs[ti])):
            shown = _to_display(img)
            axes[row, col].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        axes[0, col].set_title(f"sample {si}\nd={dist:.3g}", fontsize=7)
        below = axes[1, col].transAxes
        axes[1, col].text(0.5, -0.04, f"train {ti}", transform=below, ha="center", va="top", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("closest sample (top) / nearest training image (bottom)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
