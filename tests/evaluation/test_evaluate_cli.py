"""``diffsat evaluate`` end to end: PNG folders made here, real MNIST when ../shared/data is present."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffsat.cli import main
from diffsat.evaluation import DigitClassifier, default_classifier_path
from diffsat.evaluation.classifier import save_classifier
from diffsat.evaluation.inception import FIDInceptionV3


def _write(folder: Path, pixels: np.ndarray, prefix: str = "sample") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(folder / f"{prefix}_{i:05d}.png")
    return folder


def _digits_like(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 28, 28): a bright random bar on black, a crude stand-in for digits."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for img in out:
        r, c = rng.integers(4, 20, size=2)
        img[r : r + 8, c : c + 3] = rng.integers(150, 256)
    return out


@pytest.fixture()
def untrained_classifier(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_classifier(DigitClassifier().eval(), tmp_path / "clf.safetensors", 0.5, "00" * 32)


def _one_line_error(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffsat: error:") and match in err and "\n" not in err and "Traceback" not in err


def test_digit_folders_end_to_end_with_json_and_pairs_figure(tmp_path: Path, untrained_classifier: Path,
                                                              capsys) -> None:
    samples = _write(tmp_path / "samples", _digits_like(24, 0))
    Image.fromarray(np.zeros((90, 90), dtype=np.uint8)).save(samples / "grid.png")
    reference = _write(tmp_path / "real", _digits_like(60, 1), "real")
    train = _write(tmp_path / "train", _digits_like(30, 2), "train")
    out = tmp_path / "eval" / "metrics.json"
    argv = [str(samples), "--reference", str(reference), "--train-set", str(train), "--out", str(out),
            "--classifier", str(untrained_classifier), "--no-progress"]
    assert main(["evaluate", *argv]) == 0
    printed = capsys.readouterr().out
    for text in ("recognisable (confidence >= 0.9)", "FID (classifier features)", "memorisation ratio",
                 "real baseline", "36 for evaluation, 24 as the real baseline", "KID: mean ± standard deviation"):
        assert text in printed
    report = json.loads(out.read_text())
    assert report["kind"] == "digits" and report["sets"]["samples"]["n"] == 24
    assert report["extractors"]["classifier"]["test_accuracy"] == 0.5
    for key in ("recognisable", "class_entropy", "fid_classifier", "kid_classifier", "memorisation_ratio",
                "near_copy_fraction"):
        assert {"value", "baseline", "label", "better"} <= set(report["metrics"][key])
    assert (tmp_path / "eval" / "metrics_closest_pairs.png").is_file()


def test_rgb_folders_get_swd(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    samples = _write(tmp_path / "s", rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    reference = _write(tmp_path / "r", rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), "real")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(samples), "--reference", str(reference), "--out", str(out)]) == 0
    assert "SWD x1e3 at 16 px" in capsys.readouterr().out
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"swd_16", "swd"} and metrics["swd"]["value"] > 0


@pytest.mark.parametrize("case", ["missing", "empty", "mixed", "no classifier", "no reference"])
def test_errors_are_one_line(tmp_path: Path, capsys, monkeypatch, case: str) -> None:
    monkeypatch.setenv("DIFFSAT_CACHE", str(tmp_path / "cache"))
    reference = _write(tmp_path / "real", _digits_like(40, 1), "real")
    samples = _write(tmp_path / "s", _digits_like(12, 0))
    argv = ["evaluate", str(samples), "--reference", str(reference)]
    if case == "missing":
        argv[1], match = str(tmp_path / "nowhere"), "does not exist"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        argv[1], match = str(tmp_path / "empty"), "no image files"
    elif case == "mixed":
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(samples / "sample_99999.png")
        match = "different sizes (28x28 sample_00000.png, 32x32 sample_99999.png)"
    elif case == "no classifier":
        match = f"no trained digit classifier at {default_classifier_path()}: run `diffsat evaluate --train-classifier`"
    else:
        argv, match = ["evaluate", str(samples)], "give SAMPLES and --reference"
    _one_line_error(capsys, argv, match)


def test_train_classifier_refuses_the_bundled_subset(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DIFFSAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFSAT_OFFLINE", "1")
    monkeypatch.delenv("DIFFSAT_DATA", raising=False)
    _one_line_error(capsys, ["evaluate", "--train-classifier"], "full MNIST idx files")
    _one_line_error(capsys, ["evaluate", "--train-classifier", "--mnist", str(tmp_path / "none")], "does not exist")


@pytest.fixture(scope="module")
def real_classifier() -> Path:
    path = default_classifier_path()
    if not path.is_file():
        pytest.skip(f"no trained digit classifier at {path} (run `diffsat evaluate --train-classifier`)")
    return path


def test_real_mnist_baselines_and_a_copying_model(shared_data: Path, real_classifier: Path, tmp_path: Path,
                                                  capsys) -> None:
    """500 training digits posing as samples against the test digits: the copy check fires, while the real
    baseline (held-out test digits) reads as real data should."""
    mnist = shared_data / "mnist"
    out = tmp_path / "baseline.json"
    argv = ["evaluate", str(mnist), "--samples-limit", "500", "--reference", str(mnist), "--reference-limit",
            "2500", "--train-set", str(mnist), "--train-limit", "500", "--out", str(out), "--no-progress",
            "--kid-subsets", "20"]
    assert main(argv) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["recognisable"]["baseline"] > 0.95 and m["recognisable"]["value"] > 0.95
    assert m["classes_present"]["baseline"] == 10 and m["class_entropy"]["baseline"] > 0.99
    assert m["fid_classifier"]["baseline"] < 25 and m["fid_classifier"]["value"] < 2 * m["fid_classifier"]["baseline"]
    assert json.loads(out.read_text())["settings"]["kid_subsets"] == 20
    assert abs(m["kid_classifier"]["baseline"]) < 3 * m["kid_classifier"]["baseline_error"]
    assert 0.9 < m["memorisation_ratio"]["baseline"] < 1.1 and m["near_copy_fraction"]["baseline"] < 0.05
    assert m["memorisation_ratio"]["value"] < 0.01 and m["near_copy_fraction"]["value"] == 1.0


def _pytorch_fid_features(model: FIDInceptionV3, folder: Path) -> torch.Tensor:
    """Pool3 features the way pytorch-fid computes them: PIL ``convert("RGB")``, ToTensor (``u / 255``), then its
    network's bilinear resize to 299 px (``align_corners=False``) and ``2 x - 1``."""
    files = sorted(folder.glob("*.png"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                     for f in files])
    with torch.no_grad():
        return model(2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1)


def _fid_of_few(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """FID of ``(N1, D)`` and ``(N2, D)`` features with N1, N2 << D, in closed form without a D x D square root:
    the nonzero eigenvalues of S1 S2 = A'A B'B / k (A, B centred, k = (N1 - 1)(N2 - 1)) are those of
    (A B')(A B')' / k, so Tr (S1 S2)^(1/2) is the sum of the singular values of A B' over sqrt(k). (scipy's
    sqrtm of the 2048 x 2048 product, as pytorch-fid takes it, costs tens of CPU seconds each time.)"""
    a, b = f1.double(), f2.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    k = (len(a) - 1) * (len(b) - 1)
    cross = torch.linalg.svdvals(a @ b.T).sum() / k**0.5
    return float((mu_a - mu_b).square().sum() + a.square().sum() / (len(a) - 1) + b.square().sum() / (len(b) - 1)
                 - 2 * cross)


def test_inception_rows_and_pytorch_fids_number(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    samples = _write(tmp_path / "samples", rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    real = _write(tmp_path / "real", (rng.random((24, 32, 32, 3)) ** 2 * 255).astype(np.uint8), "real")
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    for module in model.modules():  # He init keeps activations at scale through the 94 convolutions (torch's
        if isinstance(module, torch.nn.Conv2d):  # default shrinks them to constant, denormal features)
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "metrics.json"
    argv = [str(samples), "--reference", str(real), "--inception", str(weights), "--out", str(out), "--no-progress"]
    assert main(["evaluate", *argv]) == 0
    printed = capsys.readouterr().out
    assert "FID (Inception pool3)" in printed and "all of REAL: pytorch-fid's number" in printed
    metrics = json.loads(out.read_text())["metrics"]
    expected = _fid_of_few(_pytorch_fid_features(model, samples), _pytorch_fid_features(model, real))
    assert expected > 0
    assert metrics["fid_inception_all"]["value"] == pytest.approx(expected, rel=1e-4)
    assert metrics["fid_inception_all"]["baseline"] is None  # nothing held back, so no real baseline
    assert {"fid_inception", "kid_inception", "precision_inception", "recall_inception"} <= set(metrics)

