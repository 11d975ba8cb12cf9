"""Where a training step's batch comes from: held image tiles, or the cached latents of a latent diffusion run.

A batch source is called with the step's image indices, the step's generator and this rank's shard, and
returns the batch ``(B, C, S, S)`` float32 the network trains on; every draw is made for the global batch and
sharded, so data-parallel ranks together draw what one process would.

Latent runs: the encoder does not commute with flips and quarter turns, so each held tile is encoded once
under each distinct view the data config's augmentation can make (:func:`distinct_views`: 8 with ``hflip``
and ``rot90``) and the normalised latents of all views are cached in the run directory
(:data:`diffsat.rundir.LATENT_CACHE`, float16) by the run's encoder
(:class:`~diffsat.models.encoders.AutoencoderLatents` or ``TaesdLatents``). A step then draws a view per image and
a crop of the latent:
a random crop of ``image_size / f`` latent pixels stands for the image crop at the same offset times ``f``
(the encoder is convolutional: equal away from the tile's border). The cache is rebuilt when the
autoencoder's weights or latent statistics, the data config, the tiles or the encoding precision change. The encoding runs under
bf16 autocast when ``train.precision`` says so (``auto``: when a timing of the encoder finds it faster), and
its seconds count towards the run's ``train.time_limit_minutes`` (a batch source's ``setup_s``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .. import rundir
from ..config import Config, DataConfig, TrainConfig
from ..data import ImageDataset
from ..data.transforms import Shard, augment, crop, randint_sharded, to_model_range
from ..errors import ConfigError
from ..fileio import atomic_write
from ..models.encoders import LatentEncoder, TaesdLatents
from ..precision import Precision, resolve_precision
from ..seeding import batch_indices, step_generator
from .distributed import DistContext


class BatchSource(Protocol):
    """Called with a step's image indices, generator and shard; returns the batch. ``setup_s``: the seconds
    spent preparing it (encoding a latent run's tiles), which the time limit counts."""

    setup_s: float

    def __call__(self, idx: torch.Tensor, generator: torch.Generator, shard: Shard) -> torch.Tensor: ...


def step_batch(source: BatchSource, n: int, step: int, tc: TrainConfig, dist: DistContext
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of step ``step``'s global batch of ``n`` items from ``source``, on the device
    (channels-last when ``tc.channels_last``), and the global batch's indices ``(B x world size,)`` int64."""
    global_idx = batch_indices(n, tc.batch_size * dist.world_size, step, tc.seed)
    idx = dist.shard(global_idx).to(dist.device)
    x = source(idx, step_generator(tc.seed, step, 1), (dist.rank, dist.world_size))
    return (x.contiguous(memory_format=torch.channels_last) if tc.channels_last else x), global_idx


ENCODE_BATCH = 32
"""Tiles encoded per call when a latent cache is built."""
View = tuple[bool, bool, int]
"""(flip width axis, flip height axis, quarter turns), applied in this order, as :func:`augment` does."""


class PixelBatches:
    """Batches of the held tiles ``(N, C, H, W)`` (uint8 or float32), cropped and augmented by ``data``."""

    setup_s = 0.0

    def __init__(self, tiles: torch.Tensor, data: DataConfig) -> None:
        self.tiles, self.data = tiles, data

    def __call__(self, idx: torch.Tensor, generator: torch.Generator, shard: Shard) -> torch.Tensor:
        return augment(self.tiles[idx], self.data, generator, shard=shard)


def apply_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """``x`` ``(..., H, W)`` flipped and turned as ``view`` says."""
    hflip, vflip, quarters = view
    x = x.flip(-1) if hflip else x
    x = x.flip(-2) if vflip else x
    return torch.rot90(x, quarters, dims=(-2, -1)) if quarters else x


def distinct_views(data: DataConfig) -> list[View]:
    """The distinct views :func:`augment` can make of a tile with ``data``'s flips and quarter turns, each as
    likely as the others (the first is the identity)."""
    probe = torch.arange(4).view(2, 2)
    seen, out = set(), []
    for hflip in (False, True) if data.hflip else (False,):
        for vflip in (False, True) if data.vflip else (False,):
            for quarters in range(4) if data.rot90 else (0,):
                key = tuple(apply_view(probe, (hflip, vflip, quarters)).flatten().tolist())
                if key not in seen:
                    seen.add(key)
                    out.append((hflip, vflip, quarters))
    return out


class LatentBatches:
    """Batches of cached latents ``(N, V, L, h, w)`` (float32, normalised): a view and a crop per image.
    ``setup_s``: the seconds it took to encode (or read) them."""

    def __init__(self, latents: torch.Tensor, size: int, random_crop: bool, setup_s: float = 0.0) -> None:
        self.latents, self.size, self.random_crop, self.setup_s = latents, size, random_crop, setup_s

    def __call__(self, idx: torch.Tensor, generator: torch.Generator, shard: Shard) -> torch.Tensor:
        views = randint_sharded(self.latents.shape[1], len(idx), generator, shard).to(self.latents.device)
        chosen = self.latents[idx, views]
        return crop(chosen, self.size, generator if self.random_crop else None, shard).float().contiguous()


def encode_views(encoder: LatentEncoder, tiles: torch.Tensor, views: list[View],
                 batch_size: int = ENCODE_BATCH, progress: bool = True, bf16: bool = False) -> torch.Tensor:
    """Normalised mean latents of every tile under every view: ``(N, V, L, H/f, W/f)`` float32 on the CPU.

    ``tiles``: ``(N, C, H, W)`` uint8 or float32 in [-1, 1], ``H`` and ``W`` multiples of the factor.
    ``bf16``: encode under bf16 autocast (the normalisation stays float32)."""
    device = encoder.device
    out = []
    bar = tqdm(total=len(tiles) * len(views), desc="encoding latents", unit="image", disable=not progress)
    with bar, torch.inference_mode():
        for chunk in tiles.split(batch_size):
            x = to_model_range(chunk.to(device))
            per_view = []
            for view in views:
                per_view.append(encoder.encode(apply_view(x, view), bf16=bf16).cpu())
                bar.update(len(chunk))
            out.append(torch.stack(per_view, dim=1))
    return torch.cat(out)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes and values): identifies the weights a cache was made with."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_key(encoder: LatentEncoder, dataset: ImageDataset, data: DataConfig, views: list[View],
               bf16: bool) -> str:
    tiles = dataset.tiles
    stats = [encoder.mean.flatten().tolist(), encoder.std.flatten().tolist()] if isinstance(encoder, TaesdLatents) else None
    return json.dumps({"autoencoder": weights_digest(encoder.autoencoder), "latent_stats": stats,
                       "data": data.model_dump(mode="json"),
                       "tiles": list(tiles.shape), "tiles_sum": float(tiles.sum(dtype=torch.float64)),
                       "views": [list(v) for v in views], "bf16": bf16}, sort_keys=True)


def _read_cache(path: Path, key: str) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("latents").float()
    except (SafetensorError, OSError, KeyError, ValueError):  # a damaged cache is rebuilt, never trusted
        return None


def cached_latents(encoder: LatentEncoder, dataset: ImageDataset, data: DataConfig, run_dir: Path,
                   progress: bool = True, bf16: bool = False) -> torch.Tensor:
    """The latents of ``dataset`` under ``data``'s views (:func:`encode_views`) as float16 values in a float32
    ``(N, V, L, h, w)`` tensor, read from the run's cache when it was made with the same autoencoder weights,
    data config, tiles and precision (``bf16``), else computed and cached."""
    views = distinct_views(data)
    key = _cache_key(encoder, dataset, data, views, bf16)
    path = rundir.run_file(run_dir, rundir.LATENT_CACHE)
    latents = _read_cache(path, key)
    if latents is None:
        stored = encode_views(encoder, dataset.tiles, views, progress=progress, bf16=bf16).half().contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: save_file({"latents": stored}, p, metadata={"key": key}))
        latents = stored.float()  # the values a resumed run reads back
    return latents


def encoding_bf16(encoder: LatentEncoder, tile_shape: tuple[int, ...], precision: Precision,
                  dist: DistContext) -> bool:
    """Whether a latent run encodes under bf16 autocast: ``precision`` as :func:`diffsat.precision.resolve_precision`
    decides it for the encoder on ``(ENCODE_BATCH, *tile_shape)`` tiles, on rank 0 (every rank takes its choice)."""
    choice = dist.is_main and resolve_precision(
        precision, encoder.autoencoder.encoder, (ENCODE_BATCH, *tile_shape), dist.device, with_level=False,
        announce=lambda line: print(f"encoding latents: {line}", flush=True))
    return bool(dist.broadcast_from_main(int(choice)))


def latent_batches(encoder: LatentEncoder, dataset: ImageDataset, config: Config, run_dir: Path,
                   dist: DistContext, precision: Precision) -> LatentBatches:
    """The batch source of a latent run: rank 0 builds (or reads) the cache, then every rank reads it."""
    start = time.perf_counter()
    data, factor = config.data, encoder.factor
    held = dataset.tiles.shape[-1]
    if held % factor:
        raise ConfigError(f"data: tiles are held at {held} px, which the autoencoder's factor {factor} does not "
                          f"divide: set data.load_size to a multiple of {factor}")
    bf16 = encoding_bf16(encoder, tuple(dataset.tiles.shape[1:]), precision, dist)
    if dist.is_main:
        latents = cached_latents(encoder, dataset, data, run_dir, bf16=bf16)
    dist.barrier()
    if not dist.is_main:
        latents = cached_latents(encoder, dataset, data, run_dir, progress=False, bf16=bf16)
    return LatentBatches(latents.to(dist.device), data.image_size // factor, data.random_crop,
                         setup_s=time.perf_counter() - start)
