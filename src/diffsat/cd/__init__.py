"""Change detection from diffusion features (DDPM-CD's method), with the FC-Siam-diff and CVA baselines.

Python use::

    from diffsat.cd import load_cd_config, train_cd, predict_run, evaluate_masks
    cfg = load_cd_config("configs/cd_levir_cpu.json", ["train.cpu_minutes=5"])
    doc = train_cd(cfg, "runs/cd")                       # test_metrics.json's content
    doc = cross_validate(load_cd_config("configs/cd_oscd_cpu.json"), "runs/cd_oscd")  # data.folds
    predict_run("runs/cd", "../shared/data/levir-cd256-samples", "out/masks")
    scores = evaluate_masks("out/masks", "../shared/data/levir-cd256-samples")

Modules, lowest first: ``config`` (the validated ``cd`` config), ``pairs`` (LEVIR-CD / open-cd / OSCD pairs,
8-bit or raster, crops), ``metrics`` (one confusion matrix), ``cva``, ``features`` (frozen backbone, noise
levels, cache), ``heads`` (DDPM-CD head, FC-Siam-diff), ``methods``, ``predict`` (window by window),
``outputs`` (PNG, GeoTIFF, figures), ``train``, ``report``, ``run``, ``folds`` (cross-validation). Windows and raster I/O live in
:mod:`diffsat.geo`.
"""

from __future__ import annotations

from .config import CDConfig, load_cd_config, parse_cd_config
from .folds import cross_validate
from .run import evaluate_masks, predict_run, train_cd

__all__ = ["CDConfig", "cross_validate", "evaluate_masks", "load_cd_config", "parse_cd_config", "predict_run",
           "train_cd"]
