"""Checkpoints that load without executing code: tensors in safetensors, everything else in JSON.

Layout inside a run directory (names in :mod:`bnnkit.run.layout`):

- ``model-<tag>.safetensors``: the detector's parameters and buffers (a parameter registered
  twice, as blitz's ``weight_mu`` == ``weight_sampler.mu``, saved once; the same weights give
  the same bytes, :func:`bnnkit.run.partial.save_weights`);
  for ``train.backbone = "lora"``/``"partial"`` only what trains (:mod:`bnnkit.run.partial`);
- ``state-<tag>.safetensors``: the method's extra tensors, optimiser and RNG state;
- ``checkpoint.json``: which files are current, epoch/step, the non-tensor skeleton of the
  state and method facts.

Tensor files get a new tag each time and are written to a temporary name, flushed, fsynced and
renamed; ``checkpoint.json`` is replaced atomically last and is the only pointer to them. A kill
at any instant therefore leaves a ``checkpoint.json`` whose files exist and belong together.

The checkpoint before the current one is kept, whole, in ``checkpoint-previous/`` (its files are
moved there, not copied, once the new ``checkpoint.json`` is in place): when the current one
turns out corrupt (a truncated tensor file, bad JSON, a file missing), :func:`find_checkpoint`
falls back to it with a :class:`~bnnkit.errors.CheckpointWarning`. The cost: two checkpoints on
disk, three while a new one is being written. A full disk while writing removes the partial files,
leaves both kept checkpoints as they were and raises :class:`~bnnkit.errors.DiskFullError` saying
how much space the checkpoint needs.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bnnkit.errors import CheckpointWarning, DiskFullError, UnsafeFileError, UsageError
from bnnkit.run.fileio import (
    atomic_write_text,
    free_bytes,
    fsync_replace,
    human_bytes,
    is_disk_full,
    temp_path,
)
from bnnkit.run.layout import (
    CHECKPOINT_FILE,
    MODEL_GLOB,
    STATE_GLOB,
    RunLayout,
    model_file,
    state_file,
)
from bnnkit.run.partial import load_weights, save_weights

__all__ = [
    "FORMAT_VERSION",
    "CheckpointSet",
    "CorruptCheckpoint",
    "disk_full_error",
    "find_checkpoint",
    "flatten",
    "has_checkpoint",
    "load_checkpoint",
    "model_path",
    "read_meta",
    "refuse_pickles",
    "save_checkpoint",
    "unflatten",
    "verify_safetensors",
    "warn_fallback",
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


class CorruptCheckpoint(Exception):
    """A checkpoint (or one of its files) that cannot be used; the message says why."""


@dataclass(frozen=True)
class CheckpointSet:
    """A verified checkpoint: the directory holding its ``checkpoint.json`` and tensor files (the
    run directory, or ``checkpoint-previous/`` after a fallback), its metadata and raw text."""

    root: Path
    meta: dict[str, Any]
    text: str
    #: why the run's latest checkpoint was skipped (None: this is the latest)
    fallback: str | None = None

    @property
    def files(self) -> dict[str, str]:
        return self.meta["files"]

    def describe(self) -> str:
        pos, step = self.meta.get("position") or {}, self.meta.get("step")
        if self.meta.get("complete"):
            where = "the finished run"
        elif pos.get("step_in_epoch"):
            where = f"{pos.get('phase')} epoch {pos.get('epoch')} step {pos['step_in_epoch']}"
        elif pos:
            where = f"before {pos.get('phase')} epoch {pos.get('epoch')}"
        else:
            where = self.files["model"]
        return where + (f", training step {step}" if step is not None else "")


def verify_safetensors(path: Path) -> list[str]:
    """The tensor names of a safetensors file, after checking that its header parses and the
    file is exactly as long as the header says (nothing is read but the header)."""
    if not path.is_file():
        raise CorruptCheckpoint(f"{path.name} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except Exception as exc:  # SafetensorError: truncated, header too small, bad JSON, ...
        raise CorruptCheckpoint(f"{path.name} is damaged ({exc})") from None


def _tensor_refs(tree: Any) -> set[str]:
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return {tree["__tensor__"]}
        items = tree["__items__"] if set(tree) == {"__items__"} else tree.items()
        return set().union(*(_tensor_refs(v) for _, v in items))
    if isinstance(tree, list):
        return set().union(*(_tensor_refs(v) for v in tree))
    return set()


def _verified(root: Path) -> CheckpointSet:
    """The checkpoint set in ``root``, verified; :class:`CorruptCheckpoint` when it cannot be used.
    A pickle or an unsupported format version is an error, never a reason to fall back."""
    path = root / CHECKPOINT_FILE
    try:
        text = path.read_text(encoding="utf-8")
        meta = json.loads(text)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{CHECKPOINT_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"{CHECKPOINT_FILE} is unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(f"{CHECKPOINT_FILE} holds no JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise UsageError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    files = meta.get("files")
    if (
        not isinstance(files, dict)
        or set(files) != {"model", "state"}
        or any(not isinstance(f, str) or Path(f).name != f for f in files.values())
    ):
        raise CorruptCheckpoint(f"{CHECKPOINT_FILE} has a malformed 'files' entry {files!r}")
    refuse_pickles(root, files)
    verify_safetensors(root / files["model"])
    missing = _tensor_refs(meta.get("state", {})) - set(verify_safetensors(root / files["state"]))
    if missing:
        raise CorruptCheckpoint(f"{files['state']} lacks tensors {sorted(missing)[:3]}")
    return CheckpointSet(root, meta, text)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run has a checkpoint to resume from (the latest or the previous one)."""
    layout = RunLayout(run_dir)
    return layout.checkpoint.is_file() or (layout.previous / CHECKPOINT_FILE).is_file()


def find_checkpoint(run_dir: Path, *, warn: bool = True) -> CheckpointSet:
    """The run's latest checkpoint if it is intact, else the previous one (with a
    :class:`~bnnkit.errors.CheckpointWarning` unless ``warn=False``); a
    :class:`~bnnkit.errors.UsageError` that says why when neither can be used."""
    layout = RunLayout(run_dir)
    try:
        return _verified(layout.root)
    except CorruptCheckpoint as exc:
        reason = str(exc)
    try:
        found = replace(_verified(layout.previous), fallback=reason)
    except CorruptCheckpoint as exc:
        if layout.members_record.is_file() and not layout.checkpoint.exists():
            raise UsageError(  # a whole-detector ensemble stopped before its members combined
                f"{layout.root} is a whole-detector ensemble whose members are not all trained "
                "yet (it has no checkpoint of its own until they are)",
                hint=f"finish it with: bnnkit train --resume {layout.root}",
            ) from None
        kept = "no previous checkpoint is kept" if not layout.previous.is_dir() else str(exc)
        raise UsageError(
            f"the checkpoint of {layout.root} cannot be used: {reason}; {kept}",
            hint="restore the run directory from a backup, or train the recipe again",
        ) from None
    if warn:
        warn_fallback(found)
    return found


def warn_fallback(found: CheckpointSet) -> None:
    """The one warning of a fallback (one line, so that Python shows it once per process)."""
    warnings.warn(
        f"the latest checkpoint of {found.root.parent} cannot be used: {found.fallback}; using "
        f"the previous one ({found.describe()}) from {found.root}",
        CheckpointWarning,
        stacklevel=2,
    )


def _tensor_bytes(tensors: list[Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def disk_full_error(run_dir: Path, what: str, need: int | None) -> DiskFullError:
    """The message of a full disk while writing ``what`` in ``run_dir`` (``need``: bytes)."""
    run_dir = Path(run_dir)
    free = free_bytes(run_dir)
    sizes = [f"it needs about {human_bytes(need)}"] if need else []
    sizes += [f"{human_bytes(free)} free"] if free is not None else []
    if has_checkpoint(run_dir):
        kept, hint = "the last checkpoint written is intact", f"bnnkit train --resume {run_dir}"
    else:
        kept, hint = "no checkpoint was written yet", "bnnkit train again"
    return DiskFullError(
        f"no space left on the device of {run_dir} while writing {what}"
        + (f" ({', '.join(sizes)})" if sizes else "")
        + f"; training stopped and {kept}",
        hint=f"free some space, then continue with: {hint}",
    )


def _fresh_tag(tag: str, taken: set[str]) -> str:
    """``tag``, or ``tag-2``, ``tag-3``, ... when its files are the current checkpoint's."""
    n, out = 1, tag
    while model_file(out) in taken or state_file(out) in taken:
        n += 1
        out = f"{tag}-{n}"
    return out


def _keep_as_previous(layout: RunLayout, old: CheckpointSet) -> None:
    """Move the now superseded checkpoint ``old`` (in the run directory) to ``previous/``. Its
    ``checkpoint.json`` goes last, so a kill half-way leaves ``previous/`` without one (unused)."""
    prev = layout.previous
    prev.mkdir(exist_ok=True)
    (prev / CHECKPOINT_FILE).unlink(missing_ok=True)
    for stale in [*prev.glob(MODEL_GLOB), *prev.glob(STATE_GLOB)]:
        stale.unlink(missing_ok=True)
    for name in old.files.values():
        os.replace(layout.root / name, prev / name)
    atomic_write_text(prev / CHECKPOINT_FILE, old.text)


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any],
    tag: str,
    *,
    only: set[str] | None = None,
) -> None:
    """Save the model, a nested ``state`` (tensors and plain values) and JSON ``meta``; the
    checkpoint it replaces becomes the previous one. A full disk raises
    :class:`~bnnkit.errors.DiskFullError` with nothing of the new checkpoint left behind.
    ``only``: the state-dict keys to save (``lora``/``partial``: what trains; ``meta`` then
    has ``base``: the frozen rest's reference and :func:`bnnkit.run.partial.frozen_digest`)."""
    layout = RunLayout(run_dir)
    try:
        current: CheckpointSet | None = _verified(layout.root)
    except (CorruptCheckpoint, UsageError, UnsafeFileError):
        current = None  # nothing worth keeping: the new checkpoint replaces it
    tag = _fresh_tag(tag, set(current.files.values()) if current else set())
    files = {"model": model_file(tag), "state": state_file(tag)}
    tensors: dict[str, Tensor] = {}
    skeleton = flatten(state, tensors, "s")
    payload = {"format": FORMAT_VERSION, **meta, "files": files, "state": skeleton}
    text = json.dumps(payload, indent=2, sort_keys=True)
    tmp_model, tmp_state = temp_path(layout.model(tag)), temp_path(layout.state(tag))
    try:
        save_weights(model, tmp_model, only)
        save_file(tensors, str(tmp_state))
        fsync_replace(tmp_model, layout.model(tag))
        fsync_replace(tmp_state, layout.state(tag))
        atomic_write_text(layout.checkpoint, text)
    except BaseException as exc:
        # nothing points at the new files yet (checkpoint.json is replaced last)
        for path in (tmp_model, tmp_state, layout.model(tag), layout.state(tag)):
            path.unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            need = _tensor_bytes([*model.state_dict().values(), *tensors.values()]) + len(text)
            raise disk_full_error(layout.root, f"checkpoint {tag}", need) from None
        raise
    if current is not None:
        _keep_as_previous(layout, current)
    for old in layout.tensor_files():
        if old.name not in files.values():
            old.unlink(missing_ok=True)


def _safetensors_header(head: bytes, size: int) -> bool:
    """Whether ``head`` (a file's first 9 bytes) starts a safetensors file: an 8-byte
    little-endian header length that fits the file, then the JSON header's ``{``."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= n <= size - 8


def refuse_pickles(run_dir: Path, files: dict[str, str]) -> None:
    """Refuse checkpoint files that are not safetensors (e.g. a planted pickle)."""
    for name in files.values():
        path = Path(run_dir) / name
        if path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(9)
            if _safetensors_header(head, path.stat().st_size):
                continue  # its first byte may be 0x80 too: the header length's low byte
            if head[:1] == b"\x80" or head[:2] == b"PK":  # pickle protocol 2+ / torch.save zip
                raise UnsafeFileError(
                    f"{path} is a pickle/torch.save file, not safetensors; refusing to load it "
                    "because unpickling can run arbitrary code"
                )


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The metadata of the run's checkpoint (the previous one when the latest is corrupt)."""
    return dict(find_checkpoint(Path(run_dir), warn=False).meta)


def is_complete(run_dir: Path) -> bool:
    """Whether the run's usable checkpoint (the latest, else the previous one) is of the
    finished run; False when it has none that can be used."""
    if not has_checkpoint(run_dir):
        return False
    try:
        return bool(read_meta(run_dir).get("complete"))
    except UsageError:
        return False


def load_checkpoint(
    run_dir: Path,
    model: nn.Module,
    device: torch.device | str = "cpu",
    *,
    found: CheckpointSet | None = None,
):
    """Load weights into ``model``; returns ``(state, meta)`` with the nested state restored.
    ``found``: the checkpoint to load (default :func:`find_checkpoint`, which falls back to
    the previous checkpoint, with a warning, when the latest is corrupt)."""
    found = found or find_checkpoint(Path(run_dir))
    meta = dict(found.meta)
    try:
        load_weights(model, found.root / found.files["model"], meta.get("base"), str(device))
        tensors = load_file(str(found.root / found.files["state"]), device=str(device))
    except UsageError:
        raise
    except Exception as exc:  # a model of other shapes, or damage the header did not show
        raise UsageError(f"cannot load checkpoint in {found.root}: {exc}") from None
    return unflatten(meta.pop("state", {}), tensors), meta


def model_path(run_dir: Path) -> Path:
    """The model file of the run's checkpoint (the previous one when the latest is corrupt)."""
    found = find_checkpoint(Path(run_dir), warn=False)
    return found.root / found.files["model"]
