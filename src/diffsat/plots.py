"""Figures: loss curves and denoising chains (the only module importing matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data.transforms import to_uint8_hwc  # noqa: E402
from .rundir import LOSS_PLOT, QUALITY_PLOT, TRAIN_FIELDS, read_metrics, run_file  # noqa: E402


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard's smoothing)."""
    out, acc = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def smooth_log(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Geometric running average: :func:`smooth` of ``log(values)``, exponentiated (``values`` > 0).

    A loss falls by orders of magnitude in a run; an arithmetic average of it is dominated by the large early
    values for hundreds of steps and lies far above the curve on a log axis. On the log scale the average
    follows a decay with a constant lag: for ``values = exp(-k * i)`` the smoothed value at row ``i`` is
    ``exp(-k * (i - lag_i))`` with ``lag_i`` -> ``weight / (1 - weight)`` rows.
    """
    return np.exp(smooth(np.log(values), weight))


def plot_loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss against step, log scale, raw and smoothed (:func:`smooth_log`): ``RUN_DIR/loss.png``."""
    run_dir = Path(run_dir)
    m = read_metrics(run_dir)
    out = Path(out) if out else run_file(run_dir, LOSS_PLOT)
    rows = ~np.isnan(m.get("loss", np.array([])))
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows.any():
        step, loss = m["step"][rows], m["loss"][rows]
        ax.plot(step, loss, alpha=0.35, lw=1, label="loss (mean per log interval)")
        ax.plot(step, smooth_log(loss), lw=2, label="smoothed (geometric mean)")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(run_dir.name)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_quality(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Each sample-quality metric logged while training against step, one panel each: ``RUN_DIR/quality.png``.
    ``None`` when the run logged no evaluation."""
    run_dir = Path(run_dir)
    m = read_metrics(run_dir)
    names = [k for k in m if k not in TRAIN_FIELDS and not np.isnan(m[k]).all()]
    if not names:
        return None
    out = Path(out) if out else run_file(run_dir, QUALITY_PLOT)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = ~np.isnan(m[name])
        ax.plot(m["step"][rows], m[name][rows], marker="o", ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_training(run_dir: str | Path) -> list[Path]:
    """The loss curve and, when the run logged evaluations, the quality curves; returns the files written."""
    quality = plot_quality(run_dir)
    return [plot_loss_curve(run_dir)] + ([quality] if quality else [])


def plot_chain(frames: torch.Tensor, fractions: list[float], out: str | Path, title: str | None = None,
               rgb: tuple[int, int, int] | None = None) -> Path:
    """The denoising chain as one figure: a row per sample, a column per frame (x_T ... x_0).

    ``frames``: (F, N, C, H, W) in [-1, 1]; ``fractions``: F values of t/T shown above the columns; ``rgb``:
    the bands shown of multispectral frames.
    """
    f, n = frames.shape[:2]
    fig, axes = plt.subplots(n, f, figsize=(1.2 * f, 1.25 * n + 0.4), squeeze=False)
    for col in range(f):
        imgs = to_uint8_hwc(frames[col], rgb)
        for row in range(n):
            ax = axes[row][col]
            img = imgs[row]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t/T={fractions[col]:.1f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
