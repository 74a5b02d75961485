"""Data-parallel training under ``torchrun`` (NCCL on GPUs, gloo on the CPU).

``torchrun --nproc-per-node N -m bnnkit train RECIPE`` starts N processes; each takes the shard
``rank::world`` of every epoch's (identically seeded) permutation, padded like
``DistributedSampler`` so all ranks take the same number of steps. Gradients are averaged across
ranks after every backward pass; only rank 0 validates and writes the run directory. Multi-node
runs use torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); nothing here changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(order: Tensor, info: DistInfo) -> Tensor:
    """This rank's part of a permutation, padded (by wrapping) to an equal size on all ranks."""
    if not info.enabled:
        return order
    total = -(-order.numel() // info.world) * info.world
    padded = torch.cat([order, order[: total - order.numel()]]) if total > order.numel() else order
    return padded[info.rank :: info.world]


def average_gradients(params: list[Tensor], info: DistInfo) -> None:
    """Average gradients across ranks with one flattened all-reduce (DDP's arithmetic)."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_across(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Sum a dict of numbers over ranks (epoch loss/accuracy sums)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist(), strict=True))


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
