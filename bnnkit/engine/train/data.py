"""The data of a training run: the (train, val) splits (and the calibration split carved out of
the training folders, which training never sees), their datasets and loaders, each epoch's
batches (images for the backbone phases, pooled features for the head phase), and the record of
unreadable files skipped on the way."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import Tensor
from torch.utils.data import DataLoader

from bnnkit.data.augment import FROZEN_NOTE, SeededSamples, is_active
from bnnkit.data.dataset import ImageDataset, Normalisation, build_transform, draft_size
from bnnkit.data.debias import debias_of
from bnnkit.data.splits import CALIBRATION_SPLIT, train_calibration_split, val_items
from bnnkit.engine.device import Acceleration
from bnnkit.engine.features.cache import cached_features
from bnnkit.engine.features.loop import Features, extract_features, make_loader, worker_count
from bnnkit.engine.train.distributed import DistInfo, barrier, shard
from bnnkit.engine.train.state import epoch_order
from bnnkit.errors import UsageError
from bnnkit.metrics.attribution import class_targets
from bnnkit.recipe import Recipe

#: one training batch: inputs (images or pooled features) on the device, labels, dataset indices
Batch = tuple[Tensor, Tensor, Tensor]


@dataclass
class Datasets:
    """Training images with augmentation, the same without (feature extraction), validation."""

    train_aug: ImageDataset
    train_plain: ImageDataset
    val: ImageDataset


@dataclass
class TrainData:
    recipe: Recipe
    device: torch.device
    dist: DistInfo
    cache_dir: Path
    #: unreadable files seen so far: path -> reason (saved in checkpoints, merged over ranks)
    broken: dict[str, str] = field(default_factory=dict)

    #: the calibration split (:func:`bnnkit.data.splits.train_calibration_split`), set by
    #: :meth:`splits`: carved out of the training folders, never trained on
    calibration: list = field(default_factory=list)

    def splits(self) -> tuple[list, list]:
        """(train, val) samples; the training split without the calibration images (kept in
        :attr:`calibration`)."""
        d, r = self.recipe.data, self.recipe
        gens = list(d.train_generators)
        train, self.calibration = train_calibration_split(r, self.cache_dir)
        val = val_items(r, gens, self.cache_dir)
        if not train:
            raise UsageError(f"no training images found under '{d.root}' for {', '.join(gens)}")
        return train, val

    def calibration_features(self, detector: Any, norm: Normalisation, progress: Progress):
        """Features of the calibration images (no augmentation; the feature cache for a frozen
        backbone), or ``None`` when the run has no calibration split."""
        if not self.calibration:
            return None
        d = self.recipe.data
        dataset = ImageDataset(
            self.calibration, build_transform(d.image_size, d.preprocess, train=False, norm=norm),
            list(d.train_generators), draft=draft_size(d.preprocess, d.image_size, d.jpeg_draft),
            debias=debias_of(self.recipe),
        )  # fmt: skip
        return self.features(detector, dataset, CALIBRATION_SPLIT, progress)

    def datasets(self, splits: tuple[list, list], norm: Normalisation) -> Datasets:
        """The three datasets of ``splits``, normalised with ``norm``."""
        d, (train, val) = self.recipe.data, splits
        gens = list(d.train_generators)
        eval_tf = build_transform(d.image_size, d.preprocess, train=False, norm=norm)
        train_tf = build_transform(
            d.image_size, d.preprocess, train=True, norm=norm, augment=d.augment
        )
        if is_active(d.augment) and self.recipe.train.backbone == "frozen":
            warnings.warn(FROZEN_NOTE, UserWarning, stacklevel=2)
        draft = draft_size(d.preprocess, d.image_size, d.jpeg_draft)
        debias = debias_of(self.recipe)
        return Datasets(
            ImageDataset(train, train_tf, gens, draft=draft, debias=debias),
            ImageDataset(train, eval_tf, gens, draft=draft, debias=debias),
            ImageDataset(val, eval_tf, gens, draft=draft, debias=debias),
        )

    def note_broken(self, items: list) -> None:
        for b in items:
            self.broken[b.path] = b.reason

    def loader(self, dataset: Any, batch_size: int, order: list[int] | None = None) -> DataLoader:
        workers = worker_count(self.recipe.data.num_workers, self.device)
        return make_loader(
            dataset, batch_size, seed=self.recipe.seed, workers=workers, device=self.device,
            order=order,
        )  # fmt: skip

    def steps_per_epoch(self, n: int, images: bool = True) -> int:
        """Optimiser steps per epoch over ``n`` samples: this rank's shard in batches (every
        rank takes the same number; see :meth:`epoch_indices` for a lone last image)."""
        per_rank = shard(torch.arange(n), self.dist)
        if images:
            per_rank = self._no_lone_sample(per_rank)
        return -(-len(per_rank) // self.recipe.train.batch_size)

    def _no_lone_sample(self, order: Tensor) -> Tensor:
        """``order`` without its last sample when that sample would make a batch of its own:
        batch norm in the backbone cannot train on one image. The order is a new permutation
        every epoch, so no image is left out for good. (Head phases keep it: a head has no
        batch norm, and SG-MCMC on two ranks must see the global batches one process sees.)"""
        bs = self.recipe.train.batch_size
        return order[:-1] if bs > 1 and order.numel() > 1 and order.numel() % bs == 1 else order

    def epoch_indices(self, n: int, phase: str, epoch: int, images: bool = True) -> Tensor:
        """This rank's sample order of ``epoch`` (with ``images``: no batch of one image)."""
        order = shard(epoch_order(n, self.recipe.seed, phase, epoch), self.dist)
        return self._no_lone_sample(order) if images else order

    def features(self, detector: Any, dataset: Any, split: str, progress: Progress) -> Features:
        """Pooled features of ``dataset`` in dataset order (unreadable files dropped); cached on
        disk per generator folder with a frozen backbone and then read lazily from the
        memory-mapped shards (rank 0 fills the cache, the others then read it)."""
        if self.recipe.train.backbone == "frozen":
            if not self.dist.is_main:
                barrier(self.dist)
            workers = worker_count(self.recipe.data.num_workers, self.device)
            feats = cached_features(
                detector, dataset, self.device, self.recipe, split, self.cache_dir, progress,
                workers=workers,
            )  # fmt: skip
            if self.dist.is_main:
                barrier(self.dist)
        else:
            loader = self.loader(dataset, self.recipe.eval.batch_size)
            task = progress.add_task(f"features ({split})", total=len(dataset), stats="")
            feats = extract_features(
                detector, loader, self.device, lambda n: progress.advance(task, n)
            )
        self.note_broken(feats.broken)
        return feats

    def plain_features(self, detector: Any, loader: DataLoader) -> Features:
        """Features of ``loader``'s images through the current detector (no bar, no cache)."""
        feats = extract_features(detector, loader, self.device)
        self.note_broken(feats.broken)
        return feats

    def image_batches(
        self, dataset: ImageDataset, phase: str, epoch: int, skip: int, accel: Acceleration
    ) -> Iterator[Batch]:
        """This rank's image batches of ``epoch``, the first ``skip`` left out (a resume)."""
        bs = self.recipe.train.batch_size
        order = self.epoch_indices(len(dataset), phase, epoch)
        if is_active(self.recipe.data.augment):  # per-image draws: (seed, phase, epoch, index)
            dataset = SeededSamples(dataset, self.recipe.seed, phase, epoch)
        for batch in self.loader(dataset, bs, order[skip * bs :].tolist()):
            self.note_broken(batch.broken)
            if len(batch):
                images = accel.images(batch.images.to(self.device, non_blocking=True))
                yield images, self.targets(batch.labels, batch.generators), batch.indices

    def feature_batches(self, feats: Features, epoch: int, skip: int) -> Iterator[Batch]:
        """This rank's batches of pooled training features of ``epoch`` (phase ``head``)."""
        bs = self.recipe.train.batch_size
        order = self.epoch_indices(feats.labels.shape[0], "head", epoch, images=False)
        for start in range(skip * bs, order.numel(), bs):
            idx = order[start : start + bs]
            targets = self.targets(feats.labels[idx], feats.generators[idx])
            yield feats.features[idx].to(self.device), targets, feats.indices[idx]

    def targets(self, labels: Tensor, generators: Tensor) -> Tensor:
        """The training targets: the labels (1 = fake), or with ``data.labels = "generator"``
        the class of a (1 + G)-class head (:func:`bnnkit.metrics.attribution.class_targets`)."""
        if self.recipe.data.labels == "generator":
            return class_targets(labels, generators)
        return labels
