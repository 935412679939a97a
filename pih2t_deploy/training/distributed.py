"""torchrun / DistributedDataParallel support; a single process is the world of size 1."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); size 1 without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(world: World) -> None:
    """Wait for every rank (no-op alone)."""
    if world.distributed:
        dist.barrier()


def average_buffers(module: nn.Module, world: World) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, so all ranks agree."""
    if not world.distributed:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world.size)


def state_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (names and bytes): equal on ranks that agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_strings(value: str, world: World) -> list[str]:
    """Every rank's ``value``, in rank order."""
    if not world.distributed:
        return [value]
    out: list[str] = [""] * world.size
    dist.all_gather_object(out, value)
    return out


def shutdown(world: World) -> None:
    """Leave the process group."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
