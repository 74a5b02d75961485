"""Building a detector and its inference method from a recipe, fresh or from a run directory,
and ``bnnkit recipes validate``'s last step (:func:`check_build`): construct every plugin of a
valid recipe, so values that only construction rejects are reported before a training starts.

That check is cheap by construction: the backbone is built on the ``meta`` device (no memory, no
weights; ``pretrained`` is forced to false, so nothing is ever fetched), which still gives its
real ``out_channels``; the attention block, head and method are built for real at those
dimensions (small), because some of them draw numbers at construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bnnkit.data.dataset import Normalisation
from bnnkit.errors import BnnkitError, RecipeError, UsageError
from bnnkit.methods.base import InferenceMethod
from bnnkit.model.adapt import ADAPTING, adapt, check_base_file
from bnnkit.model.detector import Detector, head_classes, select_pool
from bnnkit.model.head_init import without_init
from bnnkit.options import KIND_PATHS
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


def num_classes(recipe: Recipe) -> int:
    """The head's classes: 2 (real, fake), or 1 + G with ``data.labels = "generator"``."""
    if recipe.data.labels == "generator":
        return 1 + len(recipe.data.train_generators)
    return 2


def check_classes(recipe: Recipe, detector: Detector) -> None:
    """Refuse a method whose head is not the (1 + G)-class one ``data.labels`` asks for."""
    want = num_classes(recipe)
    got = getattr(detector.head, "num_classes", want)
    if got != want:
        raise UsageError(
            f'data.labels = "{recipe.data.labels}" needs a {want}-class head, and method '
            f"'{recipe.inference.name}' builds a {got}-class one (training-free methods only "
            "tell real from fake)",
            hint='use a trained method (map, bbb, kflaplace, ...) or data.labels = "binary"',
        )


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
    if num_classes(recipe) != 2 and not method_cls.trains:
        raise UsageError(
            f'data.labels = "generator" needs a trained (1 + G)-class head, and '
            f"'{recipe.inference.name}' is training-free: it only tells real from fake (2-class)",
            hint='use a trained method (map, bbb, kflaplace, ...) or data.labels = "binary"',
        )
    adapting = recipe.train.backbone in ADAPTING
    try:
        # lora/partial: the base is rebuilt from its reference when the run is loaded, so a
        # random init (pretrained = false) is drawn under the recipe's seed, whatever came before
        with torch.random.fork_rng(devices=[], enabled=adapting):
            if adapting:
                torch.manual_seed(recipe.seed)
            with head_classes(num_classes(recipe)):
                detector = method_cls.build_detector(
                    model_cfg, head_name, registry, recipe.inference.options()
                )
            adapt(detector, recipe)
    except (TypeError, ValueError) as exc:  # a plugin factory rejecting an option value
        raise UsageError(f"model: {exc}") from None
    check_classes(recipe, detector)
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


def ensemble_size(recipe: Recipe) -> int:
    """M when the recipe's method trains M whole detectors, else 0."""
    method_cls = get_registry().get("method", recipe.inference.name).obj
    hook = getattr(method_cls, "detector_members", None)
    return int(hook(recipe.inference.options())) if hook is not None else 0


def check_recipe(recipe: Recipe) -> None:
    """Refuse a whole-detector ensemble whose members could not differ in their backbones."""
    if recipe.train.backbone == "frozen" and recipe.model.backbone.pretrained is not False:
        raise UsageError(
            'train.backbone: "frozen" with pretrained weights gives every member of '
            'inference.members = "detectors" the same backbone',
            hint='set train.backbone = "finetune", or model.backbone.pretrained = false (random '
            "backbones that differ), or inference.members = <int> (M heads on one backbone)",
        )


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
