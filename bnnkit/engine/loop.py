"""Shared loops: data loaders, feature extraction, and MC predictive over the head only."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bnnkit.data.dataset import Broken, collate
from bnnkit.methods.base import InferenceMethod
from bnnkit.metrics.uncertainty import decompose
from bnnkit.model.detector import Detector


def worker_count(setting: int | str, device: torch.device) -> int:
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0  # decoding small images in-process beats worker start-up on a CPU run
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int,
    workers: int,
    device: torch.device,
    order: list[int] | None = None,
) -> DataLoader:
    """The DataLoader every loop uses (skips unreadable files via ``collate``). ``order`` fixes
    the sample order explicitly (the trainer's per-epoch permutations); else ``shuffle``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if order is None else False,
        sampler=order,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )


@dataclass
class Features:
    features: Tensor
    labels: Tensor
    generators: Tensor
    indices: Tensor
    broken: list[Broken] = field(default_factory=list)


@torch.no_grad()
def extract_features(
    detector: Detector, loader: DataLoader, device: torch.device, progress=None
) -> Features:
    """Pooled features for every readable image (one backbone pass each), in loader order."""
    detector.eval()
    feats, labels, gens, idx, broken = [], [], [], [], []
    for batch in loader:
        broken.extend(batch.broken)
        if len(batch):
            feats.append(
                detector.features(batch.images.to(device, non_blocking=True)).float().cpu()
            )
            labels.append(batch.labels)
            gens.append(batch.generators)
            idx.append(batch.indices)
        if progress is not None:
            progress(len(batch) + len(batch.broken))
    if not feats:
        empty = torch.zeros(0, dtype=torch.long)
        return Features(torch.zeros(0, detector.feature_dim), empty, empty, empty, broken)
    return Features(torch.cat(feats), torch.cat(labels), torch.cat(gens), torch.cat(idx), broken)


@dataclass
class Predictive:
    """Per-image results of the MC predictive: p(fake) and the entropy decomposition (nats)."""

    p_fake: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor


def _predict_chunk(method: InferenceMethod, features: Tensor, k: int) -> Predictive:
    """K head samples for one chunk of features, reduced at once to per-image results."""
    probs = method.sample(features, k).float().cpu()
    unc = decompose(probs)
    return Predictive(probs.mean(0)[:, 1], unc["total"], unc["aleatoric"], unc["epistemic"])


def _concat(chunks: list[Predictive]) -> Predictive:
    if not chunks:
        z = torch.zeros(0)
        return Predictive(z, z, z, z)
    return Predictive(
        *(torch.cat([getattr(c, f) for c in chunks]) for f in ("p_fake", "total", "aleatoric",
                                                              "epistemic"))
    )  # fmt: skip


@torch.no_grad()
def mc_predictive(
    method: InferenceMethod, features: Tensor, k: int, device: torch.device, chunk: int = 1024
) -> Predictive:
    """K posterior samples over the head for every feature row, streamed in chunks so memory
    does not grow with K x N."""
    method.head.eval()
    return _concat(
        [
            _predict_chunk(method, features[start : start + chunk].to(device), k)
            for start in range(0, features.shape[0], chunk)
        ]
    )


@dataclass
class Streamed:
    """Per-image results of :func:`stream_predictive`, in loader order."""

    pred: Predictive
    labels: Tensor
    generators: Tensor
    indices: Tensor
    broken: list[Broken]
    features_seconds: float
    sampling_seconds: float


@torch.no_grad()
def stream_predictive(
    detector: Detector, method: InferenceMethod, loader: DataLoader, k: int,
    device: torch.device, progress=None,
) -> Streamed:  # fmt: skip
    """One backbone pass and K head samples per batch, keeping only per-image results, so peak
    memory does not grow with the number of images (the pooled features are dropped)."""
    detector.eval()
    method.head.eval()
    chunks: list[Predictive] = []
    labels: list[Tensor] = []
    gens: list[Tensor] = []
    idx: list[Tensor] = []
    broken: list[Broken] = []
    t_feat = t_samp = 0.0
    for batch in loader:
        broken.extend(batch.broken)
        if len(batch):
            t0 = time.perf_counter()
            feats = detector.features(batch.images.to(device, non_blocking=True)).float()
            t1 = time.perf_counter()
            chunks.append(_predict_chunk(method, feats, k))
            t_feat, t_samp = t_feat + t1 - t0, t_samp + time.perf_counter() - t1
            labels.append(batch.labels)
            gens.append(batch.generators)
            idx.append(batch.indices)
        if progress is not None:
            progress(len(batch) + len(batch.broken))
    empty = torch.zeros(0, dtype=torch.long)

    def cat(parts: list[Tensor]) -> Tensor:
        return torch.cat(parts) if parts else empty

    return Streamed(_concat(chunks), cat(labels), cat(gens), cat(idx), broken, t_feat, t_samp)
