"""Shared loops: data loaders, feature extraction, and the posterior predictive over the head
(one streaming loop, :func:`stream_predictive`, with a per-batch hook and the OOD scores of each
batch), and the rule for K."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bnnkit.data.dataset import Batch, Broken, collate
from bnnkit.methods.base import InferenceMethod
from bnnkit.metrics.records import Predictions
from bnnkit.model.detector import Detector

#: the scores a streaming loop computes per batch (name -> fitted or fit-free score plugin)
Scorer = dict[str, Any]


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share), split
    between the processes of a ``torchrun`` on this node."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cpus // max(1, local))


def worker_count(setting: int | str, device: torch.device) -> int:
    """DataLoader workers for ``data.num_workers``: ``auto`` is 0 on the CPU (decoding in the
    training process beats worker start-up there, the cores are busy with the model), else one
    per usable core but one (kept for the training process), at most 16."""
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    return max(0, min(16, usable_cpus() - 1))


def loader_settings(workers: int, device: torch.device) -> dict[str, Any]:
    """Pinned memory on CUDA (asynchronous host-to-device copies with ``non_blocking``), and
    with workers, 4 batches prefetched per worker on an accelerator (2, PyTorch's default, on
    the CPU) so decoding runs ahead of the GPU."""
    settings: dict[str, Any] = {"pin_memory": device.type == "cuda"}
    if workers > 0:
        settings["prefetch_factor"] = 2 if device.type == "cpu" else 4
    return settings


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int,
    workers: int,
    device: torch.device,
    order: list[int] | None = None,
    collate_fn: Callable[[list], Any] = collate,
) -> DataLoader:
    """The DataLoader every loop uses (skips unreadable files via ``collate``). ``order`` fixes
    the sample order explicitly (the trainer's per-epoch permutations); else ``shuffle``.
    ``collate_fn``: another collate (tiled images, :mod:`bnnkit.engine.features.tiles`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if order is None else False,
        sampler=order,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        collate_fn=collate_fn,
        **loader_settings(workers, device),
    )


@dataclass
class Features:
    #: ``N x dim`` rows; from the frozen cache a lazy ``feature_store.FeatureRows`` (``[idx]``
    #: gathers rows from memory-mapped shards, ``.to(device)`` materialises them all)
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


# --------------------------------------------------------------------------------------------
# The posterior predictive over the head: K samples per image, reduced at once to a record.
#
# How many samples (K) each caller draws is decided by :func:`posterior_samples`.

#: validation during training draws at most this many samples (cheap, once per epoch).
VAL_SAMPLES_MAX = 16

#: the method attribute holding a run's post-hoc temperature (:func:`set_temperature`).
TEMPERATURE_ATTR = "calibration_temperature"


def set_temperature(method: InferenceMethod, temperature: float | None) -> None:
    """Make :func:`head_probs` temper every posterior sample of ``method`` by ``temperature``
    (``bnnkit calibrate``'s fit, :mod:`bnnkit.engine.posthoc.calibrate`); ``None`` or 1
    removes it."""
    setattr(method, TEMPERATURE_ATTR, None if temperature in (None, 1.0) else float(temperature))


def temper(probs: Tensor, temperature: float | None) -> Tensor:
    """``softmax(log p_k / T)`` per posterior sample ``probs[K, B, C]`` (log p is the logits up
    to a constant); ``None`` or 1 returns ``probs`` unchanged."""
    if temperature in (None, 1.0):
        return probs
    return torch.softmax(probs.float().clamp_min(1e-12).log() / float(temperature), dim=-1)


def _samples_probs_only(method: InferenceMethod) -> bool:
    """Whether ``method`` (a third-party one) overrides only :meth:`InferenceMethod.sample`
    (in its class or on the instance), so its logits are not its own: they are then
    ``log probs``."""

    def own(name: str) -> Any:
        attr = getattr(method, name)
        return getattr(attr, "__func__", attr)

    return (
        own("sample") is not InferenceMethod.sample
        and own("sample_logits") is InferenceMethod.sample_logits
    )


def head_outputs(method: InferenceMethod, features: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The K posterior samples of the head on ``features``: ``(logits, probs)``, each
    ``[K, B, C]``, tempered by the run's temperature when one is set (``logits / T``, ``probs``
    their softmax): the one place evaluation and prediction sample the head. A method that
    overrides only ``sample`` gives ``log probs`` as its logits."""
    t = getattr(method, TEMPERATURE_ATTR, None)
    tempered = t not in (None, 1.0)
    if _samples_probs_only(method):
        probs = method.sample(features, k)
        logits = probs.float().clamp_min(1e-12).log()
        if not tempered:
            return logits, probs
    else:
        logits = method.sample_logits(features, k).float()
    if tempered:
        logits = logits / float(t)
    return logits, torch.softmax(logits, dim=-1)


def head_probs(method: InferenceMethod, features: Tensor, k: int) -> Tensor:
    """The K posterior samples ``[K, B, 2]`` of the predictive (:func:`head_outputs`)."""
    return head_outputs(method, features, k)[1]


def batch_record(
    method: InferenceMethod,
    features: Tensor,
    k: int,
    scorer: Scorer | None = None,
    stats: StreamStats | None = None,
    **known: Tensor,
) -> Predictions:
    """The record of one batch of pooled ``features``: K head samples reduced at once, and the
    values of every score of ``scorer`` (:func:`bnnkit.scores.store.compute_scores`) on them
    (their seconds added to ``stats.scores_seconds``)."""
    logits, probs = head_outputs(method, features, k)
    values = None
    if scorer:
        from bnnkit.scores.base import ScoreInputs
        from bnnkit.scores.store import compute_scores

        t0 = time.perf_counter()
        values = compute_scores(scorer, ScoreInputs(features.float(), logits, probs))
        if stats is not None:
            stats.scores_seconds += time.perf_counter() - t0
    return Predictions.from_probs(probs, scores=values, logits=logits, **known)


def posterior_samples(
    recipe: Any,
    purpose: str,
    *,
    requested: int | None = None,
    calibrated: dict[str, Any] | None = None,
) -> int:
    """The one rule for K, the number of posterior samples per image:

    - ``validate`` (the trainer's per-epoch validation): ``min(eval.samples, 16)``;
    - ``evaluate``: ``--samples`` if given, else the recipe's ``eval.samples``;
    - ``predict``: ``--samples`` if given, else the K the run's ``threshold.json`` was
      calibrated with (so verdicts use the threshold's own K), else ``eval.samples``.
    """
    if purpose == "validate":
        return min(int(recipe.eval.samples), VAL_SAMPLES_MAX)
    if requested:
        return int(requested)
    if purpose == "predict" and calibrated and calibrated.get("samples"):
        return int(calibrated["samples"])
    if purpose in ("evaluate", "predict"):
        return int(recipe.eval.samples)
    raise ValueError(f"unknown purpose {purpose!r}: validate, evaluate or predict")


@torch.no_grad()
def predict_features(
    method: InferenceMethod,
    features: Tensor,
    k: int,
    device: torch.device | None = None,
    chunk: int = 1024,
    scorer: Scorer | None = None,
) -> Predictions:
    """K posterior samples over the head for every feature row (on ``device``, default where
    the features are), and the ``scorer``'s values, streamed in chunks so memory does not grow
    with K x N."""
    method.head.eval()
    device = features.device if device is None else device
    return Predictions.concat(
        [
            batch_record(method, features[s : s + chunk].to(device), k, scorer)
            for s in range(0, features.shape[0], chunk)
        ]
    )


@dataclass
class StreamStats:
    """What :func:`stream_predictive` saw besides the per-image results."""

    broken: list[Broken] = field(default_factory=list)
    features_seconds: float = 0.0
    sampling_seconds: float = 0.0  # the head's samples and the scores
    scores_seconds: float = 0.0  # of which the scores


#: ``on_batch(batch, images, feature_map, predictions)``: called after each batch with the
#: images on the device, the attention-output feature map and the batch's record.
BatchHook = Callable[[Batch, Tensor, Tensor, Predictions], None]

#: ``perturb(images, labels) -> images``: replaces each batch's (normalised) images on the device
#: before the backbone, e.g. an adversarial attack (:mod:`bnnkit.engine.evaluate.attack`), which
#: enables gradients itself inside this no-grad loop.
Perturb = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def stream_predictive(
    detector: Detector,
    method: InferenceMethod,
    loader: DataLoader,
    k: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    *,
    on_batch: BatchHook | None = None,
    scorer: Scorer | None = None,
    perturb: Perturb | None = None,
) -> tuple[Predictions, StreamStats]:
    """One backbone pass and K head samples per batch, keeping only per-image results (and the
    values of each score of ``scorer``), so peak memory does not grow with the number of images
    (the pooled features are dropped). The record carries each image's label, generator and
    dataset index, in loader order. ``perturb`` replaces each batch's images first (its time
    counts as feature time)."""
    detector.eval()
    method.head.eval()
    parts: list[Predictions] = []
    stats = StreamStats()
    for batch in loader:
        stats.broken.extend(batch.broken)
        if len(batch):
            t0 = time.perf_counter()
            images = batch.images.to(device, non_blocking=True)
            if perturb is not None:
                images = perturb(images, batch.labels.to(device))
            fmap = detector.feature_map(images)
            feats = detector.pool_features(fmap).float()
            t1 = time.perf_counter()
            part = batch_record(
                method,
                feats,
                k,
                scorer,
                stats,
                labels=batch.labels,
                generators=batch.generators,
                indices=batch.indices,
            )
            t2 = time.perf_counter()
            stats.features_seconds += t1 - t0
            stats.sampling_seconds += t2 - t1
            parts.append(part)
            if on_batch is not None:
                on_batch(batch, images, fmap, part)
        if progress is not None:
            progress(len(batch) + len(batch.broken))
    return Predictions.concat(parts), stats
