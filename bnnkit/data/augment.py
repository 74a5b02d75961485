"""Training augmentation (``[data.augment]``): CNNDetection-style blur and JPEG, Gaussian noise,
downscale-upscale, grayscale and flips, built on :mod:`torchvision.transforms.v2`.

The pixel operations run after the crop or resize (on the training-size image, which keeps them
cheap) in this order: downscale-upscale, blur, JPEG (all on uint8 pixels), then Gaussian noise
and grayscale (on the 0-1 scale), then the normalisation. Each is applied with its probability
``*_p``; its strength is drawn uniformly from its range per image.

Randomness: torchvision's transforms draw from the global torch RNG. With any augmentation on,
:class:`SeededSamples` gives every image of an epoch its own RNG state, a function of (seed,
phase, epoch, dataset index) alone, and restores the caller's state afterwards; so the crop, the
flips and every augmentation of an image are the same whatever the worker count or sample
order, and a run resumed mid-epoch draws exactly what the uninterrupted run drew. With every
augmentation off, nothing changes: crop and flip draw from the global RNG as before."""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

#: why augmentation is ignored with a frozen backbone (the trainer warns with this)
FROZEN_NOTE = (
    "[data.augment] has no effect with train.backbone = 'frozen': augmentation has no effect on "
    "cached frozen features (they are computed once from un-augmented images); fine-tune the "
    "backbone (train.backbone = 'finetune') to train with it"
)


class AugmentSettings(Protocol):
    """What the ops read (the recipe's ``[data.augment]``, :class:`AugmentConfig`)."""

    hflip: bool
    vflip: bool
    blur_p: float
    blur_sigma: list[float]
    jpeg_p: float
    jpeg_quality: list[int]
    noise_p: float
    noise_sigma: list[float]
    resize_p: float
    resize_scale: list[float]
    grayscale_p: float


PROBABILITIES = ("blur_p", "jpeg_p", "noise_p", "resize_p", "grayscale_p")


def is_active(cfg: AugmentSettings | None) -> bool:
    """True when ``cfg`` adds anything random to today's crop and horizontal flip (then every
    image's draws are seeded per sample, see :class:`SeededSamples`)."""
    if cfg is None:
        return False
    return bool(cfg.vflip) or any(getattr(cfg, p) > 0 for p in PROBABILITIES)


def _uniform(lo: float, hi: float) -> float:
    return lo if lo == hi else float(torch.empty(()).uniform_(lo, hi))


class _UniformDraw(T.Transform):
    """A transform with one parameter, ``params[param]``, drawn ~ U[lo, hi] per call."""

    param = "value"

    def __init__(self, bounds: tuple[float, float]):
        super().__init__()
        self.bounds = bounds

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {self.param: _uniform(*self.bounds)}


class RandomBlur(_UniformDraw):
    """Gaussian blur with sigma ~ U[lo, hi] (sigma 0 = unchanged), kernel 2*ceil(3 sigma) + 1
    (the CNNDetection recipe: blur sigma in [0, 3])."""

    param = "sigma"

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        sigma = params["sigma"]
        if sigma <= 1e-3:
            return inpt
        k = 2 * math.ceil(3 * sigma) + 1
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(
                separable_blur(inpt.as_subclass(torch.Tensor), k, sigma), like=inpt
            )
        return self._call_kernel(F.gaussian_blur, inpt, kernel_size=[k, k], sigma=[sigma, sigma])


def _reflect(n: int, p: int) -> torch.Tensor:
    """Indices of ``range(-p, n + p)`` reflected into ``range(n)`` (torch's "reflect" padding;
    clamped where ``p >= n``)."""
    i = torch.arange(-p, n + p).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i).clamp(0, n - 1)


def separable_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """``F.gaussian_blur(image, [k, k], [sigma, sigma])`` as two 1-D passes of shifted,
    weighted sums (the same kernel and reflect padding; uint8 results within one level of it):
    torchvision convolves with the full k x k kernel, about ten times slower on a CPU."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    weights = (w / w.sum()).tolist()
    *lead, h, width = image.shape
    p = kernel_size // 2
    planes = image.reshape(-1, h, width).float()
    padded = planes.index_select(-1, _reflect(width, p)).index_select(-2, _reflect(h, p))
    rows = torch.zeros(padded.shape[0], h + 2 * p, width)
    for i, wi in enumerate(weights):
        rows.add_(padded[..., i : i + width], alpha=wi)
    out = torch.zeros(padded.shape[0], h, width)
    for i, wi in enumerate(weights):
        out.add_(rows[:, i : i + h], alpha=wi)
    if not image.is_floating_point():
        out = out.round_().clamp_(0, 255)
    return out.to(image.dtype).reshape(*lead, h, width)


class RandomNoise(_UniformDraw):
    """Additive Gaussian noise with sigma ~ U[lo, hi] on the 0-1 scale, clipped to [0, 1]."""

    param = "sigma"

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.gaussian_noise, inpt, sigma=params["sigma"], clip=True)


class RandomDownUp(_UniformDraw):
    """Downscale by a factor ~ U[lo, hi] (bilinear, antialiased), then back to the input size:
    the resolution loss of a resized upload at the same tensor shape."""

    param = "scale"

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or inpt.ndim < 3:
            return inpt
        h, w = inpt.shape[-2:]
        small = [max(1, round(h * params["scale"])), max(1, round(w * params["scale"]))]
        if small == [h, w]:
            return inpt
        down = self._call_kernel(F.resize, inpt, size=small, antialias=True)
        return self._call_kernel(F.resize, down, size=[h, w], antialias=True)


class _JPEG(T.JPEG):
    """torchvision's JPEG re-encoding (quality ~ U{lo..hi}), without the DeprecationWarning
    torchvision 0.29's image codecs print on every call."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().transform(inpt, params)


def _maybe(op: T.Transform, p: float) -> list[T.Transform]:
    if p <= 0:
        return []
    return [op] if p >= 1 else [T.RandomApply([op], p=p)]


def flip_ops(cfg: AugmentSettings | None) -> list[T.Transform]:
    """The flips of the training transform (without ``cfg``: today's horizontal flip)."""
    if cfg is None:
        return [T.RandomHorizontalFlip()]
    return [
        *([T.RandomHorizontalFlip()] if cfg.hflip else []),
        *([T.RandomVerticalFlip()] if cfg.vflip else []),
    ]


def pixel_ops(cfg: AugmentSettings | None) -> tuple[list[T.Transform], list[T.Transform]]:
    """(ops on uint8 pixels, ops on the 0-1 float scale) of ``cfg``; both empty when off."""
    if cfg is None:
        return [], []
    lo_q, hi_q = (int(q) for q in cfg.jpeg_quality)
    uint8 = [
        *_maybe(RandomDownUp(tuple(cfg.resize_scale)), cfg.resize_p),  # type: ignore[arg-type]
        *_maybe(RandomBlur(tuple(cfg.blur_sigma)), cfg.blur_p),  # type: ignore[arg-type]
        *_maybe(_JPEG((lo_q, hi_q)), cfg.jpeg_p),
    ]
    scaled = [
        *_maybe(RandomNoise(tuple(cfg.noise_sigma)), cfg.noise_p),  # type: ignore[arg-type]
        *([T.RandomGrayscale(p=cfg.grayscale_p)] if cfg.grayscale_p > 0 else []),
    ]
    return uint8, scaled


def sample_seed(seed: int, phase: str, epoch: int, index: int) -> int:
    """The RNG seed of one training image's draws: a stable hash of (seed, phase, epoch,
    index), the same in every process, worker and resume."""
    key = f"bnnkit-augment/{seed}/{phase}/{epoch}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class SeededSamples(Dataset):
    """``dataset`` whose item ``index`` is produced under the CPU RNG state seeded with
    :func:`sample_seed` (``seed``, ``phase``, ``epoch``, ``index``); the caller's RNG state is
    restored afterwards, so training's own draws (dropout, weight samples) are untouched."""

    def __init__(self, dataset: Dataset, seed: int, phase: str, epoch: int):
        self.dataset = dataset
        self.seed, self.phase, self.epoch = seed, phase, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(
                sample_seed(self.seed, self.phase, self.epoch, index)
            )
            return self.dataset[index]
