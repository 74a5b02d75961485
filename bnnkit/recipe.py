"""Recipes: TOML files that compose data, model (backbone, attention, head), inference, train, eval.

Validation collects every problem at once, each with its key path, what was expected, and a
close-match suggestion for misspelt keys and plugin names. Plugin options (e.g. ``[model.head]
posterior_rho_init``) are checked against the keyword defaults that the plugin declares.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bnnkit.data.layout import GENERATORS
from bnnkit.errors import PluginError, RecipeError

Scalar = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PluginRef(BaseModel):
    """A plugin by ``name`` plus its options as further keys of the same table."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BackboneRef(PluginRef):
    pretrained: bool | str = False


class DataConfig(_Strict):
    root: str = "data/synth"
    train_generators: list[str] = Field(
        default_factory=lambda: [g for g in GENERATORS if g != "midjourney"]
    )
    holdout: list[str] = Field(default_factory=lambda: ["midjourney"])
    image_size: int = Field(64, ge=16, le=2048)
    preprocess: Literal["crop", "resize"] = "crop"
    train_limit: int = Field(0, ge=0, description="images per generator and class; 0 = all")
    val_limit: int = Field(0, ge=0)
    balance: bool = True
    num_workers: int | Literal["auto"] = "auto"
    mean: list[float] | None = Field(
        None, description="input normalisation mean (R, G, B; 0-1 scale); default: the backbone's"
    )
    std: list[float] | None = Field(
        None, description="input normalisation std (R, G, B; 0-1 scale); default: the backbone's"
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(
        None, description='resize interpolation (preprocess = "resize"); default: the backbone\'s'
    )


class ModelConfig(_Strict):
    backbone: BackboneRef
    attention: PluginRef = Field(default_factory=lambda: PluginRef(name="none"))
    head: PluginRef | None = None
    pool: Literal["avg", "max"] = "avg"


class TrainConfig(_Strict):
    epochs: int = Field(3, ge=1)
    head_epochs: int = Field(0, ge=0, description="head-only phase epochs; 0 = train.epochs")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_scale: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    backbone: Literal["finetune", "frozen"] = "finetune"
    device: str = "auto"
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    log: list[Literal["tensorboard"]] = Field(
        default_factory=list, description="extra loggers beside history.csv"
    )


class EvalConfig(_Strict):
    samples: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=1)
    coverage: float = Field(0.95, gt=0, le=1)


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    inference: PluginRef = Field(default_factory=lambda: PluginRef(name="map"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def head_name(self, registry: Any) -> str:
        if self.model.head is not None:
            return self.model.head.name
        return registry.get("method", self.inference.name).obj.default_head

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(self.model_dump(mode="json"))


# --------------------------------------------------------------------------------------------
def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def parse_value(text: str) -> Any:
    """A ``--set`` value parsed as TOML (``3``, ``1e-3``, ``true``, ``["a","b"]``, ``"x"``);
    anything that is not valid TOML is taken as a bare string (``data.root=data/synth``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a raw recipe dict (in place; returned for chaining)."""
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
            continue
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {key}: '{part}' is a value, not a table")
                break
            node = child
        else:
            node[parts[-1]] = parse_value(value.strip())
    if problems:
        raise RecipeError(problems, source="--set")
    return raw


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RecipeError([f"recipe file '{path}' not found"], source=str(path))
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"not valid TOML: {exc}"], source=str(path)) from None


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at a location in the schema (for did-you-mean on unknown keys)."""
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return []
    return list(model.model_fields) if model is not None else []


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _format_pydantic(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        # pydantic adds the union member's type to the location; keep only real keys
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            parent, key = loc[:-1], str(loc[-1])
            close = difflib.get_close_matches(key, _fields_at(parent), n=1, cutoff=0.6)
            hint = f"; did you mean '{'.'.join([*map(str, parent), close[0]])}'?" if close else ""
            allowed = _fields_at(parent)
            if not close and allowed:
                hint = f"; allowed keys: {', '.join(allowed)}"
            problems.append(f"{path}: unknown key{hint}")
        elif err["type"] == "missing":
            problems.append(f"{path}: required key is missing")
        else:
            problems.append(f"{path}: {err['msg']} (got {_describe(err.get('input'))})")
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


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        # a string default like "auto" also admits a number (e.g. kl_weight = "auto" or 1e-4)
        return isinstance(value, str) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        )
    return isinstance(value, type(default))


def _check_options(path: str, entry: Any, given: dict[str, Any]) -> list[str]:
    problems = []
    accepted = entry.options()
    for key, value in given.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean '{path}.{close[0]}'?"
            elif accepted:
                hint = f"; {entry.kind} '{entry.name}' accepts: {', '.join(sorted(accepted))}"
            else:
                hint = f"; {entry.kind} '{entry.name}' takes no options"
            problems.append(f"{path}.{key}: unknown option{hint}")
        elif not _type_ok(accepted[key], value):
            expected = type(accepted[key]).__name__
            problems.append(
                f"{path}.{key}: expected {expected} like {accepted[key]!r}, got {_describe(value)}"
            )
    return problems


def _check_generators(path: str, names: list[str]) -> list[str]:
    problems = []
    for name in names:
        if name not in GENERATORS:
            close = difflib.get_close_matches(name, GENERATORS, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(GENERATORS)}"
            problems.append(f"{path}: unknown generator '{name}'; {hint}")
    return problems


def _normalisation_problems(data: DataConfig) -> list[str]:
    """``data.mean``/``data.std``: both or neither, 3 values each, on the 0-1 pixel scale."""
    problems = []
    if (data.mean is None) != (data.std is None):
        given, missing = ("mean", "std") if data.std is None else ("std", "mean")
        problems.append(
            f"data.{given}: also give data.{missing} (both or neither; without them the "
            "backbone's own normalisation is used)"
        )
    for key, values, low in (("mean", data.mean, 0.0), ("std", data.std, None)):
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


def _semantic_problems(recipe: Recipe, registry: Any) -> list[str]:
    problems = []
    data = recipe.data
    problems += _check_generators("data.train_generators", data.train_generators)
    problems += _check_generators("data.holdout", data.holdout)
    both = sorted(set(data.train_generators) & set(data.holdout))
    if both:
        problems.append(
            f"data.holdout: {', '.join(both)} also listed in data.train_generators; a held-out "
            "generator must be unseen in training (remove it from one of the two lists)"
        )
    if not data.train_generators:
        problems.append("data.train_generators: needs at least one generator")
    problems += _normalisation_problems(data)

    def lookup(kind: str, path: str, name: str) -> Any:
        try:
            return registry.get(kind, name)
        except PluginError as exc:
            problems.append(f"{path}: {exc.message}")
            return None

    bb = lookup("backbone", "model.backbone.name", recipe.model.backbone.name)
    if bb is not None:
        problems += _check_options("model.backbone", bb, recipe.model.backbone.options())
    att = lookup("attention", "model.attention.name", recipe.model.attention.name)
    if att is not None:
        problems += _check_options("model.attention", att, recipe.model.attention.options())
    method = lookup("method", "inference.name", recipe.inference.name)
    if method is not None:
        problems += _check_options("inference", method, recipe.inference.options())
        head_name = recipe.head_name(registry)
        accepted = method.obj.heads
        if head_name not in accepted:
            problems.append(
                f"model.head.name: {recipe.inference.name} needs a head in "
                f"({', '.join(accepted)}); got {head_name}"
            )
    head_name = recipe.model.head.name if recipe.model.head else None
    if head_name is None and method is not None:
        head_name = method.obj.default_head
    if head_name is not None:
        head = lookup("head", "model.head.name", head_name)
        if head is not None and recipe.model.head is not None:
            problems += _check_options("model.head", head, recipe.model.head.options())
    return problems


def validate(raw: dict[str, Any], registry: Any, source: str = "recipe") -> Recipe:
    """A :class:`Recipe` from a raw dict, or a :class:`RecipeError` listing every problem."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = _format_pydantic(exc)
        # Still check plugin names/options where the structure allowed it, to report everything.
        problems += _partial_semantic(raw, registry, problems)
        raise RecipeError(problems, source=source) from None
    problems = _semantic_problems(recipe, registry)
    if problems:
        raise RecipeError(problems, source=source)
    return recipe


def _partial_semantic(raw: dict[str, Any], registry: Any, already: list[str]) -> list[str]:
    """Plugin-name and generator checks on a raw dict that failed schema validation."""
    extra = []
    bad_paths = {p.split(":", 1)[0] for p in already}

    def name_at(*keys: str) -> str | None:
        node: Any = raw
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node if isinstance(node, str) else None

    for kind, keys in (
        ("backbone", ("model", "backbone", "name")),
        ("attention", ("model", "attention", "name")),
        ("head", ("model", "head", "name")),
        ("method", ("inference", "name")),
    ):
        path = ".".join(keys)
        name = name_at(*keys)
        if name is None or path in bad_paths:
            continue
        try:
            registry.get(kind, name)
        except PluginError as exc:
            extra.append(f"{path}: {exc.message}")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key in ("train_generators", "holdout"):
        if isinstance(data.get(key), list) and f"data.{key}" not in bad_paths:
            extra += _check_generators(f"data.{key}", [g for g in data[key] if isinstance(g, str)])
    tg, ho = data.get("train_generators"), data.get("holdout")
    if isinstance(tg, list) and isinstance(ho, list):
        both = sorted(set(map(str, tg)) & set(map(str, ho)))
        if both:
            extra.append(
                f"data.holdout: {', '.join(both)} also listed in data.train_generators; a "
                "held-out generator must be unseen in training"
            )
    return extra


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


def dump_recipe(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())
