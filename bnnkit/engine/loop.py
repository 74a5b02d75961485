"""Shared loops: data loaders, feature extraction, and MC predictive over the head only."""

from __future__ import annotations

import os
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
    shuffle: bool,
    seed: int,
    workers: int,
    device: torch.device,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
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


@torch.no_grad()
def mc_predictive(
    method: InferenceMethod, features: Tensor, k: int, device: torch.device, chunk: int = 1024
) -> Predictive:
    """K posterior samples over the head for every feature row, streamed in chunks so memory
    does not grow with K x N."""
    method.head.eval()
    parts: dict[str, list[Tensor]] = {"p": [], "total": [], "aleatoric": [], "epistemic": []}
    for start in range(0, features.shape[0], chunk):
        probs = method.sample(features[start : start + chunk].to(device), k).float().cpu()
        unc = decompose(probs)
        parts["p"].append(probs.mean(0)[:, 1])
        for key in ("total", "aleatoric", "epistemic"):
            parts[key].append(unc[key])
    if not parts["p"]:
        z = torch.zeros(0)
        return Predictive(z, z, z, z)
    return Predictive(*(torch.cat(parts[k]) for k in ("p", "total", "aleatoric", "epistemic")))


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
    import time

    detector.eval()
    method.head.eval()
    keys = ("p", "total", "aleatoric", "epistemic", "labels", "gens", "idx")
    parts: dict[str, list[Tensor]] = {key: [] for key in keys}
    broken: list[Broken] = []
    t_feat = t_samp = 0.0
    for batch in loader:
        broken.extend(batch.broken)
        if len(batch):
            t0 = time.perf_counter()
            feats = detector.features(batch.images.to(device, non_blocking=True)).float()
            t1 = time.perf_counter()
            probs = method.sample(feats, k).float().cpu()
            unc = decompose(probs)
            t_feat, t_samp = t_feat + t1 - t0, t_samp + time.perf_counter() - t1
            parts["p"].append(probs.mean(0)[:, 1])
            for key in ("total", "aleatoric", "epistemic"):
                parts[key].append(unc[key])
            parts["labels"].append(batch.labels)
            parts["gens"].append(batch.generators)
            parts["idx"].append(batch.indices)
        if progress is not None:
            progress(len(batch) + len(batch.broken))
    if not parts["p"]:
        z, e = torch.zeros(0), torch.zeros(0, dtype=torch.long)
        return Streamed(Predictive(z, z, z, z), e, e, e, broken, t_feat, t_samp)
    cat = {key: torch.cat(v) for key, v in parts.items()}
    pred = Predictive(cat["p"], cat["total"], cat["aleatoric"], cat["epistemic"])
    return Streamed(pred, cat["labels"], cat["gens"], cat["idx"], broken, t_feat, t_samp)
