"""Frontends: the module in front of the backbone (``[model.frontend]``, plugin kind ``frontend``).

A frontend maps the normalised images ``(B, 3, H, W)`` to an image-like tensor ``(B, C', H', W')``
that the backbone reads: a fixed filter (``laplacian``, ``npr``, ``srm``, ``dct``, ``fft``) or a
learnable module. Its factory is ``factory(in_channels, **options) -> nn.Module``; the module
declares ``out_channels`` (``C'``; taken as ``in_channels`` when it does not), and a backbone is
built with ``in_chans = C'`` whenever ``C'`` is not 3. Parameters and persistent buffers are saved
with the detector (state-dict keys ``frontend.*``); fixed kernels are non-persistent buffers,
rebuilt from the recipe's name and options.

:func:`frontend_key` is what the frozen-feature cache keys on: the name, the options and, for a
frontend with saved tensors, a digest of them (the cache's weight digest covers the backbone and
attention only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, ClassVar

from torch import nn

from bnnkit.options import NoOptions, PluginOptions


class Frontend(nn.Module):
    """An optional base of frontend modules (the built-ins use it): parses the recipe's
    ``[model.frontend]`` options against ``Options`` into ``self.opts`` (a wrong option names its
    key path; the hint names ``plugin_name``) and keeps ``in_channels``, with ``out_channels``
    the same unless the subclass sets another."""

    Options: ClassVar[type[PluginOptions]] = NoOptions
    plugin_name: ClassVar[str] = ""

    def __init__(self, in_channels: int = 3, **options: Any) -> None:
        super().__init__()
        owner = f"frontend '{self.plugin_name or type(self).__name__}'"
        self.opts = self.Options.parse(options, "model.frontend", owner=owner)
        self.in_channels = self.out_channels = in_channels


def make_frontend(
    name: str = "none",
    options: dict[str, Any] | None = None,
    *,
    in_channels: int = 3,
    registry: Any = None,
) -> nn.Module:
    """The frontend module of a registered name with ``options``, tagged with its name and its
    options, defaults filled in (``frontend_name``, ``frontend_options``), for
    :func:`frontend_key`."""
    if registry is None:
        from bnnkit.plugins import get_registry

        registry = get_registry()
    options = dict(options or {})
    entry = registry.get("frontend", name)
    module = entry.obj(in_channels, **options)
    if not isinstance(module, nn.Module):
        raise TypeError(f"frontend '{name}' built a {type(module).__name__}, not an nn.Module")
    with contextlib.suppress(ValueError):  # (a plugin checking its options some other way)
        options = entry.options_model.model_validate(options).model_dump(mode="json")
    module.frontend_name = name
    module.frontend_options = options
    return module


def frontend_channels(module: nn.Module, in_channels: int = 3) -> int:
    """The channel count a frontend gives the backbone (its ``out_channels``)."""
    return int(getattr(module, "out_channels", in_channels))


def frontend_name(module: nn.Module) -> str:
    return str(getattr(module, "frontend_name", type(module).__name__))


def frontend_key(module: nn.Module) -> str:
    """The frontend's identity for the feature cache: ``none`` and an option-less fixed filter
    are their bare name (so ``laplacian`` keys as ``model.input_filter = "laplacian"`` did),
    anything else adds its options as JSON and a SHA-256 of its saved tensors."""
    name = frontend_name(module)
    options = dict(getattr(module, "frontend_options", {}) or {})
    state = module.state_dict()
    if not options and not state:
        return name
    key = name + json.dumps(options, sort_keys=True, default=str)
    if state:
        h = hashlib.sha256()
        for k, t in sorted(state.items()):
            h.update(k.encode())
            h.update(t.detach().cpu().double().contiguous().numpy().tobytes())
        key += "#" + h.hexdigest()[:16]
    return key
