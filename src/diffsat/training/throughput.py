"""Counting the work of a training step, so runs can report achieved GFLOP/s against the machine's peak."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one that scaled_dot_product_attention
# runs here; without these, attention (0.3-3 % of the U-Net's work) would go uncounted.
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def train_step_flops(step: Callable[[], torch.Tensor]) -> int:
    """Floating-point operations of one call of ``step`` (forward and backward, counted by PyTorch's
    ``FlopCounterMode``: matmuls, convolutions and attention; element-wise work is not counted).

    ``step()`` must run the forward pass and return the loss; this function calls ``backward`` on it and
    leaves the gradients behind (the caller zeroes them).
    """
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    with counter:
        step().backward()
    return int(counter.get_total_flops())


def matmul_peak_gflops(dtype: torch.dtype = torch.bfloat16, size: int = 2048, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of large square matmuls in ``dtype`` on the CPU: the practical peak a train step is
    compared with (``2 * size**3`` FLOP per product, best of repeated timings over ``seconds``)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: library initialisation and packing
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
