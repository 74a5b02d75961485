"""On-disk cache of pooled features for ``train.backbone = "frozen"``.

The key hashes everything the features depend on: the backbone and attention weights (their
actual tensors, so a path, a hub tag or a random init with a given seed all key correctly), the
pooling, the transform (image size, preprocessing, input normalisation: mean, std,
interpolation) and the file list (paths, sizes, mtimes). A second method trained on the same
data and backbone reuses the features and never runs the backbone again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bnnkit.data.dataset import Broken
from bnnkit.engine.loop import Features, extract_features
from bnnkit.model.detector import Detector
from bnnkit.run.fileio import atomic_write_text, fsync_replace, temp_path


def _weights_digest(detector: Detector) -> str:
    h = hashlib.sha256()
    for module in (detector.backbone, detector.attention):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def feature_key(detector: Detector, recipe, split: str, samples) -> str:
    h = hashlib.sha256()
    h.update(_weights_digest(detector).encode())
    h.update(
        json.dumps(
            {
                "backbone": recipe.model.backbone.name,
                "pool": detector.pool,
                "image_size": recipe.data.image_size,
                "preprocess": recipe.data.preprocess,
                "normalisation": detector.normalisation.to_dict(),
                "split": split,
            },
            sort_keys=True,
        ).encode()
    )
    for s in samples:
        try:
            st = s.path.stat()
            h.update(f"{s.path}|{s.label}|{s.generator}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{s.path}|missing\n".encode())
    return h.hexdigest()[:24]


def cached_features(
    detector: Detector,
    loader,
    device: torch.device,
    recipe,
    split: str,
    cache_dir: Path,
    progress=None,
) -> Features:
    key = feature_key(detector, recipe, split, loader.dataset.samples)
    folder = Path(cache_dir) / "features"
    tensors_path, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if tensors_path.is_file() and meta_path.is_file():
        t = load_file(str(tensors_path))
        broken = [Broken(**b) for b in json.loads(meta_path.read_text())["broken"]]
        return Features(t["features"], t["labels"], t["generators"], t["indices"], broken)
    task = None
    if progress is not None:
        task = progress.add_task(
            f"features ({split})", total=len(loader.dataset), stats="cached once"
        )
    feats = extract_features(
        detector,
        loader,
        device,
        progress=(lambda n: progress.advance(task, n)) if task is not None else None,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(tensors_path)
    save_file(
        {
            "features": feats.features.contiguous(),
            "labels": feats.labels,
            "generators": feats.generators,
            "indices": feats.indices,
        },
        str(tmp),
    )
    fsync_replace(tmp, tensors_path)
    atomic_write_text(meta_path, json.dumps({"broken": [b.__dict__ for b in feats.broken]}))
    return feats
