"""``bnnkit recipes validate``'s last step: construct every plugin of a valid recipe, so values
that only construction rejects are reported before a training starts.

Cheap by construction: the backbone is built on the ``meta`` device (no memory, no weights;
``pretrained`` is forced to false, so nothing is ever fetched), which still gives its real
``out_channels``; the attention block, head and method are built for real at those dimensions
(small), because some of them draw numbers at construction.
"""

from __future__ import annotations

from typing import Any

import torch

from bnnkit.errors import BnnkitError, RecipeError
from bnnkit.model.detector import select_pool
from bnnkit.options import KIND_PATHS
from bnnkit.recipe import Recipe


def _message(path: str, exc: Exception) -> str:
    text = exc.message if isinstance(exc, BnnkitError) else str(exc)
    return text if text.startswith(path) else f"{path}: {text}"


def construction_problems(recipe: Recipe, registry: Any, *, num_train: int = 2) -> list[str]:
    """One line per plugin whose construction fails (key path first), in build order."""
    model = recipe.model
    bb = model.backbone
    try:
        with torch.device("meta"):
            backbone = registry.get("backbone", bb.name).obj(
                bb.name, pretrained=False, **bb.options()
            )
            select_pool(backbone, model.pool)  # cls may project (a CLIP image tower)
        channels = int(backbone.out_channels)
    except Exception as exc:  # any failure is the plugin's message to the user
        return [_message(KIND_PATHS["backbone"], exc)]
    problems = []
    try:
        registry.get("attention", model.attention.name).obj(channels, **model.attention.options())
    except Exception as exc:
        problems.append(_message(KIND_PATHS["attention"], exc))
    try:
        head_opts = model.head.options() if model.head is not None else {}
        head = registry.get("head", recipe.head_name(registry)).obj(channels, 2, **head_opts)
    except Exception as exc:
        return [*problems, _message(KIND_PATHS["head"], exc)]
    try:
        method_cls = registry.get("method", recipe.inference.name).obj
        method_cls(head, num_train=num_train, **recipe.inference.options())
    except Exception as exc:
        problems.append(_message(KIND_PATHS["method"], exc))
    from bnnkit.engine.train.members import check_recipe, ensemble_size

    try:  # what training refuses across keys (a whole-detector ensemble's backbones)
        if ensemble_size(recipe):
            check_recipe(recipe)
    except BnnkitError as exc:
        problems.append(exc.message)
    return problems


def check_build(recipe: Recipe, registry: Any, source: str = "recipe") -> None:
    """Raise :class:`RecipeError` (exit code 2) listing every construction problem."""
    problems = construction_problems(recipe, registry)
    if problems:
        raise RecipeError(problems, source=source)
