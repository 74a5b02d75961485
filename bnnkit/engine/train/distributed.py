"""Data-parallel training under ``torchrun`` (NCCL on GPUs, gloo on the CPU).

``torchrun --nproc-per-node N -m bnnkit train RECIPE`` starts N processes; each takes the shard
``rank::world`` of every epoch's (identically seeded) permutation, padded like
``DistributedSampler`` so all ranks take the same number of steps. Gradients are averaged across
ranks after every backward pass; only rank 0 validates and writes the run directory. Multi-node
runs use torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); nothing here changes.

How the gradients are averaged depends on the phase:

- the phases that train the backbone (``finetune``, ``finetune-map``) run their step through
  :class:`torch.nn.parallel.DistributedDataParallel` (:func:`data_parallel_loss`): bucketed
  all-reduces that overlap the backward pass;
- the head-only phase (``head``, on pooled features) keeps one explicit flattened all-reduce
  after the backward pass (:func:`average_gradients`). The head is a few thousand parameters
  (one bucket; there is no backward to overlap with), methods there optimise parameters of
  their own that a step may leave without a gradient (e.g. the ensemble's members beside the
  detector's unused head, which DDP would need ``find_unused_parameters`` for), and SG-MCMC's
  one chain across ranks rests on exactly this: the global-batch mean gradient, then the
  sampler's step with noise drawn identically on every rank.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bnnkit.methods.base import InferenceMethod, LossParts


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


class _StepLoss(nn.Module):
    """The training step's forward as one module (images -> the learner's loss), so that
    DistributedDataParallel sees it: the detector plus any optimised parameter outside it."""

    def __init__(
        self,
        detector: nn.Module,
        learner: InferenceMethod,
        features: Callable[[Tensor], Tensor],
        extra: list[nn.Parameter],
    ) -> None:
        super().__init__()
        self.detector = detector
        self.extra = nn.ParameterList(extra)
        self._learner = learner
        self._features = features

    def forward(self, images: Tensor, targets: Tensor, indices: Tensor) -> LossParts:
        return self._learner.training_loss(self._features(images), targets, indices)


def data_parallel_loss(
    detector: nn.Module,
    learner: InferenceMethod,
    features: Callable[[Tensor], Tensor],
    params: list[Tensor],
    device: torch.device,
) -> nn.Module:
    """``module(images, targets, indices) -> LossParts`` wrapped in DistributedDataParallel,
    whose backward averages the gradients of ``params`` (the optimiser's) over the ranks.

    Every parameter that requires a gradient must get one at every step (DDP's rule without
    ``find_unused_parameters``). Buffers are not broadcast: each rank keeps its own BatchNorm
    statistics, as without DDP, and rank 0's are the ones saved. Delete the module when the
    phase ends: that removes DDP's gradient hooks."""
    from torch.nn.parallel import DistributedDataParallel

    own = {id(p) for p in detector.parameters()}
    extra = [p for p in params if id(p) not in own and isinstance(p, nn.Parameter)]
    module = _StepLoss(detector, learner, features, extra)
    # torch >= 2.14 names it forward_sync_buffers (broadcast_buffers is deprecated there)
    known = inspect.signature(DistributedDataParallel).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False}
    )


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
