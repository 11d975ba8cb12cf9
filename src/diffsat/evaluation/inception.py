"""The FID Inception-v3 network (TensorFlow's 2015-12-05 graph as ported by pytorch-fid), without torchvision.

Architecture: torchvision's ``Inception3`` with 1008 classes, no auxiliary classifier, and pytorch-fid's three
patches that reproduce the TensorFlow graph: the average-pool branches of the A, C and first E blocks do not
count the zero padding (``count_include_pad=False``), and the last E block (``Mixed_7c``) max-pools its pool
branch. Convolutions have no bias and are followed by BatchNorm (eps 1e-3) and ReLU. Module names equal
torchvision's, so the state dict of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` loads as is.

Features: the 2048-d global average pool after ``Mixed_7c`` ("pool3"). Input images in ``[-1, 1]`` are taken
to ``[0, 1]``, resized to 299x299 (bilinear, ``align_corners=False``, no antialiasing) and mapped back to
``[-1, 1]``, in pytorch-fid's order; grey images are repeated to three channels (as PIL's ``convert("RGB")``).
The weights are never downloaded here: the user passes the file (``diffsat evaluate --inception PATH``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffsat.errors import DiffsatError
from diffsat.progress import progress_bar
from diffsat.rundir import safe_torch_load

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
"""File name of the pytorch-fid weights (released at github.com/mseitzer/pytorch-fid, ``fid_weights``)."""

FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008


class InceptionError(DiffsatError):
    """The Inception weights file is missing, unreadable, or does not fit the FID Inception network."""


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; state-dict keys ``conv.weight``, ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool whose border averages ignore the padding (TensorFlow's SAME pooling)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1; out 224 + ``pool_features`` channels."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_same(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: stride-2 3x3 | 1x1-3x3-3x3(s2) | max pool; out 480 + ``c_in`` channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``c7`` inner channels); out 768 channels."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_same(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1-3x3(s2) | 1x1-1x7-7x1-3x3(s2) | max pool; out 512 + ``c_in`` channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs; out 2048 channels. ``pool``: the pool branch's pooling
    (:func:`_avg_pool_same` for ``Mixed_7b``; a 3x3 stride-1 max pool for ``Mixed_7c``, as in the TF graph)."""

    def __init__(self, c_in: int, pool: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(self.pool(x))], 1)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionV3(nn.Module):
    """The FID Inception network. ``features(x)``: images ``(N, C, H, W)`` in ``[-1, 1]`` (C = 1 or 3, any
    size) -> float32 ``(N, 2048)`` pool3 features; ``forward`` takes prepared ``(N, 3, 299, 299)`` input and
    returns the same features. ``fc`` (1008 logits) is kept so that the weights file loads completely."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool=_avg_pool_same)
        self.Mixed_7c = InceptionE(2048, pool=_max_pool_same)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    @torch.inference_mode()
    def features(self, x: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """Pool3 features ``(N, 2048)`` float32 (CPU) of images ``(N, C, H, W)`` in ``[-1, 1]``, in eval mode."""

        self.eval()
        device = next(self.parameters()).device
        out = []
        with progress_bar(len(x), "Inception features", unit="img", enabled=progress) as bar:
            for batch in x.split(batch_size):
                out.append(self(prepare_input(batch.to(device))).float().cpu())
                bar.update(len(batch))
        return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    """Images ``(N, 1 or 3, H, W)`` in ``[-1, 1]`` -> ``(N, 3, 299, 299)`` float32 in ``[-1, 1]`` as pytorch-fid
    feeds its network: to ``[0, 1]``, bilinear resize (``align_corners=False``), ``2 x - 1``."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
    x = (x.to(torch.float32) + 1.0) / 2.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict in ``path``, read with ``torch.load(weights_only=True)`` (never unpickling code;
    :func:`diffsat.rundir.safe_torch_load`); a missing file or other content is a one-line error."""
    if not path.is_file():
        raise InceptionError(
            f"{path}: Inception weights file not found; pass --inception the path of {WEIGHTS_NAME} "
            "(the file pytorch-fid uses; diffsat never downloads it)"
        )
    obj = safe_torch_load(path)
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InceptionError(f"{path}: expected a state dict of tensors (the pytorch-fid {WEIGHTS_NAME})")
    return dict(obj)


def load_inception(path: str | Path) -> FIDInceptionV3:
    """The FID Inception network with the weights in ``path`` (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``),
    in eval mode on CPU. Files with or without BatchNorm ``num_batches_tracked`` entries both load; any other
    missing, extra or mis-shaped key is an :class:`InceptionError` naming the first few."""
    path = Path(path).expanduser()
    state = {k: v for k, v in _read_state_dict(path).items() if not k.endswith("num_batches_tracked")}
    model = FIDInceptionV3()
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        parts = [f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
        raise InceptionError(f"{path}: not the FID Inception weights ({'; '.join(parts)}); use {WEIGHTS_NAME}")
    model.load_state_dict(state, strict=False)
    return model.eval().requires_grad_(False)
