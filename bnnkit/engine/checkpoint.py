"""Checkpoints that load without executing code: tensors in safetensors, everything else in JSON.

Layout inside a run directory:

- ``model.safetensors``: the detector's parameters and buffers (safetensors' ``save_model``
  handles blitz's aliased parameters, e.g. ``weight_mu`` == ``weight_sampler.mu``);
- ``state.safetensors``: the method's extra tensors, optimiser and RNG state;
- ``checkpoint.json``: epoch, the non-tensor skeleton of the state and method facts.

Every file is written to a temporary name, flushed, fsynced and renamed, and ``checkpoint.json``
goes last, so a kill at any instant leaves the previous complete checkpoint readable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from bnnkit.errors import UnsafeFileError, UsageError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "checkpoint.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    _fsync_replace(tmp, path)


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
    run_dir: Path, model: nn.Module, state: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Save the model, a nested ``state`` (tensors and plain values) and JSON ``meta``."""
    run_dir = Path(run_dir)
    tmp_model = run_dir / f".{MODEL_FILE}.tmp"
    save_model(model, str(tmp_model))
    tensors: dict[str, Tensor] = {}
    skeleton = flatten(state, tensors, "s")
    tmp_state = run_dir / f".{STATE_FILE}.tmp"
    save_file(tensors, str(tmp_state))
    _fsync_replace(tmp_model, run_dir / MODEL_FILE)
    _fsync_replace(tmp_state, run_dir / STATE_FILE)
    payload = {"format": FORMAT_VERSION, **meta, "state": skeleton}
    atomic_write_text(run_dir / META_FILE, json.dumps(payload, indent=2, sort_keys=True))


def refuse_pickles(run_dir: Path) -> None:
    """Refuse a run directory whose checkpoint files are not safetensors (e.g. a planted pickle)."""
    for name in (MODEL_FILE, STATE_FILE):
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
    path = Path(run_dir) / META_FILE
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
    refuse_pickles(run_dir)
    meta = read_meta(run_dir)
    try:
        load_model(model, str(run_dir / MODEL_FILE), strict=True, device=str(device))
        tensors = load_file(str(run_dir / STATE_FILE), device=str(device))
    except Exception as exc:  # safetensors raises plain exceptions on corrupt headers
        raise UsageError(f"cannot load checkpoint in {run_dir}: {exc}") from None
    return unflatten(meta.pop("state", {}), tensors), meta
