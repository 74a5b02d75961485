"""On-disk cache of pooled features for ``train.backbone = "frozen"``, one entry per generator
folder and split.

An entry's key hashes everything its features depend on: the backbone and attention weights
(their actual tensors, so a path, a hub tag or a random init with a given seed all key
correctly; with a frozen backbone neither is trained, and the key would change if either were),
the pooling, the transform (image size, preprocessing, input normalisation: mean, std,
interpolation), the bias controls (``data.debias``), the stored dtype (``train.feature_dtype``),
the split, the generator and that folder's file list (paths, labels, sizes, mtimes). Runs on
different generator subsets that share a backbone (the protocol's cross matrix) therefore extract
each folder once, and evaluation of a frozen run takes its clean condition from the same entries.

The entries themselves (sharded, resumable, verified, memory-mapped) are
:mod:`bnnkit.engine.features.store`.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bnnkit.data.dataset import ImageDataset, collate, draft_size
from bnnkit.data.debias import debias_of
from bnnkit.data.index import samples_digest
from bnnkit.engine.features.loop import Features, Scorer, StreamStats, batch_record, worker_count
from bnnkit.engine.features.store import FeatureEntry, FeatureRows, Shard
from bnnkit.metrics.records import Predictions
from bnnkit.model.detector import Detector

FEATURES_DIR = "features"


def _weights_digest(detector: Detector) -> str:
    """SHA-256 of the backbone's and attention's weights, remembered on the detector for as
    long as no weight tensor is replaced or modified in place (each tensor's storage, shape and
    autograd version counter are the key): a protocol asks several times per cell."""
    tensors = [
        (f"{i}.{name}", t)
        for i, module in enumerate((detector.backbone, detector.attention))
        for name, t in sorted(module.state_dict().items())
    ]
    key = tuple((n, t.data_ptr(), tuple(t.shape), t._version, str(t.device)) for n, t in tensors)
    memo = getattr(detector, "_weights_digest_memo", None)
    if memo is not None and memo[0] == key:
        return memo[1]
    h = hashlib.sha256()
    for name, tensor in tensors:
        h.update(name.partition(".")[2].encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest = h.hexdigest()
    object.__setattr__(detector, "_weights_digest_memo", (key, digest))
    return digest


def model_digest(detector: Detector, recipe: Any) -> str:
    """What every entry of this detector and transform shares: weights, pooling, transform and
    stored dtype (computed once per command, not per folder)."""
    h = hashlib.sha256()
    h.update(_weights_digest(detector).encode())
    frontend = detector.input_filter_name  # hashes a learnable frontend's tensors: once
    h.update(
        json.dumps(
            {
                "backbone": recipe.model.backbone.name,
                "pool": detector.pool,
                **({} if frontend == "none" else {"input_filter": frontend}),
                "image_size": recipe.data.image_size,
                "preprocess": recipe.data.preprocess,
                "jpeg_draft": draft_size(
                    recipe.data.preprocess, recipe.data.image_size, recipe.data.jpeg_draft
                ),
                "normalisation": detector.normalisation.to_dict(),
                "feature_dtype": recipe.train.feature_dtype,
                # data.debias (jpeg96 changes the fakes' pixels); absent when raw, so the
                # entries of runs from before the key keep theirs
                **({"debias": sorted(debias)} if (debias := debias_of(recipe)) else {}),
            },
            sort_keys=True,
        ).encode()
    )
    return h.hexdigest()


def entry_key(digest: str, split: str, generator: str | None, samples: Sequence) -> str:
    """The key of one folder's entry: ``digest`` (:func:`model_digest`), split, generator, and
    that folder's file list."""
    # The file list's digest comes from the dataset index (sizes and mtimes it already holds,
    # so no per-file stat on an indexed tree; the same digest as a stat of every file).
    files = samples_digest(samples)
    return hashlib.sha256(f"{digest}|{split}|{generator}|{files}".encode()).hexdigest()[:24]


def feature_key(detector: Detector, recipe: Any, split: str, samples: Sequence) -> str:
    """The entry key of ``samples`` (one generator's) under ``detector`` and ``recipe``."""
    generator = samples[0].generator if samples else None
    return entry_key(model_digest(detector, recipe), split, generator, samples)


def _runs(samples: Sequence) -> Iterator[tuple[str, int, int]]:
    """(generator, start, stop) of each run of consecutive samples of one generator."""
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i].generator != samples[start].generator:
            yield samples[start].generator, start, i
            start = i


def _compute(
    detector: Detector, dataset: ImageDataset, device: torch.device, workers: int, progress: Any
):
    """``compute(batches)`` for :meth:`FeatureEntry.fill`: one backbone pass per image."""
    where = {str(s.path): i for i, s in enumerate(dataset.samples)}

    @torch.no_grad()
    def compute(batches: list[list[int]]) -> Iterator[tuple]:
        detector.eval()
        # its own generator: iterating a DataLoader draws a base seed, from the global RNG
        # when it has none, and a run must not train differently when its features were cached
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                            collate_fn=collate, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        for batch in loader:
            broken = [(b, where[b.path]) for b in batch.broken]
            if len(batch):
                images = batch.images.to(device, non_blocking=True)
                feats = detector.raw_features(images).float().cpu()  # stored raw
            else:
                feats = torch.zeros(0, detector.feature_dim)
            yield feats, batch.labels, batch.indices, broken
            if progress is not None:
                progress(len(batch) + len(batch.broken))

    return compute


def cached_features(
    detector: Detector,
    dataset: ImageDataset,
    device: torch.device,
    recipe: Any,
    split: str,
    cache_dir: Path,
    progress: Any = None,
    *,
    workers: int = 0,
) -> Features:
    """Pooled features of ``dataset`` (in dataset order, unreadable files dropped) from the
    cache, computing only the folders' shards that are missing or fail verification. The
    features are read lazily (:class:`~bnnkit.engine.features.store.FeatureRows`); the shards
    hold raw features, read through the detector's standardisation (the head's input)."""
    digest = model_digest(detector, recipe)
    dim, dtype = detector.feature_dim, recipe.train.feature_dtype
    shards: list[Shard] = []
    labels, gens, indices, broken = [], [], [], []
    gen_index = {g: i for i, g in enumerate(dataset.generators)}
    for gen, lo, hi in _runs(dataset.samples):
        samples = dataset.samples[lo:hi]
        key = entry_key(digest, split, gen, samples)
        meta = {"key": key, "split": split, "generator": gen, "samples": len(samples),
                "dim": dim, "dtype": dtype}  # fmt: skip
        entry = FeatureEntry(Path(cache_dir) / FEATURES_DIR / f"{split}-{gen}-{key}", meta)
        good = entry.verify()
        todo = entry.missing(good)
        if entry.problems:
            warnings.warn(
                f"feature cache {entry.folder}: recomputing {'; '.join(entry.problems)}",
                stacklevel=2,
            )
        if todo:
            advance = None
            if progress is not None:
                total = sum(len(entry.span(s)) for s in todo)
                task = progress.add_task(f"features ({split}, {gen})", total=total, stats="cached")
                advance = lambda n, task=task: progress.advance(task, n)  # noqa: E731
            sub = ImageDataset(
                samples, dataset.transform, [gen], draft=dataset.draft, debias=dataset.debias
            )
            entry.fill(_compute(detector, sub, device, workers, advance), recipe.eval.batch_size)
            good = entry.verify()
            if entry.missing(good):
                raise RuntimeError(f"feature cache {entry.folder}: {'; '.join(entry.problems)}")
        for sid in sorted(good):
            shard = good[sid]
            shards.append(shard)
            labels.append(shard.labels)
            indices.append(shard.index + lo + entry.span(sid).start)
            gens.append(torch.full((shard.rows,), gen_index[gen], dtype=torch.long))
        broken.extend(entry.broken())
    cat = (lambda ts: torch.cat(ts)) if shards else (lambda ts: torch.zeros(0, dtype=torch.long))
    # raw on disk; read as the head's input (the detector's standardisation, fixed now)
    rows = FeatureRows(shards, dim, detector.standardiser.snapshot())
    return Features(rows, cat(labels), cat(gens), cat(indices), broken)


@torch.no_grad()
def cached_predictive(
    method: Any, feats: Features, k: int, device: torch.device, batch_size: int,
    scorer: Scorer | None = None,
) -> tuple[Predictions, StreamStats]:  # fmt: skip
    """What :func:`~bnnkit.engine.features.loop.stream_predictive` gives over a loader of
    ``batch_size`` in dataset order, from cached features instead of images: the head is
    sampled (and the ``scorer`` computed) on the same batches (rows grouped by
    ``index // batch_size``), so with the same seed the draws, and hence the record, are the
    same."""
    method.head.eval()
    stats = StreamStats(broken=list(feats.broken))
    parts: list[Predictions] = []
    groups = feats.indices // batch_size
    bounds = torch.nonzero(groups[1:] != groups[:-1]).flatten().add(1).tolist()
    for a, b in zip([0, *bounds], [*bounds, len(groups)], strict=True):
        if a == b:
            continue
        t0 = time.perf_counter()
        x = feats.features[a:b].to(device)
        t1 = time.perf_counter()
        parts.append(
            batch_record(
                method,
                x,
                k,
                scorer,
                stats,
                labels=feats.labels[a:b],
                generators=feats.generators[a:b],
                indices=feats.indices[a:b],
            )
        )
        stats.features_seconds += t1 - t0
        stats.sampling_seconds += time.perf_counter() - t1
    return Predictions.concat(parts), stats


def run_feature_cache(recipe: Any, meta: dict[str, Any]) -> Path | None:
    """The feature cache a frozen run's evaluation reads its clean features from: the one its
    training filled (recorded in ``checkpoint.json``) while it still exists; else ``None`` (the
    image path)."""
    recorded = meta.get("feature_cache")
    if recipe.train.backbone != "frozen" or not recorded or not Path(recorded).is_dir():
        return None
    return Path(recorded)


def cached_condition(
    detector: Detector, method: Any, dataset: ImageDataset, recipe: Any, device: torch.device,
    k: int, cache_dir: Path, progress: Any, scorer: Scorer | None = None, split: str = "val",
) -> tuple[Predictions, StreamStats]:  # fmt: skip
    """The clean condition of evaluation from the feature cache (folders not cached yet are
    extracted into it): the record :func:`~bnnkit.engine.features.loop.stream_predictive` would give
    (with the ``scorer``'s values). ``split``: the cache entries' split (``"calibration"``
    for the calibration images)."""
    t0 = time.perf_counter()
    feats = cached_features(
        detector, dataset, device, recipe, split, cache_dir, progress,
        workers=worker_count(recipe.data.num_workers, device),
    )  # fmt: skip
    extract = time.perf_counter() - t0
    torch.manual_seed(recipe.seed)  # the draws of the image path (evaluation's seed rule)
    record, stats = cached_predictive(method, feats, k, device, recipe.eval.batch_size, scorer)
    stats.features_seconds += extract
    return record, stats
