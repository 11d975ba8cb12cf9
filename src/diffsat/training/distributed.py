"""Multi-process data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m diffsat train CONFIG --out RUN`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the environment. Each rank trains on its own
slice of every global batch (global batch = ``train.batch_size`` x world size), gradients are averaged by
DDP, so every rank holds the same weights; rank 0 alone logs, samples and writes checkpoints. The backend is
gloo for CPU and NCCL for CUDA (each rank on GPU ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..runtime import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch whose first dimension divides by ``world_size``."""
        per_rank = batch.shape[0] // self.world_size
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (a collective: all ranks must call it)."""
        if not self.distributed:
            return flag
        value = torch.tensor([0.0 if flag else 1.0], device=self.device)
        dist.all_reduce(value)
        return float(value) == 0.0

    def broadcast_from_main(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (a collective: all ranks must call it)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> DistContext:
    """Join the process group when launched by torchrun (else a single-process context on ``device_name``)."""
    device = resolve_device(device_name)
    if not launched_by_torchrun():
        return DistContext(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
