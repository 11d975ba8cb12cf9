"""Loading the sets ``diffsat evaluate`` compares: sample folders, real folders, MNIST idx folders, run directories."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsat.config import Config, save_config
from diffsat.evaluation.image_sets import EvaluationError, load_real, load_samples


def write_pngs(folder: Path, pixels: np.ndarray, prefix: str = "sample") -> Path:
    """uint8 ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` arrays as ``prefix_00000.png`` ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(folder / f"{prefix}_{i:05d}.png")
    return folder


def _random_pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_grey_sample_folder_round_trips_and_skips_the_grid(tmp_path: Path) -> None:
    pixels = _random_pixels((12, 28, 28))
    folder = write_pngs(tmp_path / "s", pixels)
    Image.fromarray(_random_pixels((100, 100), 1)).save(folder / "grid.png")  # what `diffsat sample` adds
    s = load_samples(folder)
    assert (len(s), s.channels, s.size) == (12, 1, 28)
    torch.testing.assert_close(s.images[:, 0], torch.from_numpy(pixels).float() / 127.5 - 1)
    assert "12 files" in s.source and "grey 28 px" in s.source
    assert len(load_samples(folder, limit=5)) == 5


def test_rgb_samples_and_real_folder_resized_to_the_samples_size(tmp_path: Path) -> None:
    samples = load_samples(write_pngs(tmp_path / "s", _random_pixels((10, 16, 16, 3))))
    assert (samples.channels, samples.size) == (3, 16)
    real_dir = write_pngs(tmp_path / "real" / "classA", _random_pixels((6, 48, 48, 3), 2), "r")
    write_pngs(tmp_path / "real" / "classB", _random_pixels((4, 64, 48, 3), 3), "r")  # not square: centre crop
    real = load_real(real_dir.parent, 3, 16, limit=None)
    assert real.images.shape == (10, 3, 16, 16) and real.labels.tolist() == [0] * 6 + [1] * 4
    flat = write_pngs(tmp_path / "flat", np.full((3, 16, 16, 3), 255, dtype=np.uint8))
    assert torch.equal(load_real(flat, 3, 16).images, torch.ones(3, 3, 16, 16))


@pytest.mark.parametrize("case", ["missing", "file", "empty", "mixed", "corrupt", "run"])
def test_bad_sample_folders_are_one_line_errors(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "s"
    message = {"missing": "does not exist", "file": "is a file", "empty": "no image files", "mixed": "different sizes",
               "corrupt": "unreadable image", "run": "diffsat sample"}[case]
    if case == "file":
        folder.write_text("x")
    elif case == "empty":
        (folder / "sub").mkdir(parents=True)
        (folder / "notes.txt").write_text("no images here")
    elif case == "mixed":
        write_pngs(folder, _random_pixels((3, 28, 28)))
        Image.fromarray(_random_pixels((32, 32))).save(folder / "sample_99999.png")
    elif case == "corrupt":
        write_pngs(folder, _random_pixels((3, 28, 28)))
        (folder / "sample_00001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif case == "run":
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "ema.safetensors").write_bytes(b"")
    with pytest.raises(EvaluationError, match=message) as info:
        load_samples(folder)
    assert "\n" not in str(info.value)


def test_real_sets_reject_missing_and_empty_folders_and_rgb_against_mnist(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(EvaluationError, match="--reference '.*' does not exist"):
        load_real(tmp_path / "nope", 1, 28, role="--reference")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no image files .* and no MNIST idx files"):
        load_real(tmp_path / "empty", 1, 28)
    with pytest.raises(EvaluationError, match="samples are RGB"):
        load_real(shared_data / "mnist", 3, 28)


def test_mnist_idx_folders_give_the_split_at_the_samples_size(shared_data: Path) -> None:
    from diffsat.data.mnist import load_mnist_idx

    root = shared_data / "mnist"
    images, labels = load_mnist_idx(root, "test")
    s = load_samples(root, limit=50, split="test")
    assert s.images.shape == (50, 1, 28, 28) and s.labels.tolist() == labels[:50].tolist()
    torch.testing.assert_close(s.images[:, 0], torch.from_numpy(images[:50].copy()).float() / 127.5 - 1)
    padded = load_real(root, 1, 32, split="test", limit=20)
    assert padded.images.shape == (20, 1, 32, 32)
    torch.testing.assert_close(padded.images[:, :, 2:30, 2:30], s.images[:20])
    assert (padded.images[:, :, :2] == -1).all()
    assert "train, first 7 of 60000" in load_real(root, 1, 28, split="train", limit=7).source


def _run_dir(tmp_path: Path, **data) -> Path:
    """A run directory (config.json + an empty weights file) training on 10 RGB 20 px images in tmp_path/data."""
    folder = write_pngs(tmp_path / "data", _random_pixels((10, 20, 20, 3), 4), "d")
    cfg = {"model": {"in_channels": 3, "out_channels": 3, "image_size": 20},
           "data": {"kind": "folder", "path": str(folder), "channels": 3, "image_size": 20, **data}}
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    save_config(Config.model_validate(cfg), run / "config.json")
    (run / "model.safetensors").write_bytes(b"")
    return run


def test_a_run_directory_gives_its_training_images_or_its_held_out_images(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, limit=5)
    train = load_real(run, 3, 20, role="--train-set", training=True)
    assert train.images.shape == (5, 3, 20, 20) and "training images of run" in train.source
    assert len(load_real(run, 3, 20, limit=3, training=True)) == 3
    with pytest.raises(EvaluationError, match="holds no images out"):
        load_real(run, 3, 20, role="--reference")
    with pytest.raises(EvaluationError, match="trained on 3-channel 20 px images but the samples are 1-channel 20"):
        load_real(run, 1, 20, role="--train-set", training=True)
    run = _run_dir(tmp_path, holdout=5)  # files 5 and 10 held out
    held = load_real(run, 3, 20, role="--reference")
    assert held.images.shape == (2, 3, 20, 20) and "held-out images of run" in held.source
    train = load_real(run, 3, 20, training=True)
    assert len(train) == 8 and not any(torch.equal(h, t) for h in held.images for t in train.images)
    assert json.loads((run / "config.json").read_text())["data"]["holdout"] == 5


def test_labels_txt_of_conditional_samples_gives_each_file_its_class(tmp_path: Path) -> None:
    folder = write_pngs(tmp_path / "s", _random_pixels((3, 28, 28)))
    assert load_samples(folder).labels is None
    (folder / "labels.txt").write_text("sample_00000.png 7\nsample_00001.png 1\nsample_00002.png 7\n")
    assert load_samples(folder).labels.tolist() == [7, 1, 7]
    (folder / "labels.txt").write_text("sample_00000.png 7\nsample_00001.png 1\n")
    with pytest.raises(EvaluationError, match="names no class for sample_00002.png"):
        load_samples(folder)
    (folder / "labels.txt").write_text("sample_00000.png seven\n")
    with pytest.raises(EvaluationError, match="line 1: expected 'FILE LABEL'"):
        load_samples(folder)
