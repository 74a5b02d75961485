"""Recipes: TOML files that compose data, model (backbone, attention, head), inference, train, eval.

Validation collects every problem at once, each with its key path, what was expected, and a
close-match suggestion for misspelt keys and plugin names. Plugin options (e.g. ``[model.head]
posterior_rho_init``) are checked against the plugin's declaration (:mod:`bnnkit.options`).
One path: the schema, then the semantic checks on whatever part of the raw recipe the schema
accepted (:class:`_Raw`), so every problem is reported at once.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from bnnkit.data.layout import GENERATORS
from bnnkit.errors import PluginError, RecipeError
from bnnkit.options import KIND_PATHS, describe_value
from bnnkit.overrides import apply_overrides
from bnnkit.recipe_schema import (
    Recipe,
    fields_at,
    input_filter_frontend,
    model_at,
    resolve_head,
)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RecipeError([f"recipe file '{path}' not found"], source=str(path))
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"not valid TOML: {exc}"], source=str(path)) from None


def _format_pydantic(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        # pydantic adds the union member's type to the location; keep only real keys
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            parent, key = loc[:-1], str(loc[-1])
            close = difflib.get_close_matches(key, fields_at(parent), n=1, cutoff=0.6)
            hint = f"; did you mean '{'.'.join([*map(str, parent), close[0]])}'?" if close else ""
            allowed = fields_at(parent)
            if not close and allowed:
                hint = f"; allowed keys: {', '.join(allowed)}"
            problems.append(f"{path}: unknown key{hint}")
        elif err["type"] == "missing":
            problems.append(f"{path}: required key is missing")
        else:
            problems.append(f"{path}: {err['msg']} (got {describe_value(err.get('input'))})")
    # a union failure reports once per member; keep the first message per path
    seen: set[str] = set()
    unique = []
    for p in problems:
        key = p.split(":", 1)[0]
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


_UNION_TAGS = {"str", "int", "float", "bool", "literal['auto']", "PluginRef", "none"}
_MISSING: Any = object()


class _Raw:
    """A raw recipe read by key path where the schema accepted it: a path with a schema problem
    at, above or below it reads as missing; a key left out reads as the schema's default."""

    def __init__(self, raw: dict[str, Any], problems: list[str]) -> None:
        self.raw = raw
        self.bad = {p.split(":", 1)[0] for p in problems}

    def _is_bad(self, path: str) -> bool:
        return any(b == path or b.startswith(path + ".") or path.startswith(b + ".")
                   for b in self.bad)  # fmt: skip

    def get(self, path: str) -> Any:
        if self._is_bad(path):
            return _MISSING
        node: Any = self.raw
        parts = path.split(".")
        for i, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            model = model_at(tuple(parts[:i]))
            if not isinstance(node, dict) or model is None or part not in model.model_fields:
                return _MISSING
            default = model.model_fields[part].get_default(call_default_factory=True)
            if default is PydanticUndefined:
                return _MISSING
            node = default.model_dump() if isinstance(default, BaseModel) else default
        return node


def _check_generators(path: str, names: list[str]) -> list[str]:
    problems = []
    for name in names:
        if name not in GENERATORS:
            close = difflib.get_close_matches(name, GENERATORS, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(GENERATORS)}"
            problems.append(
                f"{path}: unknown generator '{name}'; {hint} (GenImage's names; another "
                'layout\'s generators need data.layout = "binary" or "manifest")'
            )
    return problems


def _genimage_names(raw: _Raw) -> bool:
    """Whether generator names are GenImage's short names (checked, with "did you mean"):
    ``data.layout = "genimage"``, or ``"auto"`` unless the root exists and is detected as another
    layout. Other layouts name generators as their data does (checked when the data is read)."""
    layout, root = raw.get("data.layout"), raw.get("data.root")
    if layout == "genimage":
        return True
    if layout != "auto" or not isinstance(root, str):
        return False
    from bnnkit.data.layouts import resolve_layout
    from bnnkit.errors import UsageError

    try:
        return resolve_layout(root, "auto") == "genimage"
    except UsageError:
        return True  # no data there (yet): GenImage's names, as before layouts


def _data_problems(raw: _Raw) -> list[str]:
    problems: list[str] = []
    train, holdout = raw.get("data.train_generators"), raw.get("data.holdout")
    check = _check_generators if _genimage_names(raw) else (lambda path, names: [])
    if train is not _MISSING:
        problems += check("data.train_generators", train)
        if not train:
            problems.append("data.train_generators: needs at least one generator")
    if holdout is not _MISSING:
        problems += check("data.holdout", holdout)
    if train is not _MISSING and holdout is not _MISSING:
        both = sorted(set(train) & set(holdout))
        if both:
            problems.append(
                f"data.holdout: {', '.join(both)} also listed in data.train_generators; a "
                "held-out generator must be unseen in training (remove it from one of the lists)"
            )
    mean, std = raw.get("data.mean"), raw.get("data.std")
    if mean is not _MISSING and std is not _MISSING:
        problems += _normalisation_problems(mean, std)
    return problems


def _normalisation_problems(mean: list[float] | None, std: list[float] | None) -> list[str]:
    """``data.mean``/``data.std``: both or neither, 3 values each, on the 0-1 pixel scale."""
    problems = []
    if (mean is None) != (std is None):
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        problems.append(
            f"data.{given}: also give data.{missing} (both or neither; without them the "
            "backbone's own normalisation is used)"
        )
    for key, values, low in (("mean", mean, 0.0), ("std", std, None)):
        if values is None:
            continue
        example = "[0.485, 0.456, 0.406]" if key == "mean" else "[0.229, 0.224, 0.225]"
        if len(values) != 3:
            problems.append(
                f"data.{key}: needs 3 values (R, G, B), e.g. {example}; got {len(values)}"
            )
        elif any(not math.isfinite(v) or v > 1 or (v < low if low is not None else v <= 0)
                 for v in values):  # fmt: skip
            bound = "in [0, 1]" if key == "mean" else "in (0, 1]"
            problems.append(
                f"data.{key}: values must be {bound}, on the 0-1 pixel scale (not 0-255), "
                f"e.g. {example}; got {values}"
            )
    return problems


def _epoch_problems(raw: _Raw, method: Any) -> list[str]:
    """``train.epochs = 0`` exactly for training-free methods (``trains = False``), and for a
    post-hoc method (``post_hoc``) wrapping a released head (``[model.head] init``)."""
    epochs, head_epochs = raw.get("train.epochs"), raw.get("train.head_epochs")
    released = isinstance(raw.get("model.head.init"), str)
    problems = []
    if released and raw.get("model.standardise") is True:
        problems.append(
            "model.standardise: a released head (model.head.init) reads the features as they "
            "were when it was trained: leave model.standardise unset or false"
        )
    if getattr(method.obj, "trains", True):
        if epochs != 0:
            return problems
        if released and getattr(method.obj, "post_hoc", False):
            if head_epochs not in (0, _MISSING):
                problems.append(
                    "train.head_epochs: train.epochs = 0 wraps the released head as it is "
                    "(nothing trains); leave it 0"
                )
            return problems
        if released:
            zero = (
                f"{method.name} cannot wrap a released head without training (train.epochs = 0 "
                "with model.head.init is for post-hoc methods: kflaplace, map)"
            )
        else:
            zero = (
                f"{method.name} needs at least 1 epoch (0 is for training-free methods: wepe, "
                "rigid; or, with [model.head] init = a released head's file, for post-hoc "
                "methods: kflaplace, map)"
            )
        return [*problems, f"train.epochs: {zero}"]
    why = f"{method.name} is training-free (it calibrates on real images, nothing is optimised)"
    if epochs not in (0, _MISSING):
        problems.append(f"train.epochs: {why}; set train.epochs = 0, got {epochs}")
    if head_epochs not in (0, _MISSING):
        problems.append(f"train.head_epochs: {why}; leave it 0")
    return problems


def _plugin_problems(raw: _Raw, registry: Any) -> list[str]:
    """Plugin names, their options against each plugin's declaration, and the head/method
    pairing."""
    problems: list[str] = []

    def lookup(kind: str) -> Any:
        path = KIND_PATHS[kind]
        name = raw.get(f"{path}.name")
        if not isinstance(name, str):
            return None
        try:
            entry = registry.get(kind, name)
        except PluginError as exc:
            problems.append(f"{path}.name: {exc.message}")
            return None
        table = raw.get(path)
        if isinstance(table, dict):
            skip = {"name", "pretrained"} if kind == "backbone" else {"name"}
            given = {k: v for k, v in table.items() if k not in skip}
            problems.extend(entry.options_model.check(given, path, owner=entry.owner)[1])
        return entry

    lookup("frontend")
    lookup("backbone")
    lookup("attention")
    method = lookup("method")
    if method is not None:
        problems += _epoch_problems(raw, method)
    given_head = raw.get("model.head.name")
    if method is not None and (given_head is _MISSING or isinstance(given_head, str)):
        head = resolve_head(None if given_head is _MISSING else given_head, method)
        if head not in method.obj.heads:
            problems.append(
                f"model.head.name: {method.name} needs a head in "
                f"({', '.join(method.obj.heads)}); got {head}"
            )
        if given_head is _MISSING:
            try:
                registry.get("head", head)
            except PluginError as exc:
                problems.append(f"model.head.name: {exc.message}")
    if isinstance(given_head, str):
        lookup("head")
    return problems


def validate(raw: dict[str, Any], registry: Any, source: str = "recipe") -> Recipe:
    """A :class:`Recipe` from a raw dict, or a :class:`RecipeError` listing every problem:
    the schema's, then the semantic checks on every part the schema accepted."""
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(raw)
        problems: list[str] = []
    except ValidationError as exc:
        problems = _format_pydantic(exc)
    checked = _Raw(raw, problems)
    problems += _data_problems(checked) + _plugin_problems(checked, registry)
    if problems or recipe is None:
        raise RecipeError(problems, source=source)
    return recipe


def load_recipe(
    recipe: str | Path, overrides: list[str] | None = None, registry: Any = None
) -> Recipe:
    """Read (a path or a bundled recipe's name), override and validate a recipe.
    The recipe's name defaults to the file stem."""
    from bnnkit.plugins import get_registry
    from bnnkit.recipes_bundled import resolve

    source, text = resolve(str(recipe))
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"not valid TOML: {exc}"], source=source) from None
    raw.setdefault("name", Path(str(recipe)).name.removesuffix(".toml"))
    apply_overrides(raw, list(overrides or []))
    return validate(raw, registry or get_registry(), source=source)


#: keys a run's recipe.toml lacks when it was written before they existed, with the value that
#: keeps the behaviour it was made with (no calibration split: post-hoc fits on seen val)
RUN_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {"data": {"calibration": 0.0}}


def read_run_recipe(path: str | Path) -> dict[str, Any]:
    """A run's resolved ``recipe.toml`` as a dict, :data:`RUN_RECIPE_DEFAULTS` filled in, and
    an old run's ``model.input_filter`` read as its frontend (no deprecation warning: the run's
    recipe is not the user's to edit)."""
    raw = read_toml(path)
    if isinstance(raw.get("model"), dict):
        raw["model"] = input_filter_frontend(raw["model"])
    for table, keys in RUN_RECIPE_DEFAULTS.items():
        section = raw.setdefault(table, {})
        for key, value in keys.items():
            section.setdefault(key, value)
    return raw


def load_run_recipe(path: str | Path, registry: Any = None) -> Recipe:
    """The validated recipe of a run (its ``recipe.toml``; see :func:`read_run_recipe`)."""
    from bnnkit.plugins import get_registry

    raw = read_run_recipe(path)
    raw.setdefault("name", Path(path).parent.name)
    return validate(raw, registry or get_registry(), source=str(path))


def dump_recipe(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())
