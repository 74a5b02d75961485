"""Torch datasets over indexed samples. A file that cannot be read is skipped, not fatal: the
dataset yields a marker, ``collate`` drops it, and the path and reason travel with the batch so
the caller can count and report it (this also works across DataLoader worker processes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from bnnkit.data.genimage import Sample
from bnnkit.data.images import UnreadableImage, open_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(image_size: int, preprocess: str, train: bool) -> T.Compose:
    """``crop`` keeps native resolution (generation artifacts survive; small images are padded),
    ``resize`` scales the whole image. Train adds a random crop and a horizontal flip."""
    if preprocess == "resize":
        geometry = [T.Resize((image_size, image_size), antialias=True)]
    elif train:
        geometry = [T.RandomCrop(image_size, pad_if_needed=True, padding_mode="reflect")]
    else:
        geometry = [T.CenterCrop(image_size)]
    if train:
        geometry.append(T.RandomHorizontalFlip())
    return T.Compose(
        [
            T.ToImage(),
            *geometry,
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@dataclass
class Broken:
    path: str
    reason: str


class ImageDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], transform: T.Compose, generators: Sequence[str]):
        self.samples = list(samples)
        self.transform = transform
        self.generators = list(generators)
        self._gen_index = {g: i for i, g in enumerate(self.generators)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples[index]
        try:
            image = open_rgb(s.path)
        except UnreadableImage as exc:
            return Broken(str(s.path), exc.reason)
        return self.transform(image), s.label, self._gen_index[s.generator], index


class FileDataset(Dataset):
    """Unlabelled files for ``bnnkit predict``."""

    def __init__(self, paths: Sequence[Path], transform: T.Compose):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = open_rgb(self.paths[index])
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
