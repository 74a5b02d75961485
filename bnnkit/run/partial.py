"""Checkpoints that hold part of a model (``train.backbone = "lora"`` / ``"partial"``): the
trained tensors are saved, the frozen rest (the *base*) is rebuilt by the caller and checked
against the digest recorded at training time."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from bnnkit.errors import UsageError


def frozen_digest(model: nn.Module, saved: set[str]) -> str:
    """sha256 of the model's state-dict tensors *not* in ``saved`` (names, dtypes, shapes and
    bytes, in name order): the frozen base of a checkpoint that holds only ``saved``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name in saved:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return h.hexdigest()


def load_part(model: nn.Module, path: Path, base: dict[str, Any], device: str) -> None:
    """Load a checkpoint that holds part of ``model`` (see ``save_checkpoint(only=...)``) and
    check that the rest, the base the caller rebuilt, is the one it was trained on."""
    part = load_file(str(path), device=device)
    result = model.load_state_dict(part, strict=False)
    if result.unexpected_keys:
        raise UsageError(
            f"cannot load checkpoint {path}: keys the model lacks {result.unexpected_keys[:3]}"
        )
    if frozen_digest(model, set(part)) != base.get("digest"):
        src = base.get("pretrained")
        how = {False: f"timm's init under seed {base.get('init_seed')}", True: "the hub weights"}
        raise UsageError(
            f"the base weights rebuilt for {path.parent} ({base.get('backbone')}: "
            f"{how.get(src, src) if isinstance(src, bool) else src}) differ from those it was "
            f"trained on; its checkpoint holds only the {base.get('mode')} weights",
            hint="use the torch/timm versions (and weights) the run was trained with",
        )


def _alias_key(t: torch.Tensor) -> tuple | None:
    """What two names of one tensor share (the same view of the same memory); None for a
    tensor without memory of its own (empty, meta), which is nobody's alias."""
    if t.device.type == "meta" or t.numel() == 0:
        return None
    ptr = t.untyped_storage().data_ptr()
    return (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def save_weights(model: nn.Module, path: Path, only: set[str] | None) -> None:
    """The model's state dict (``only``: those keys) to a safetensors file, the same bytes for
    the same weights. A tensor registered under several names (blitz's ``weight_mu`` is also
    ``weight_sampler.mu``) is saved once, under its first name in sorted order (the name
    safetensors' ``save_model`` keeps; ``load_model`` restores the others). Written by hand
    because ``save_model`` also records each dropped alias in the header's metadata, which the
    Rust writer serialises in a random order per process: identical weights got another
    sha256 (``model_sha256``) on every save."""
    if only is None:
        state = model.state_dict()
        first: dict[Any, str] = {}
        for name in sorted(state):
            first.setdefault(_alias_key(state[name]) or name, name)
        kept = {name: state[name].detach().cpu().contiguous() for name in first.values()}
        try:
            save_file(kept, str(path))
        except (ValueError, RuntimeError):  # memory shared as other views: safetensors' way
            save_model(model, str(path))
        return
    sd = model.state_dict()  # copies: aliased parameters are then separate tensors
    save_file({k: sd[k].detach().cpu().clone() for k in sorted(only)}, str(path))


def load_weights(model: nn.Module, path: Path, base: dict[str, Any] | None, device: str) -> None:
    """Load a model file: all of the model, or (``base``: the checkpoint's reference) part."""
    if base:
        load_part(model, path, base, device)
    else:
        load_model(model, str(path), strict=True, device=device)
