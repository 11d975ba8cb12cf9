"""Batch sources: the distinct views of the augmentation, latent batches, and the latent cache."""

from pathlib import Path

import pytest
import torch

from diffsat import rundir
from diffsat.config import AutoencoderModelConfig, DataConfig
from diffsat.data import ImageDataset
from diffsat.data.transforms import augment
from diffsat.models.autoencoder import Autoencoder
from diffsat.models.encoders import AutoencoderLatents
from diffsat.training import batches
from diffsat.training.batches import (
    LatentBatches,
    apply_view,
    cached_latents,
    distinct_views,
    encode_views,
    encoding_bf16,
)
from diffsat.training.distributed import DistContext


def data(**kw) -> DataConfig:
    return DataConfig(kind="folder", path="x", channels=3, image_size=16, **kw)


@pytest.mark.parametrize("flags, count", [({}, 1), ({"hflip": True}, 2), ({"hflip": True, "vflip": True}, 4),
                                          ({"rot90": True}, 4), ({"hflip": True, "rot90": True}, 8),
                                          ({"hflip": True, "vflip": True, "rot90": True}, 8)])
def test_distinct_views_are_the_dihedral_images_augment_can_make(flags, count) -> None:
    cfg = data(**flags)
    views = distinct_views(cfg)
    assert len(views) == count and views[0] == (False, False, 0)
    tile = torch.arange(3 * 16 * 16, dtype=torch.uint8).view(1, 3, 16, 16)
    made = {tuple(apply_view(tile, v).flatten().tolist()) for v in views}
    assert len(made) == count
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # every augmented image is one of the views
        out = augment(tile, cfg, gen)
        x = ((out + 1) * 127.5).round().to(torch.uint8)
        assert tuple(x.flatten().tolist()) in made


def test_latent_batches_pick_a_view_and_an_aligned_crop() -> None:
    latents = torch.randn(5, 8, 2, 6, 6)
    source = LatentBatches(latents, size=4, random_crop=True)
    idx = torch.tensor([0, 3, 3, 4])
    out = source(idx, torch.Generator().manual_seed(1), (0, 1))
    assert out.shape == (4, 2, 4, 4) and out.dtype == torch.float32
    gen = torch.Generator().manual_seed(1)  # the same draws by hand: views, then tops, then lefts
    views = torch.randint(0, 8, (4,), generator=gen)
    tops, lefts = torch.randint(0, 3, (4,), generator=gen), torch.randint(0, 3, (4,), generator=gen)
    for i in range(4):
        t, l = int(tops[i]), int(lefts[i])
        assert torch.equal(out[i], latents[idx[i], views[i], :, t : t + 4, l : l + 4])
    halves = [source(idx, torch.Generator().manual_seed(1), (r, 2)) for r in (0, 1)]
    assert halves[0].shape == (4, 2, 4, 4)  # each rank its slice of a global draw of 8
    centre = LatentBatches(latents, size=4, random_crop=False)(idx, torch.Generator().manual_seed(1), (0, 1))
    for i in range(4):  # the same views, the centre window: offset (6 - 4) // 2 = 1
        assert torch.equal(centre[i], latents[idx[i], views[i], :, 1:5, 1:5])


def tiny_autoencoder(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(AutoencoderModelConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4,
                                              latent_channels=2, image_size=16)).eval()


def tiny_latents(seed: int = 0) -> AutoencoderLatents:
    return AutoencoderLatents(tiny_autoencoder(seed))


def test_encode_views_encodes_each_flipped_and_turned_tile() -> None:
    ae = tiny_autoencoder()
    ae.set_latent_stats(torch.randn(10, 2, 4, 4) * 3 + 1)
    tiles = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    views = distinct_views(data(hflip=True, rot90=True))
    got = encode_views(AutoencoderLatents(ae), tiles, views, batch_size=2, progress=False)
    assert got.shape == (3, 8, 2, 8, 8)
    x = tiles.float() / 127.5 - 1
    with torch.no_grad():
        for v, view in enumerate(views):
            expected = ae.normalise(ae.encode(apply_view(x, view).contiguous())[0])
            assert torch.allclose(got[:, v], expected, atol=1e-5)


def test_the_latent_cache_is_reused_and_rebuilt_when_anything_changes(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = batches.encode_views
    monkeypatch.setattr(batches, "encode_views", lambda *a, **k: calls.append(1) or real(*a, **k))
    tiles = ImageDataset(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), None, "test")
    encoder, cfg = tiny_latents(), data(hflip=True)
    first = cached_latents(encoder, tiles, cfg, tmp_path, progress=False)
    again = cached_latents(encoder, tiles, cfg, tmp_path, progress=False)
    assert len(calls) == 1 and torch.allclose(first, again, atol=1e-2)  # float16 on disk
    cached_latents(tiny_latents(seed=1), tiles, cfg, tmp_path, progress=False)  # other weights
    cached_latents(tiny_latents(seed=1), tiles, data(hflip=True, rot90=True), tmp_path, progress=False)
    assert len(calls) == 3
    rundir.run_file(tmp_path, rundir.LATENT_CACHE).write_bytes(b"damaged")
    cached_latents(tiny_latents(seed=1), tiles, data(hflip=True, rot90=True), tmp_path, progress=False)
    assert len(calls) == 4


def test_bf16_encoding_is_close_and_keyed_in_the_cache(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = batches.encode_views
    monkeypatch.setattr(batches, "encode_views", lambda *a, **k: calls.append(k["bf16"]) or real(*a, **k))
    tiles = ImageDataset(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), None, "test")
    encoder, cfg = tiny_latents(), data(hflip=True)
    fp32 = cached_latents(encoder, tiles, cfg, tmp_path, progress=False)
    bf16 = cached_latents(encoder, tiles, cfg, tmp_path, progress=False, bf16=True)
    cached_latents(encoder, tiles, cfg, tmp_path, progress=False, bf16=True)
    assert calls == [False, True]  # a change of precision rebuilds; the same precision reads the cache
    assert not torch.equal(fp32, bf16) and (fp32 - bf16).abs().max() < 0.05 * fp32.abs().max()


def test_encoding_precision_follows_train_precision_and_auto_times_the_encoder(monkeypatch) -> None:
    encoder, dist = tiny_latents(), DistContext(device=torch.device("cpu"))
    timed = []
    real = batches.resolve_precision

    def record(precision, net, shape, *a, **k) -> bool:  # "auto" is timed (recorded here); fp32 / bf16 as said
        if precision != "auto":
            return real(precision, net, shape, *a, **k)
        timed.append((net, shape))
        return True

    monkeypatch.setattr(batches, "resolve_precision", record)
    assert encoding_bf16(encoder, (3, 32, 32), "fp32", dist) is False
    assert encoding_bf16(encoder, (3, 32, 32), "bf16", dist) is True and timed == []
    assert encoding_bf16(encoder, (3, 32, 32), "auto", dist) is True
    assert timed == [(encoder.autoencoder.encoder, (batches.ENCODE_BATCH, 3, 32, 32))]
