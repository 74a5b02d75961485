"""Checkpoints that load without executing code: tensors in safetensors, everything else in JSON.

Layout inside a run directory (names in :mod:`bnnkit.run.layout`):

- ``model-<tag>.safetensors``: the detector's parameters and buffers (safetensors'
  ``save_model`` handles blitz's aliased parameters, e.g. ``weight_mu`` == ``weight_sampler.mu``);
- ``state-<tag>.safetensors``: the method's extra tensors, optimiser and RNG state;
- ``checkpoint.json``: which files are current, epoch/step, the non-tensor skeleton of the
  state and method facts.

Tensor files get a new tag each time and are written to a temporary name, flushed, fsynced and
renamed; ``checkpoint.json`` is replaced atomically last and is the only pointer to them, and
files of older tags are deleted only after it. A kill at any instant therefore leaves a
``checkpoint.json`` whose files exist and belong together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from bnnkit.errors import UnsafeFileError, UsageError
from bnnkit.run.fileio import atomic_write_text, fsync_replace, temp_path
from bnnkit.run.layout import CHECKPOINT_FILE, RunLayout, model_file, state_file

__all__ = [
    "FORMAT_VERSION",
    "flatten",
    "load_checkpoint",
    "model_path",
    "read_meta",
    "refuse_pickles",
    "save_checkpoint",
    "unflatten",
]

FORMAT_VERSION = 1


def flatten(tree: Any, tensors: dict[str, Tensor], prefix: str) -> Any:
    """Replace tensors in a nested dict/list by references, collecting them in ``tensors``."""
    if isinstance(tree, Tensor):
        key = prefix
        tensors[key] = tree.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {k: flatten(v, tensors, f"{prefix}.{k}") for k, v in tree.items()}
        return {"__items__": [[k, flatten(v, tensors, f"{prefix}.{k}")] for k, v in tree.items()]}
    if isinstance(tree, list | tuple):
        return [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise TypeError(f"cannot checkpoint value of type {type(tree).__name__} at {prefix}")


def unflatten(tree: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__items__"}:
            return {k: unflatten(v, tensors) for k, v in tree["__items__"]}
        return {k: unflatten(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


def save_checkpoint(
    run_dir: Path, model: nn.Module, state: dict[str, Any], meta: dict[str, Any], tag: str
) -> None:
    """Save the model, a nested ``state`` (tensors and plain values) and JSON ``meta``."""
    layout = RunLayout(run_dir)
    files = {"model": model_file(tag), "state": state_file(tag)}
    tmp_model = temp_path(layout.model(tag))
    save_model(model, str(tmp_model))
    tensors: dict[str, Tensor] = {}
    skeleton = flatten(state, tensors, "s")
    tmp_state = temp_path(layout.state(tag))
    save_file(tensors, str(tmp_state))
    fsync_replace(tmp_model, layout.model(tag))
    fsync_replace(tmp_state, layout.state(tag))
    payload = {"format": FORMAT_VERSION, **meta, "files": files, "state": skeleton}
    atomic_write_text(layout.checkpoint, json.dumps(payload, indent=2, sort_keys=True))
    for old in layout.tensor_files():
        if old.name not in files.values():
            old.unlink(missing_ok=True)


def refuse_pickles(run_dir: Path, files: dict[str, str]) -> None:
    """Refuse checkpoint files that are not safetensors (e.g. a planted pickle)."""
    for name in files.values():
        path = Path(run_dir) / name
        if path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(2)
            if head[:1] == b"\x80" or head == b"PK":  # pickle protocol 2+ / torch.save zip
                raise UnsafeFileError(
                    f"{path} is a pickle/torch.save file, not safetensors; refusing to load it "
                    "because unpickling can run arbitrary code"
                )


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = RunLayout(run_dir).checkpoint
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read checkpoint metadata {path}: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise UsageError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def load_checkpoint(run_dir: Path, model: nn.Module, device: torch.device | str = "cpu"):
    """Load weights into ``model``; returns ``(state, meta)`` with the nested state restored."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    files = meta.get("files") or {}
    if set(files) != {"model", "state"} or any(Path(f).name != f for f in files.values()):
        raise UsageError(f"{run_dir / CHECKPOINT_FILE}: malformed 'files' entry {files!r}")
    refuse_pickles(run_dir, files)
    try:
        load_model(model, str(run_dir / files["model"]), strict=True, device=str(device))
        tensors = load_file(str(run_dir / files["state"]), device=str(device))
    except Exception as exc:  # safetensors raises plain exceptions on corrupt headers
        raise UsageError(f"cannot load checkpoint in {run_dir}: {exc}") from None
    return unflatten(meta.pop("state", {}), tensors), meta


def model_path(run_dir: Path) -> Path:
    """The current model file of a run (named by its checkpoint metadata)."""
    files = read_meta(Path(run_dir)).get("files") or {}
    if "model" not in files:
        raise UsageError(f"{Path(run_dir) / CHECKPOINT_FILE} names no model file")
    return Path(run_dir) / Path(files["model"]).name
