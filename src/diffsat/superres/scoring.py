"""Scoring super-resolution outputs against the true high-resolution images, beside bicubic upsampling.

Per image: PSNR and SSIM on all channels, PSNR-Y and SSIM-Y (luma, ``scale`` pixels shaved off each border,
as the super-resolution literature reports them; RGB only), and the consistency PSNR (the output brought
back down by the run's degradation against the low-resolution input it was made from). Over the set: the
means, and multi-scale SWD of outputs against the true images (the sharpness a user sees); with an Inception
network KID and FID too. Every score is also given for bicubic upsampling of the same inputs.

Images ``(N, C, H, W)`` float32 in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ConditionConfig
from ..evaluation.inception import FIDInceptionV3
from ..evaluation.fidelity import fidelity
from ..evaluation.fid import fid_from_features
from ..evaluation.kid import kernel_inception_distance
from ..evaluation.swd import sliced_wasserstein_distance
from .degradation import condition_input, consistency_psnr

PER_IMAGE = ("psnr", "ssim", "psnr_y", "ssim_y", "consistency_psnr")


def image_scores(output: torch.Tensor, truth: torch.Tensor, low: torch.Tensor, cond: ConditionConfig
                 ) -> dict[str, torch.Tensor]:
    """The per-image scores ``(N,)`` of :data:`PER_IMAGE` (``*_y`` for RGB only)."""
    scores = fidelity(output, truth, border=cond.scale)
    scores["consistency_psnr"] = consistency_psnr(output, low, cond)
    return scores


def set_scores(output: torch.Tensor, truth: torch.Tensor, seed: int = 0,
               inception: FIDInceptionV3 | None = None) -> dict[str, float]:
    """SWD x1e3 (mean of the pyramid levels, and per level ``swd_<px>``) of ``output`` against ``truth``; with
    the ``inception`` network also ``kid`` (x1e3) and ``fid`` of its pool features."""
    swd = sliced_wasserstein_distance(output, truth, seed=seed)
    out = {"swd": swd.mean} | {f"swd_{r}": v for r, v in zip(swd.resolutions, swd.per_level)}
    if inception is not None:
        a, b = inception.features(output), inception.features(truth)
        kid = kernel_inception_distance(a, b, subset_size=min(1000, len(a), len(b)), seed=seed)[0]
        out |= {"kid": 1e3 * float(kid), "fid": fid_from_features(a, b)}
    return out


def score_outputs(outputs: dict[str, torch.Tensor], truth: torch.Tensor, low: torch.Tensor, cond: ConditionConfig,
                  names: list[str], seed: int = 0, inception: FIDInceptionV3 | None = None) -> dict[str, Any]:
    """Scores of each named set of ``outputs`` (e.g. ``{"diffusion": ..., "mean of 4 draws": ...}``) and of
    bicubic upsampling of ``low``: ``{"summary": {method: {score: mean}}, "per_image": [rows]}``."""
    methods = {"bicubic": condition_input(low, cond.scale)} | outputs
    summary, rows = {}, [{"name": n} for n in names]
    for method, images in methods.items():
        per_image = image_scores(images, truth, low, cond)
        summary[method] = {k: float(v.mean()) for k, v in per_image.items()}
        summary[method] |= set_scores(images, truth, seed, inception)
        for row, i in zip(rows, range(len(names))):
            row[method] = {k: float(v[i]) for k, v in per_image.items()}
    return {"images": len(names), "summary": summary, "per_image": rows}


def format_summary(result: dict[str, Any]) -> str:
    """A text table of the summary (one row per method)."""
    keys = [k for k in ("psnr", "ssim", "psnr_y", "ssim_y", "consistency_psnr", "swd", "kid", "fid")
            if k in next(iter(result["summary"].values()))]
    lines = ["method".ljust(22) + "".join(k.rjust(18) for k in keys)]
    for method, scores in result["summary"].items():
        lines.append(method.ljust(22) + "".join(f"{scores[k]:18.4f}" for k in keys))
    return "\n".join(lines)
