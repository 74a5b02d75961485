"""Torch datasets over indexed samples. A file that cannot be read is skipped, not fatal: the
dataset yields a marker, ``collate`` drops it, and the path and reason travel with the batch so
the caller can count and report it (this also works across DataLoader worker processes)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from bnnkit.data.augment import AugmentSettings, flip_ops, pixel_ops
from bnnkit.data.debias import JPEG96_QUALITY, reencode_jpeg
from bnnkit.data.genimage import Sample
from bnnkit.data.images import UnreadableImage, open_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}


def _triple(what: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 3 numbers (R, G, B), got {value!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be 3 finite numbers (R, G, B), got {value!r}")
    if positive and min(values) <= 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Normalisation:
    """The input normalisation a backbone expects: ``(x - mean) / std`` per RGB channel on the
    0-1 pixel scale, and the interpolation ``preprocess = "resize"`` uses. The default is
    ImageNet's (and torchvision's bilinear resize), what every run used before the backbone's own
    normalisation was taken into account. ``source`` says where it came from (``backbone``,
    ``recipe``, ``default``, ``checkpoint``); it is informative and not part of equality."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _triple("std", self.std, positive=True))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (checkpoint metadata, cache keys)."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None, source: str = "checkpoint"):
        """From :meth:`to_dict`'s record; ``None`` (a run from before normalisation was
        recorded) gives ImageNet's, which such runs were trained with."""
        if record is None:
            return IMAGENET
        return cls(
            tuple(record["mean"]),
            tuple(record["std"]),
            str(record.get("interpolation", "bilinear")),
            source=source,
        )

    def normalize(self) -> T.Normalize:
        return T.Normalize(self.mean, self.std)

    def denormalise(self, images: Tensor) -> Tensor:
        """Back to the 0-1 pixel scale: ``images[..., 3, H, W] * std + mean`` (for display)."""
        shape = (3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(shape)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(shape)
        return images * std + mean


IMAGENET = Normalisation()


def build_transform(
    image_size: int,
    preprocess: str,
    train: bool,
    norm: Normalisation = IMAGENET,
    augment: AugmentSettings | None = None,
) -> T.Compose:
    """``crop`` keeps native resolution (generation artifacts survive; small images are padded),
    ``resize`` scales the whole image (with ``norm.interpolation``). Train adds a random crop and
    a horizontal flip, or with ``augment`` (``[data.augment]``) its flips and then its pixel
    operations (:mod:`bnnkit.data.augment`). Pixels are then normalised with ``norm`` (the
    backbone's; ImageNet's by default)."""
    if preprocess == "resize":
        mode = INTERPOLATIONS[norm.interpolation]
        geometry = [T.Resize((image_size, image_size), interpolation=mode, antialias=True)]
    elif train:
        geometry = [T.RandomCrop(image_size, pad_if_needed=True, padding_mode="reflect")]
    else:
        geometry = [T.CenterCrop(image_size)]
    uint8_ops: list[T.Transform] = []
    scaled_ops: list[T.Transform] = []
    if train:
        geometry.extend(flip_ops(augment))
        uint8_ops, scaled_ops = pixel_ops(augment)
    return T.Compose(
        [
            T.ToImage(),
            *geometry,
            *uint8_ops,
            T.ToDtype(torch.float32, scale=True),
            *scaled_ops,
            norm.normalize(),
        ]
    )


@dataclass
class Broken:
    path: str
    reason: str


def draft_size(preprocess: str, image_size: int, enabled: bool = True) -> tuple[int, int] | None:
    """The JPEG draft size for ``ImageDataset(draft=...)``: only ``resize`` scales the whole
    image, so only it may decode a JPEG at reduced scale (never below ``image_size``, so the
    resize still produces the recipe's size from at least as many pixels). None for ``crop``,
    which must see native-resolution pixels."""
    return (image_size, image_size) if enabled and preprocess == "resize" else None


class ImageDataset(Dataset):
    """Labelled samples through ``transform``. ``draft`` (see :func:`draft_size`) decodes JPEGs
    at the smallest 1/2^k scale still at least that size: faster for large photos, pixels
    within a few levels of a full decode after the resize (measured by benchmarks/scale.py);
    off by default. ``debias`` (``data.debias``): with ``jpeg96`` every fake is re-encoded as
    JPEG quality 96 right after decoding (:mod:`bnnkit.data.debias`)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: T.Compose,
        generators: Sequence[str],
        *,
        draft: tuple[int, int] | None = None,
        debias: Sequence[str] = (),
    ):
        self.samples = list(samples)
        self.transform = transform
        self.generators = list(generators)
        self.draft = draft
        #: ``data.debias`` controls acting at load time (``jpeg96``: fakes re-encoded as JPEG)
        self.debias = tuple(debias)
        self._gen_index = {g: i for i, g in enumerate(self.generators)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples[index]
        try:
            image = open_rgb(s.path, draft=self.draft)
        except UnreadableImage as exc:
            return Broken(str(s.path), exc.reason)
        if s.label == 1 and "jpeg96" in self.debias:
            image = reencode_jpeg(image, JPEG96_QUALITY)
        return self.transform(image), s.label, self._gen_index[s.generator], index


class FileDataset(Dataset):
    """Unlabelled files for ``bnnkit predict`` (``draft`` as :class:`ImageDataset`'s)."""

    def __init__(
        self, paths: Sequence[Path], transform: T.Compose, draft: tuple[int, int] | None = None
    ):
        self.paths = list(paths)
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = open_rgb(self.paths[index], draft=self.draft)
        except UnreadableImage as exc:
            return Broken(str(self.paths[index]), exc.reason)
        return self.transform(image), -1, -1, index


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    generators: Tensor
    indices: Tensor
    broken: list[Broken] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def collate(items: list) -> Batch:
    good = [it for it in items if not isinstance(it, Broken)]
    broken = [it for it in items if isinstance(it, Broken)]
    if not good:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(torch.zeros(0, 3, 1, 1), empty, empty, empty, broken)
    images, labels, gens, idx = zip(*good, strict=True)
    return Batch(
        torch.stack(images),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(gens, dtype=torch.long),
        torch.tensor(idx, dtype=torch.long),
        broken,
    )
