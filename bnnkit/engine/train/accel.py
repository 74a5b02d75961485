"""Acceleration of the training step: mixed precision (AMP), channels-last memory layout and
``torch.compile``. AMP and channels-last are CUDA only: the CPU path stays float32 and
contiguous, so CPU runs are exact and resumable bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.errors import UsageError


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
