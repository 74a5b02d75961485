"""Finished conditions of an evaluation, kept so that an interrupted ``bnnkit evaluate`` resumes.

Each condition (clean, then every degradation) that finishes is written atomically to
``RUN/eval_partial/<condition>.safetensors``: its :class:`~bnnkit.metrics.records.Predictions`
tensors (each score's values as ``score.<name>``), and in the file's metadata the condition,
what the stream saw (unreadable files, seconds) and the key of the evaluation. The key hashes
everything the results depend on: the model file's sha256, K, the inference overrides (and the
scores with their options and fits), the generators, the evaluated files, the data options,
the seed, the device type and the bnnkit version. The next ``evaluate`` with the same
key loads the finished conditions and computes only the others; files of another key (other
weights, other arguments) are deleted on sight, and the folder is deleted once the evaluation's
files are written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bnnkit._version import __version__
from bnnkit.data.dataset import Broken
from bnnkit.data.genimage import Sample
from bnnkit.engine.features.loop import StreamStats
from bnnkit.metrics.records import Predictions
from bnnkit.run.fileio import fsync_replace, temp_path
from bnnkit.run.layout import EVAL_PARTIAL_SUFFIX, RunLayout
from bnnkit.run.threshold import model_fingerprint

__all__ = ["PartialResults", "evaluation_key"]

_SCORE = "score."  # the tensor-name prefix of a score's values


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def evaluation_key(
    layout: RunLayout,
    *,
    recipe: Any,
    samples: int,
    inference: dict[str, Any],
    generators: list[str],
    items: list[Sample],
    device: torch.device,
) -> str:
    """The sha256 of everything an evaluation condition's results depend on."""
    files = hashlib.sha256()
    for s in items:
        files.update(f"{s.path}\0{s.label}\0{s.generator}\0{s.size}\0{s.mtime_ns}\n".encode())
    return _digest(
        {
            "model_sha256": model_fingerprint(layout.root),
            "samples": samples,
            "inference": inference,
            "generators": generators,
            "items": files.hexdigest(),
            "data": recipe.data.model_dump(mode="json"),
            "eval": recipe.eval.model_dump(mode="json"),
            "seed": recipe.seed,
            "device": device.type,
            "bnnkit": __version__,
        }
    )


class PartialResults:
    """The finished conditions of the evaluation with ``key`` in ``RUN/eval_partial/``."""

    def __init__(self, layout: RunLayout, key: str) -> None:
        self.layout = layout
        self.key = key
        self.reused: list[str] = []  # conditions loaded instead of computed, in order
        self._discard_other_keys()

    def _meta(self, path) -> dict[str, str] | None:
        try:
            with safe_open(str(path), framework="pt") as fh:
                return fh.metadata() or {}
        except Exception:  # truncated or not safetensors: never used
            return None

    def _discard_other_keys(self) -> None:
        folder = self.layout.eval_partial
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            meta = self._meta(path) if path.name.endswith(EVAL_PARTIAL_SUFFIX) else None
            if meta is None or meta.get("key") != self.key:
                path.unlink(missing_ok=True)

    def load(self, condition: str) -> tuple[Predictions, StreamStats] | None:
        """The stored results of ``condition``, or None when it has to be computed."""
        path = self.layout.eval_partial_condition(condition)
        meta = self._meta(path) if path.is_file() else None
        if not meta or meta.get("key") != self.key or meta.get("condition") != condition:
            return None
        with safe_open(str(path), framework="pt") as fh:
            names = json.loads(meta.get("scores", "[]"))  # in the order they were computed
            scores = {name: fh.get_tensor(_SCORE + name) for name in names}
            stored = set(fh.keys())  # class_probs: absent from files of older versions
            record = Predictions(
                **{f: fh.get_tensor(f) for f in Predictions.tensor_fields() if f in stored},
                scores=scores,
            )
        seen = json.loads(meta["stats"])
        stats = StreamStats(
            [Broken(**b) for b in seen["broken"]],
            seen["features_seconds"],
            seen["sampling_seconds"],
            seen.get("scores_seconds", 0.0),
        )
        self.reused.append(condition)
        return record, stats

    def save(self, condition: str, record: Predictions, stats: StreamStats) -> None:
        """Store a finished condition (atomically: a kill leaves it whole or absent)."""
        path = self.layout.eval_partial_condition(condition)
        path.parent.mkdir(exist_ok=True)
        tensors = {f: getattr(record, f) for f in record.tensor_fields()}
        tensors.update({f"{_SCORE}{k}": v for k, v in record.scores.items()})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        seen = {
            "broken": [{"path": b.path, "reason": b.reason} for b in stats.broken],
            "features_seconds": stats.features_seconds,
            "sampling_seconds": stats.sampling_seconds,
            "scores_seconds": stats.scores_seconds,
        }
        meta = {"key": self.key, "condition": condition, "stats": json.dumps(seen),
                "scores": json.dumps(list(record.scores))}  # fmt: skip
        tmp = temp_path(path)
        try:
            save_file(tensors, str(tmp), metadata=meta)
            fsync_replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        """Delete every stored condition (the evaluation's files are written)."""
        shutil.rmtree(self.layout.eval_partial, ignore_errors=True)
