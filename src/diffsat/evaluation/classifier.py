"""A small CNN MNIST digit classifier for sample-quality metrics, and the digit metrics built on it.

The classifier takes ``(B, 1, 28, 28)`` images in ``[-1, 1]`` (other sizes are brought to 28 px first, see
:func:`to_classifier_input`), trains on the 60,000 MNIST training digits to >= 99 % test accuracy in a few
CPU minutes, and exposes 128-d penultimate features (for FID/KID/precision-recall on digits) and class
probabilities (for :func:`digit_metrics`). It also learns to be unsure of non-digits (outlier exposure, see
:mod:`diffsat.evaluation.outliers`), so that noise does not count as a recognisable digit. Weights live in a ``safetensors`` file whose metadata records
the architecture version, the test accuracy and the SHA-256 of the training-images file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from diffsat.data.mnist import find_idx_file, load_mnist_idx
from diffsat.data.transforms import to_unit_range
from diffsat.errors import DiffsatError
from diffsat.evaluation.outliers import outlier_batch
from diffsat.fileio import atomic_write, cache_dir, sha256_file
from diffsat.precision import autocast

ARCH_VERSION = "mnist-cnn-v2"
"""Architecture and training-recipe tag stored in (and checked against) the weights file metadata. v2: trained
with outlier exposure, so non-digits (noise, blobs) get low confidence."""

OUTLIER_FRACTION = 0.5
"""Non-digit images per training batch, as a fraction of the digits in it."""
OUTLIER_WEIGHT = 0.5
"""Weight of the non-digits' cross-entropy to the uniform distribution (Hendrycks et al. 2019 use 0.5)."""
BLUR_FRACTION = 0.25
"""Fraction of training digits softened by a random 3x3 blur (:func:`random_blur`)."""

FEATURE_DIM = 128
"""Size of the penultimate feature vector returned by :meth:`DigitClassifier.features`."""


class ClassifierError(DiffsatError):
    """The classifier weights are missing, unreadable, or of another architecture version."""


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (same padding) -> 2x2 max-pool -> BatchNorm -> ReLU: halves H and W (floor).

    Pooling before BN/ReLU runs those element-wise layers on 4x fewer values (much faster on CPU).
    """
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """Bring digit images to the classifier's ``(B, 1, 28, 28)`` float32 in ``[-1, 1]``.

    ``x``: ``(B, C, H, W)`` or ``(B, H, W)`` in ``[-1, 1]``, any square size. Channels are averaged to grey;
    32 px (MNIST padded by 2, as :mod:`diffsat.data.mnist` makes it) is centre-cropped by 2 px; any other
    size is resized to 28 with bilinear antialiased interpolation.
    """
    x = x.to(torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) or (B, H, W) images, got shape {tuple(x.shape)}")
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    h, w = x.shape[-2:]
    if (h, w) == (32, 32):
        return x[..., 2:30, 2:30]
    if (h, w) != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return x


class DigitClassifier(nn.Module):
    """Three conv blocks (32, 64, 128 channels; 28 -> 14 -> 7 -> 3 px), dropout, a 128-d feature layer, 10 logits.

    ``forward(x)``: ``(B, 1, 28, 28)`` in ``[-1, 1]`` -> logits ``(B, 10)`` (training use, no resizing).
    ``features`` / ``predict_proba``: any-size images, batched, under ``torch.inference_mode``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(1, 32), _block(32, 64), _block(64, 128), nn.Flatten())
        self.embed = nn.Sequential(nn.Dropout(0.25), nn.Linear(128 * 3 * 3, FEATURE_DIM), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(0.4), nn.Linear(FEATURE_DIM, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(self.body(x)))

    def _batched(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> torch.Tensor:
        """Apply ``fn`` to ``to_classifier_input(x)`` in eval mode, ``batch_size`` images at a time, on CPU out."""
        was_training, device = self.training, next(self.parameters()).device
        self.eval()
        try:
            with torch.inference_mode():
                out = [fn(to_classifier_input(b.to(device))).float().cpu() for b in x.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    def features(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate (post-ReLU) features: images ``(B, C, H, W)`` in ``[-1, 1]`` -> float32 ``(B, 128)``, >= 0."""
        return self._batched(x, lambda b: self.embed(self.body(b)), batch_size).reshape(-1, FEATURE_DIM)

    def predict_proba(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities: images ``(B, C, H, W)`` in ``[-1, 1]`` -> float32 ``(B, 10)``, rows sum to 1."""
        return self._batched(x, lambda b: self(b).softmax(dim=1), batch_size).reshape(-1, 10)


# ----------------------------------------------------------------------------------------------- training


def _train_images_file(root: Path) -> Path:
    """The training-images idx file under ``root`` (gzipped or raw), whose SHA-256 goes into the metadata."""
    found = find_idx_file(root, "train", "images")
    if found is not None:
        return found
    raise ClassifierError(f"{root}: no train-images-idx3-ubyte[.gz] found; point mnist_root at the MNIST idx files")


def _load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as (float32 ``(N, 1, 28, 28)`` in ``[-1, 1]``, int64 ``(N,)``)."""
    images, labels = load_mnist_idx(root, split)  # type: ignore[arg-type]
    return to_unit_range(images[:, None]), torch.from_numpy(labels)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` ``(B, C, H, W)`` by independent integer offsets in ``[-max_shift, max_shift]``
    (both axes), filling with the background value -1. Returns a new tensor of the same shape.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1, 1), generator=generator)
    rows = (dy + torch.arange(h).view(1, h, 1)).expand(b, h, w)
    cols = (dx + torch.arange(w).view(1, 1, w)).expand(b, h, w)
    flat = (rows * (w + 2 * max_shift) + cols).view(b, 1, h * w).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, flat).view_as(x)


def random_blur(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Blur a random ``fraction`` of the images of ``x`` ``(B, C, H, W)``: ``(1 - w) x + w box3x3(x)`` with ``w``
    uniform in ``[0, 1]`` per image (the rest get ``w = 0``), so that soft-edged digits, which people still
    read, keep their confidence while smooth non-digit blobs (outlier exposure) lose theirs."""
    b = x.shape[0]
    w = torch.rand(b, 1, 1, 1, generator=generator) * (torch.rand(b, 1, 1, 1, generator=generator) < fraction)
    return (1 - w) * x + w * F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def outlier_exposure_loss(model: nn.Module, digits: torch.Tensor, labels: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy of ``digits`` ``(B, 1, H, W)`` against ``labels`` ``(B,)`` plus ``OUTLIER_WEIGHT`` times the
    cross-entropy of ``OUTLIER_FRACTION * B`` non-digits (:func:`~diffsat.evaluation.outliers.outlier_batch`)
    against the uniform distribution; one forward pass over both."""
    junk = outlier_batch(digits, max(1, int(OUTLIER_FRACTION * len(digits))), generator)
    logits = model(torch.cat([digits, junk]).contiguous(memory_format=torch.channels_last))
    to_uniform = -logits[len(digits):].float().log_softmax(dim=1).mean()
    return F.cross_entropy(logits[: len(digits)].float(), labels) + OUTLIER_WEIGHT * to_uniform


def _train_epoch(model, data, opt, sched, generator, batch_size: int, bar, use_bf16: bool) -> float:
    """One pass over ``data = (x, y)`` in random order with random +-2 px shifts, random blur and outlier
    exposure; returns the mean training loss."""
    x, y = data
    model.train()
    order, total, steps = torch.randperm(len(x), generator=generator), 0.0, 0
    for idx in order.split(batch_size):
        xb = random_blur(random_shift(x[idx], 2, generator), BLUR_FRACTION, generator)
        with autocast("cpu", use_bf16):
            loss = outlier_exposure_loss(model, xb, y[idx], generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total, steps = total + loss.item(), steps + 1
        bar.update(1)
        bar.set_postfix(loss=f"{total / steps:.4f}", refresh=False)
    return total / max(1, steps)


def evaluate_accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` (images in ``[-1, 1]``) whose argmax class equals ``y`` ``(N,)``."""
    return float((model.predict_proba(x).argmax(dim=1) == y).float().mean())


def _fit(model: DigitClassifier, train, epochs: int, batch_size: int, lr: float, seed: int, use_bf16: bool,
         progress: bool) -> None:
    """Adam + OneCycle (peak ``lr``, 20 % warm-up) over ``epochs`` passes of ``train = (x, y)``, tqdm bar.
    Batch order and shifts come from a generator seeded with ``seed``; dropout from torch's global RNG."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train[0]) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    with tqdm(total=steps, desc="digit classifier", unit="step", disable=None if progress else True) as bar:
        for _ in range(epochs):
            _train_epoch(model, train, opt, sched, generator, batch_size, bar, use_bf16)


def train_classifier(
    mnist_root: str | Path,
    out_path: str | Path | None = None,
    epochs: int = 3,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 3e-3,
    use_bf16: bool = False,
    threads: int | None = 1,
    progress: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> tuple[DigitClassifier, float]:
    """Train :class:`DigitClassifier` on the MNIST train split in ``mnist_root`` (idx files) and test it.

    Adam + OneCycle, random +-2 px shifts and blur, outlier exposure (:func:`outlier_exposure_loss`), channels-last;
    all randomness from ``seed``. ``use_bf16``: CPU bfloat16 autocast for training (default off: slower than
    float32 on CPUs without AMX, see ``benchmarks/RESULTS.md``); evaluation is always float32. ``threads``:
    torch intra-op threads while training, restored afterwards (None: keep the current setting); the default
    1 keeps these small convolutions from slowing down when the cores are shared with another job.
    ``train_limit`` / ``test_limit``: train on the first ``train_limit`` training digits only / test on the
    first ``test_limit`` test digits only (None: all 60,000 / 10,000), for quick checks of the training loop;
    such weights are far from the >= 99 % of the full recipe.
    Saves the weights to ``out_path`` (default :func:`default_classifier_path`) as safetensors with metadata
    ``arch_version``, ``test_accuracy``, ``train_images_sha256``, ``train_images`` and ``test_images`` (digits
    trained and tested on), ``epochs``, ``seed``, ``train_seconds``, ``bf16``.
    Returns ``(model in eval mode, accuracy in [0, 1] on the test digits, all 10,000 by default)``.
    """
    for name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be >= 1 (or None for all digits of the split), got {limit}")
    root = Path(mnist_root).expanduser()
    images_sha = sha256_file(_train_images_file(root))
    train, (xt, yt) = _load_split(root, "train"), _load_split(root, "test")
    train, xt, yt = (train[0][:train_limit], train[1][:train_limit]), xt[:test_limit], yt[:test_limit]
    start, saved_threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    try:
        with torch.random.fork_rng(devices=[]):  # seed init/dropout without touching the caller's RNG state
            torch.manual_seed(seed)
            model = DigitClassifier().to(memory_format=torch.channels_last)
            _fit(model, train, epochs, batch_size, lr, seed, use_bf16, progress)
    finally:
        torch.set_num_threads(saved_threads)
    seconds = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format).eval()
    accuracy = evaluate_accuracy(model, xt, yt)
    meta = {"train_images": len(train[0]), "test_images": len(xt), "epochs": epochs, "seed": seed,
            "train_seconds": f"{seconds:.1f}", "bf16": use_bf16}
    save_classifier(model, out_path or default_classifier_path(), accuracy, images_sha, meta)
    return model, accuracy


# -------------------------------------------------------------------------------------------- persistence


def default_classifier_path() -> Path:
    """``$DIFFSAT_CACHE/classifier/mnist_cnn.safetensors`` (``DIFFSAT_CACHE`` defaults to ``~/.cache/diffsat``)."""
    return cache_dir() / "classifier" / "mnist_cnn.safetensors"


def save_classifier(
    model: DigitClassifier, path: str | Path, accuracy: float, train_images_sha256: str, extra: dict | None = None
) -> Path:
    """Write ``model``'s state dict to ``path`` (parents created) as safetensors with the metadata described in
    :func:`train_classifier`; written to a temporary file first and moved into place. Returns the path.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch_version": ARCH_VERSION, "test_accuracy": f"{accuracy:.6f}"}
    meta["train_images_sha256"] = train_images_sha256
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def classifier_metadata(path: str | Path) -> dict[str, str]:
    """The metadata dict stored in a classifier weights file (:class:`ClassifierError` if unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ClassifierError(f"{path}: unreadable classifier weights ({err}); delete it and retrain") from None


def load_classifier(path: str | Path | None = None, mnist_root: str | Path | None = None) -> DigitClassifier:
    """Load the trained classifier (eval mode, CPU) from ``path`` (default :func:`default_classifier_path`).

    A missing file is a :class:`ClassifierError` telling how to train one (``diffsat evaluate
    --train-classifier``; needs MNIST). When ``mnist_root`` is given, the stored training-images SHA-256 is
    checked against that folder's file and a mismatch is an error (weights trained on other data).
    """
    path = Path(path).expanduser() if path is not None else default_classifier_path()
    if not path.is_file():
        raise ClassifierError(
            f"no trained digit classifier at {path}: run `diffsat evaluate --train-classifier` once "
            "(trains on the 60,000 MNIST training digits in a few CPU minutes; needs the MNIST idx files)"
        )
    meta = classifier_metadata(path)
    if meta.get("arch_version") != ARCH_VERSION:
        raise ClassifierError(
            f"{path}: classifier architecture {meta.get('arch_version')!r} != {ARCH_VERSION!r}; retrain it with "
            "`diffsat evaluate --train-classifier`"
        )
    if mnist_root is not None:
        images_file = _train_images_file(Path(mnist_root).expanduser())
        if meta.get("train_images_sha256") != sha256_file(images_file):
            raise ClassifierError(
                f"{path}: trained on other MNIST training images than {images_file} (SHA-256 of the file differs; "
                "a gzipped and a raw copy of the same file also differ)"
            )
    model = DigitClassifier()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as err:
        raise ClassifierError(f"{path}: weights do not fit {ARCH_VERSION} ({err}); retrain the classifier") from None
    return model.eval()


# ------------------------------------------------------------------------------------------------ metrics


def digit_metrics(probs: torch.Tensor | np.ndarray, threshold: float = 0.9) -> dict:
    """Summary of classifier probabilities ``probs`` ``(N, 10)`` (rows sum to 1) of generated digits.

    Returns a dict:
      - ``recognisable``: fraction of samples whose max probability is ``>= threshold``, in ``[0, 1]``;
      - ``histogram``: list of 10 counts, the argmax class of EVERY sample (sums to N);
      - ``recognisable_histogram``: the same over the recognisable samples only;
      - ``classes_present``: number of classes with at least one argmax sample, 0..10;
      - ``class_ratio``: max count / min count of ``histogram`` (``inf`` when a class is missing; 1 = uniform);
      - ``class_entropy``: entropy of ``histogram`` / log(10), in ``[0, 1]`` (1 = uniform over the 10 digits);
      - ``mean_confidence``: mean max probability; ``n``: N; ``threshold``.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[1] != 10:
        raise ValueError(f"probs must have shape (N, 10), got {tuple(p.shape)}")
    conf, cls = p.max(dim=1)
    hist = torch.bincount(cls, minlength=10)
    rec = conf >= threshold
    freq = hist.double() / max(1, len(p))
    entropy = float(-(freq[freq > 0] * freq[freq > 0].log()).sum() / math.log(10))
    return {
        "n": len(p),
        "threshold": threshold,
        "recognisable": float(rec.double().mean()) if len(p) else 0.0,
        "histogram": hist.tolist(),
        "recognisable_histogram": torch.bincount(cls[rec], minlength=10).tolist(),
        "classes_present": int((hist > 0).sum()),
        "class_ratio": float(hist.max() / hist.min()) if int(hist.min()) > 0 else math.inf,
        "class_entropy": entropy,
        "mean_confidence": float(conf.mean()) if len(p) else 0.0,
    }
