"""A linear head's initial weights from a released detector's file (``[model.head] init``).

The file is ``.safetensors``, or a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``)
read with ``torch.load(weights_only=True)``: tensors and plain containers only, never an
arbitrary pickle (a file that needs one is refused with :class:`~bnnkit.errors.UnsafeFileError`).
Nested dictionaries are flattened to dotted keys, and the usual wrappers are looked through: a
``model`` / ``state_dict`` / ``net`` level and DataParallel's ``module.`` prefix.

``init_keys`` says where the layer's weight and bias are (:data:`KEY_MAPS`):

- ``univfd``: UnivFD's ``fc_weights.pth`` (``weight [1, 768]``, ``bias [1]``, or the same under
  ``fc.``);
- ``resnet_fc``: a CNNSpot / NPR ResNet-50 checkpoint's ``fc.weight [1, 2048]``, ``fc.bias [1]``;
- ``auto`` (default): the one ``<prefix>weight``/``<prefix>bias`` pair whose weight is
  ``[1 or num_classes, in_features]``;
- any other value: that prefix, e.g. ``"head.fc"`` reads ``head.fc.weight`` and ``head.fc.bias``.

A one-logit layer (logit ``z`` for "fake", ``p(fake) = sigmoid(z)``) becomes the equivalent
two-logit layer ``(-z/2, z/2)``, whose softmax gives ``sigmoid(z)`` exactly (the convention of
the ``wepe``/``rigid`` heads). A two-logit layer is taken as it is, class 1 = fake.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.errors import UnsafeFileError, UsageError

#: ``init_keys`` values with a fixed key layout: the (weight, bias) key pairs tried, in order
KEY_MAPS: dict[str, tuple[tuple[str, str], ...]] = {
    "univfd": (("weight", "bias"), ("fc.weight", "fc.bias")),
    "resnet_fc": (("fc.weight", "fc.bias"),),
}
#: container levels looked through (``{"model": state_dict, "optimizer": ...}``: the first found)
WRAPPERS = ("model", "state_dict", "net", "module")
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def _flatten(tree: object, prefix: str = "") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    if isinstance(tree, Tensor):
        out[prefix.rstrip(".")] = tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    return out


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a weights file, by dotted key, wrappers looked through (see the
    module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(
            f"model.head.init: weights file '{path}' does not exist",
            hint=f"give a {' / '.join(SUFFIXES)} file",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tree: object = load_file(str(path), device="cpu")
    else:
        try:
            tree = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeFileError(
                f"model.head.init: {path} needs an arbitrary pickle to load (only tensors and "
                f"plain containers are read: torch.load(weights_only=True)): {exc}"
            ) from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise UsageError(f"model.head.init: cannot read {path} ({exc})") from None
    for _ in range(3):  # {"model": state_dict, "optimizer": ..., "epoch": 7} and the like
        inner = next((tree[w] for w in WRAPPERS if isinstance(tree, dict)
                      and isinstance(tree.get(w), dict)), None)  # fmt: skip
        if inner is None:
            break
        tree = inner
    tensors = _flatten(tree)
    if tensors and all(k.startswith("module.") for k in tensors):  # DataParallel's prefix
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _pair(
    tensors: dict[str, Tensor], keys: str, in_features: int, num_classes: int
) -> tuple[str, str]:
    """The (weight key, bias key) of the layer ``keys`` names in ``tensors``."""
    if keys in KEY_MAPS:
        for pair in KEY_MAPS[keys]:
            if all(k in tensors for k in pair):
                return pair
        wanted = " or ".join(f"{w}/{b}" for w, b in KEY_MAPS[keys])
        raise _layout_error(tensors, f"init_keys = '{keys}' reads {wanted}")
    if keys != "auto":
        prefix = keys.rstrip(".") + "."
        pair = (f"{prefix}weight", f"{prefix}bias")
        if all(k in tensors for k in pair):
            return pair
        raise _layout_error(tensors, f"init_keys = '{keys}' reads {pair[0]}/{pair[1]}")
    layers = [
        (k, k[: -len("weight")] + "bias")
        for k, w in tensors.items()
        if (k == "weight" or k.endswith(".weight"))
        and w.ndim == 2
        and w.shape[0] in (1, num_classes)
        and k[: -len("weight")] + "bias" in tensors
    ]
    fitting = [pair for pair in layers if tensors[pair[0]].shape[1] == in_features]
    for found in (fitting, layers):  # one layer of another width: released_head says so
        if len(found) == 1:
            return found[0]
    what = (
        f"no weight/bias pair of shape [1 or {num_classes}, {in_features}]"
        if not fitting
        else (f"several candidate layers ({', '.join(w for w, _ in fitting)})")
    )
    raise _layout_error(tensors, f"init_keys = 'auto' found {what}")


def _layout_error(tensors: dict[str, Tensor], why: str) -> UsageError:
    shown = ", ".join(f"{k} {list(v.shape)}" for k, v in list(tensors.items())[:12])
    more = f" and {len(tensors) - 12} more" if len(tensors) > 12 else ""
    return UsageError(
        f"model.head.init: {why}; the file has {shown or 'no tensors'}{more}",
        hint="set [model.head] init_keys to univfd, resnet_fc, auto or the layer's key prefix",
    )


def two_logit(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A one-logit layer ``z = w.x + b`` as the two-logit layer ``(-z/2, z/2)``
    (``softmax(...)[1] = sigmoid(z)``); a two-logit layer unchanged."""
    if weight.shape[0] == 1:
        return torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return weight, bias


def released_head(
    path: str | Path, keys: str, in_features: int, num_classes: int = 2
) -> tuple[Tensor, Tensor]:
    """The (weight ``[num_classes, in_features]``, bias ``[num_classes]``) of a released
    detector's head file, one-logit layers made two-logit (see the module docstring)."""
    tensors = read_tensors(path)
    wkey, bkey = _pair(tensors, keys, in_features, num_classes)
    weight, bias = tensors[wkey].detach().float(), tensors[bkey].detach().float().flatten()
    rows = weight.shape[0] if weight.ndim == 2 else -1
    if weight.ndim != 2 or rows not in (1, num_classes) or bias.numel() != rows:
        raise UsageError(
            f"model.head.init: {wkey} {list(weight.shape)} / {bkey} {list(bias.shape)} is not a "
            f"linear layer of 1 or {num_classes} outputs"
        )
    if weight.shape[1] != in_features:
        raise UsageError(
            f"model.head.init: {wkey} {list(weight.shape)} reads {weight.shape[1]} features; "
            f"this detector's head gets {in_features}",
            hint="the backbone and pool must give the features the released head was trained "
            "on (UnivFD: a CLIP ViT-L/14 with pool = 'cls', 768; a ResNet-50: 2048)",
        )
    return two_logit(weight, bias)


@torch.no_grad()
def init_linear(linear: nn.Linear, path: str | Path, keys: str = "auto") -> None:
    """Copy a released head's weights (:func:`released_head`) into ``linear``."""
    weight, bias = released_head(path, keys, linear.in_features, linear.out_features)
    if linear.bias is None:
        raise UsageError("model.head.init: the head's linear layer has no bias")
    linear.weight.copy_(weight.to(linear.weight.dtype))
    linear.bias.copy_(bias.to(linear.bias.dtype))


def without_init(model_cfg: Any) -> Any:
    """A validated ``model`` recipe section without ``[model.head] init`` (for loading a run:
    its checkpoint holds the head, so the released file is not read again, nor needed)."""
    head = model_cfg.head
    if head is None or head.options().get("init") is None:
        return model_cfg
    plain = type(head).model_validate({**head.model_dump(), "init": None})
    return model_cfg.model_copy(update={"head": plain})
