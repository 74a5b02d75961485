"""Building a detector and its inference method from a recipe, fresh or from a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bnnkit.data.dataset import Normalisation
from bnnkit.errors import UsageError
from bnnkit.methods.base import InferenceMethod
from bnnkit.model.adapt import ADAPTING, adapt, check_base_file
from bnnkit.model.detector import Detector
from bnnkit.model.head_init import without_init
from bnnkit.plugins import get_registry
from bnnkit.recipe import Recipe, read_run_recipe, validate
from bnnkit.run.checkpoint import find_checkpoint, load_checkpoint, warn_fallback
from bnnkit.run.layout import RunLayout


def resolve_normalisation(recipe: Recipe, backbone_default: Normalisation) -> Normalisation:
    """The recipe's ``data.mean``/``data.std``/``data.interpolation`` where given (validated
    as a group), else the backbone's own."""
    d = recipe.data
    if d.mean is None and d.std is None and d.interpolation is None:
        return backbone_default
    try:
        return Normalisation(
            backbone_default.mean if d.mean is None else tuple(d.mean),
            backbone_default.std if d.std is None else tuple(d.std),
            d.interpolation or backbone_default.interpolation,
            source="recipe",
        )
    except ValueError as exc:
        raise UsageError(f"data: input normalisation: {exc}") from None


def build(recipe: Recipe, num_train: int, *, pretrained: bool | str | None = None):
    """``(detector, method)`` for a recipe. ``pretrained`` overrides the recipe's (a run's
    checkpoint holds the weights, so loading one never needs the hub). The detector's
    ``normalisation`` is the backbone's, or the recipe's override."""
    registry = get_registry()
    model_cfg = recipe.model
    if pretrained is not None:
        model_cfg = without_init(model_cfg.model_copy(  # a run's checkpoint holds the head too
            update={"backbone": model_cfg.backbone.model_copy(update={"pretrained": pretrained})}
        ))  # fmt: skip
    head_name = recipe.head_name(registry)
    method_cls = registry.get("method", recipe.inference.name).obj
    adapting = recipe.train.backbone in ADAPTING
    try:
        # lora/partial: the base is rebuilt from its reference when the run is loaded, so a
        # random init (pretrained = false) is drawn under the recipe's seed, whatever came before
        with torch.random.fork_rng(devices=[], enabled=adapting):
            if adapting:
                torch.manual_seed(recipe.seed)
            detector = method_cls.build_detector(
                model_cfg, head_name, registry, recipe.inference.options()
            )
            adapt(detector, recipe)
    except (TypeError, ValueError) as exc:  # a plugin factory rejecting an option value
        raise UsageError(f"model: {exc}") from None
    detector.normalisation = resolve_normalisation(recipe, detector.normalisation)
    try:
        method: InferenceMethod = method_cls(
            detector.head, num_train=num_train, **recipe.inference.options()
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"inference: {exc}") from None
    return detector, method


def load_run(
    run_dir: Path, device: torch.device, *, inference: dict[str, Any] | None = None
) -> tuple[Recipe, Detector, InferenceMethod, dict[str, Any]]:
    """Everything needed to evaluate or predict, from a run directory alone. The detector's
    input normalisation is the one the checkpoint recorded; a run from before it was recorded
    gets ImageNet's, which it was trained with. ``inference``: method options that override the
    run's recipe (evaluation-time options, e.g. kflaplace's ``prior_precision``).

    A corrupt latest checkpoint falls back to the previous one (with a warning) only when that
    one is of the finished run too; otherwise the error says how to finish the run from it."""
    recipe_file = RunLayout(run_dir).recipe
    raw = read_run_recipe(recipe_file)  # an old run: no calibration split
    if inference:
        raw.setdefault("inference", {}).update(inference)
    recipe = validate(raw, get_registry(), source=str(recipe_file))
    found = find_checkpoint(run_dir, warn=False)
    if found.fallback and not found.meta.get("complete"):
        raise UsageError(
            f"the latest checkpoint of {run_dir} cannot be used: {found.fallback}; the previous "
            f"good one ({found.describe()}) is from before training finished",
            hint=f"finish the run from it with: bnnkit train --resume {run_dir}",
        )
    if found.fallback:
        warn_fallback(found)
    base = found.meta.get("base")  # lora/partial: the checkpoint holds what trained, not the base
    if base:
        check_base_file(base)
    pretrained = base["pretrained"] if base else False
    detector, method = build(recipe, int(found.meta.get("num_train", 1)), pretrained=pretrained)
    state, meta = load_checkpoint(run_dir, detector, device="cpu", found=found)
    method.load_extra_state(state.get("method", {}))
    method.load_extra_meta(meta.get("method_meta", {}))
    detector.normalisation = Normalisation.from_dict(meta.get("normalisation"))
    detector.to(device).eval()
    method.to(device)
    return recipe, detector, method, meta
