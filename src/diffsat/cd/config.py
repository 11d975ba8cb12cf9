"""The validated change-detection config: one JSON object ``{"cd": {...}}`` with four sections.

``data`` (which pairs form the train / val / test splits, crop size, augmentation, prediction window),
``features`` (the frozen diffusion backbone, its noise levels and feature scales), ``head`` (the model
trained: DDPM-CD's head on diffusion features, or a baseline) and ``train`` (optimiser, budget,
checkpoints). Every key is typed; an unknown or mistyped key is one :class:`~diffsat.config.ConfigError`
line naming the key and the file, as for the generation configs. ``--set section.key=value`` overrides
(``train.lr=3e-4``) apply inside the ``cd`` object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ..config import ConfigError, NormalisationConfig, _format_error, _Section, apply_overrides, read_json
from ..fileio import atomic_write_text
from ..precision import Precision
from ..rundir import CONFIG_FILE, run_file

DDPMCD_TIMESTEPS = (50, 100, 400)
"""DDPM-CD's noise levels for LEVIR-CD, as timesteps of its 2000-step linear 1e-6..1e-2 schedule."""
DDPMCD_FEAT_SCALES = (2, 5, 8, 11, 14)
"""DDPM-CD's ``feat_scales``: the first decoder block after each upsampling of the 5-level 391M U-Net."""
METHODS = ("ddpmcd", "fc_siam_diff", "cva")


class PairSource(_Section):
    """Pairs from one folder: LEVIR-CD layout (``root/A``, ``root/B``, ``root/label``, ``root/list/*.txt``),
    open-cd layout (``root/<list>/A``, ``.../B``, ``.../label``) or OSCD (the folder holding
    ``Onera Satellite Change Detection dataset - Images``). A/ and B/ may hold rasters (GeoTIFF and co)."""

    root: str
    list: str | None = None
    """LEVIR-CD: the names in ``root/list/<list>.txt``; open-cd: the sub-folder ``root/<list>/``; OSCD: the
    cities of ``train.txt`` or ``test.txt``; ``None``: every image in ``root/A`` (every OSCD city)."""
    names: tuple[str, ...] | None = None
    """Only these file names (OSCD: cities), in this order, taken from the list or folder."""


class FoldConfig(_Section):
    """One fold of a cross-validation: the pairs (OSCD: cities) it scores, and the pairs, taken from the
    others, that choose its best weights; it trains on every other pair of ``data.train``."""

    test: tuple[str, ...] = Field(min_length=1)
    val: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _disjoint(self) -> "FoldConfig":
        both = sorted(set(self.test) & set(self.val))
        if both:
            raise ValueError(f"pair '{both[0]}' is in a fold's test and its val; a fold validates on other pairs")
        return self


class CDDataConfig(_Section):
    train: tuple[PairSource, ...] = ()
    val: tuple[PairSource, ...] = ()
    test: tuple[PairSource, ...] = ()
    crop_size: int = Field(128, ge=8)
    """Side of the random training crops (pairs smaller than this are padded by reflection)."""
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    """Flips and quarter turns, applied identically to A, B and the label (nadir imagery)."""
    window: int = Field(256, ge=8)
    """Prediction: side of the sliding windows a pair of any size is cut into."""
    margin: int = Field(32, ge=0)
    """Prediction: each window's outer ``margin`` pixels are dropped (except at the image border) so
    windows overlap by ``2 * margin`` and every pixel is predicted with context around it."""
    bands: tuple[str | int, ...] | None = None
    """Raster pairs: the bands to use, by name (``B04``, a band description) or 1-based position; ``None``:
    every band (8-bit images: RGB)."""
    normalisation: NormalisationConfig = NormalisationConfig()
    folds: tuple[FoldConfig, ...] = ()
    """Cross-validation (e.g. leaving cities out): ``data.train`` is then the pool of labelled pairs, every
    one of them scored by exactly one fold, by a model trained on the pool without that fold's ``test`` and
    ``val`` pairs (with its own band normalisation); ``data.val`` and ``data.test`` stay empty."""

    @model_validator(mode="after")
    def _windows(self) -> "CDDataConfig":
        if 2 * self.margin >= self.window:
            raise ValueError(f"data.margin ({self.margin}) must be less than half of data.window ({self.window})")
        if self.folds:
            if self.val or self.test:
                raise ValueError("data.folds choose each fold's val and test pairs from data.train: leave data.val "
                                 "and data.test empty")
            tested = [name for fold in self.folds for name in fold.test]
            twice = sorted({n for n in tested if tested.count(n) > 1})
            if twice:
                raise ValueError(f"pair '{twice[0]}' is scored by two folds; each pair belongs to one fold's test")
        return self


class FeatureConfig(_Section):
    backbone: str | None = None
    """A diffsat run directory, or a DDPM-CD / SR3 checkpoint (``*_gen.pth``) with ``backbone_config``.
    Relative paths are relative to the directory diffsat runs from."""
    backbone_config: str | None = None
    ema: bool = True
    noise_levels: tuple[float, ...] | None = None
    """sqrt(alpha_bar) of each noise level, in (0, 1]; exclusive with ``timesteps``."""
    timesteps: tuple[int, ...] | None = None
    """DDPM-CD timesteps on the backbone's own schedule (level sqrt(alpha_bar_{t-1}), as DDPM-CD's
    ``sqrt_alphas_cumprod_prev[t]``); both unset: DDPM-CD's ``[50, 100, 400]``."""
    decoder_scales: tuple[int, ...] = DDPMCD_FEAT_SCALES
    """DDPM-CD ``feat_scales`` indexing of the decoder's residual blocks, finest first: scale ``s`` is level
    ``s // (res_blocks + 1)`` (0 = full resolution), and within it block ``res_blocks - s % (res_blocks + 1)``
    in forward order (block 0 follows the upsampling)."""
    encoder_scales: tuple[int, ...] = ()
    """DDPM-CD indexing of the encoder outputs (``init_conv`` = 0, then every block and downsampling)."""
    seed: int = 0
    """Seed of the noise added to the images (the same noise for A and B): features are deterministic."""
    cache_dtype: Literal["float16", "float32"] = "float16"
    precision: Precision = "auto"
    """The backbone's forward passes: float32, bfloat16 autocast, or ``auto``: bf16 when a cached timing of
    this backbone on this machine finds it faster (:func:`diffsat.precision.resolve_precision`, measured at a
    ``data.window`` square). The choice is part of the feature cache's key."""

    @model_validator(mode="after")
    def _levels(self) -> "FeatureConfig":
        if self.noise_levels is not None and self.timesteps is not None:
            raise ValueError("give features.noise_levels or features.timesteps, not both")
        if self.noise_levels is not None and not all(0.0 < v <= 1.0 for v in self.noise_levels):
            raise ValueError("features.noise_levels are sqrt(alpha_bar) values in (0, 1]")
        if self.timesteps is not None and not all(t >= 1 for t in self.timesteps):
            raise ValueError("features.timesteps start at 1")
        if not self.decoder_scales and not self.encoder_scales:
            raise ValueError("features.decoder_scales and features.encoder_scales are both empty")
        return self

    @property
    def levels_or_timesteps(self) -> tuple[str, tuple[float, ...]]:
        if self.noise_levels is not None:
            return "levels", self.noise_levels
        return "timesteps", tuple(float(t) for t in (self.timesteps or DDPMCD_TIMESTEPS))


class HeadConfig(_Section):
    kind: Literal["ddpmcd", "fc_siam_diff", "cva"] = "ddpmcd"
    """``ddpmcd``: DDPM-CD's head on diffusion features; ``fc_siam_diff``: FC-Siam-diff from scratch on the
    images; ``cva``: change vector analysis (no training)."""
    compare: tuple[Literal["fc_siam_diff", "cva"], ...] = ("cva",)
    """Baselines trained and scored beside it, the same way and with the same budget (sub-runs in
    ``RUN/baselines/<name>/``)."""
    classifier_channels: int = Field(64, ge=1)


class CDTrainConfig(_Section):
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    max_steps: int = Field(5000, ge=1)
    cpu_minutes: float | None = Field(None, gt=0.0)
    """Stop after this much process CPU time (``time.process_time``, all threads; robust to other load) in
    training steps; counted over resumes."""
    change_weight: float | None = Field(None, gt=0.0)
    """Cross-entropy weight of the "change" class (no change: 1); ``None``: unweighted."""
    eval_every: int = Field(100, ge=1)
    """Validation change-F1 every N steps; the best is kept as ``best.safetensors``."""
    log_every: int = Field(20, ge=1)
    save_every: int = Field(100, ge=1)
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)
    seed: int = 0


class CDConfig(_Section):
    data: CDDataConfig = CDDataConfig()
    features: FeatureConfig = FeatureConfig()
    head: HeadConfig = HeadConfig()
    train: CDTrainConfig = CDTrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "CDConfig":
        if self.head.kind == "ddpmcd" and self.features.backbone is None:
            raise ValueError("head.kind 'ddpmcd' needs features.backbone (a diffsat run or a DDPM-CD checkpoint)")
        if self.head.kind in self.head.compare:
            raise ValueError(f"head.compare lists head.kind '{self.head.kind}' itself")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"cd": self.model_dump(mode="json")}


def parse_cd_config(data: Any, source: str = "<cd config>") -> CDConfig:
    """Validate ``{"cd": {...}}``; a :class:`ConfigError` naming ``source`` and the bad key otherwise."""
    if not isinstance(data, dict) or set(data) != {"cd"} or not isinstance(data["cd"], dict):
        extra = sorted(set(data) - {"cd"}) if isinstance(data, dict) else []
        what = f"unknown top-level key '{extra[0]}'" if extra else "expected a JSON object {\"cd\": {...}}"
        raise ConfigError(f"{source}: {what} (a change-detection config holds one object 'cd' with sections "
                          f"data/features/head/train)")
    try:
        return CDConfig.model_validate(data["cd"])
    except ValidationError as err:
        raise ConfigError(_format_error(err, source).replace("config key '", "config key 'cd.", 1)) from None


def load_cd_config(path: str | Path, overrides: list[str] | None = None) -> CDConfig:
    """Load a change-detection config (or a cd run directory's ``config.json``); ``overrides`` are
    ``section.key=value`` inside ``cd`` (``train.lr=3e-4``)."""
    path = Path(path)
    if path.is_dir():
        path = run_file(path, CONFIG_FILE)
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("cd"), dict) and overrides:
        data = {"cd": apply_overrides(data["cd"], overrides, sections=CDConfig.model_fields)}
    return parse_cd_config(data, str(path))


def save_cd_config(config: CDConfig, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")
