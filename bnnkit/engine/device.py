"""Choosing where to run (the CUDA device with most free memory, else MPS, else the CPU) and how
the training step runs there (:class:`Acceleration`): mixed precision (AMP), channels-last
memory layout and ``torch.compile``. AMP and channels-last are CUDA only: the CPU path stays
float32 and contiguous, so CPU runs are exact and resumable bit for bit."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.errors import UsageError


def cuda_free_memory() -> list[tuple[int, int, int]]:
    """``(index, free_bytes, total_bytes)`` per visible CUDA device (CUDA_VISIBLE_DEVICES)."""
    out = []
    for i in range(torch.cuda.device_count()):
        try:
            free, total = torch.cuda.mem_get_info(i)
        except RuntimeError:  # device busy/unavailable
            continue
        out.append((i, int(free), int(total)))
    return out


def select_device(requested: str = "auto") -> tuple[torch.device, str]:
    """The device to use and a one-line reason, printed by the CLI."""
    requested = (requested or "auto").strip().lower()
    if requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise UsageError(
                f"--device {requested!r}: {exc}", hint="use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"--device {requested}: CUDA is not available on this machine")
            if device.index is None:  # plain "cuda": choose among GPUs like auto does
                return _pick_cuda(os.environ.get("LOCAL_RANK"))
            if device.index >= torch.cuda.device_count():
                raise UsageError(
                    f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible"
                )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UsageError(f"--device {requested}: MPS is not available on this machine")
        return device, f"{device} (requested)"
    if torch.cuda.is_available():
        picked = _pick_cuda(os.environ.get("LOCAL_RANK"), allow_none=True)
        if picked is not None:
            return picked
    if torch.backends.mps.is_available():
        return torch.device("mps"), "mps (Apple GPU)"
    return torch.device("cpu"), f"cpu ({torch.get_num_threads()} threads; no GPU found)"


def resolve_device(device: Any, recipe_device: str = "auto") -> tuple[torch.device, str]:
    """A ``torch.device`` as given, else :func:`select_device` of ``device`` (``"auto"`` or
    ``None``: the recipe's ``train.device``): what the Python API and the protocol's cells use."""
    if isinstance(device, torch.device):
        return device, str(device)
    requested = str(device) if device not in (None, "auto") else recipe_device
    return select_device(requested)


def _pick_cuda(local_rank: str | None, allow_none: bool = False):
    """Under torchrun the rank's ``LOCAL_RANK`` device; else the GPU with most free memory."""
    count = torch.cuda.device_count()
    if local_rank is not None:
        try:
            index = int(local_rank)
        except ValueError:
            raise UsageError(f"LOCAL_RANK={local_rank!r} is not an integer") from None
        if not 0 <= index < count:
            raise UsageError(
                f"LOCAL_RANK={index} but only {count} CUDA device(s) visible",
                hint="use --nproc-per-node <= the number of GPUs, or set CUDA_VISIBLE_DEVICES",
            )
        return torch.device("cuda", index), f"cuda:{index} (LOCAL_RANK)"
    free = cuda_free_memory()
    if not free:
        if allow_none:
            return None
        return torch.device("cuda", 0), "cuda:0 (no free-memory query answered)"
    index, free_b, total_b = max(free, key=lambda t: (t[1], -t[0]))
    name = torch.cuda.get_device_name(index)
    busy = count - len(free)
    return (
        torch.device("cuda", index),
        f"cuda:{index} {name} ({free_b / 2**30:.1f} of {total_b / 2**30:.1f} GiB free; "
        f"most free of {len(free)}" + (f"; {busy} busy" if busy else "") + ")",
    )


@dataclass
class Acceleration:
    """What ``train.amp``, ``train.channels_last`` and ``train.compile`` resolve to on a device."""

    device: torch.device
    amp_mode: str  # "off", "bf16" or "fp16"
    channels_last: bool
    compile: bool

    def __post_init__(self) -> None:
        # fp16 needs loss scaling; bf16 has float32's range and does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_mode == "fp16")

    @classmethod
    def from_recipe(cls, train: Any, device: torch.device) -> Acceleration:
        """From a recipe's ``train`` section; ``train.amp = "auto"`` is bf16 where the GPU has
        it, else fp16, and off on the CPU; an explicit AMP mode off CUDA is a usage error."""
        cuda = device.type == "cuda"
        mode = train.amp
        if mode == "auto":
            mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "off"
        if mode != "off" and not cuda:
            raise UsageError(
                f"train.amp = {train.amp!r} needs a CUDA device; this run is on {device}"
            )
        return cls(device, mode, cuda and bool(train.channels_last), bool(train.compile))

    @property
    def amp(self) -> bool:
        return self.amp_mode != "off"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.amp_mode == "fp16" else torch.bfloat16

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp)

    def prepare(self, detector: nn.Module) -> Callable[[Tensor], Tensor]:
        """Put ``detector`` in the chosen memory layout; returns its (compiled) ``features``.

        A bound method is compiled, not the module, so ``state_dict`` keys stay unchanged."""
        if self.channels_last:
            detector.to(memory_format=torch.channels_last)
        features = detector.features  # type: ignore[attr-defined]
        return torch.compile(features) if self.compile else features

    def images(self, images: Tensor) -> Tensor:
        """A batch of images in the detector's memory layout."""
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )
