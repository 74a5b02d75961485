"""Typed plugin options: each plugin declares its recipe options once, as a pydantic model.

A declaration is a subclass of :class:`PluginOptions`; each field is one recipe key with its type,
default, range (``Field(ge=..., gt=..., le=..., lt=...)``), choices (``Literal[...]``) and a
one-line help (``Field(description=...)``)::

    class Options(PluginOptions):
        smoothing: float = Field(0.1, ge=0, lt=1, description="label-smoothing weight")

Recipe validation, ``bnnkit plugins``, the options tables of ``docs/plugins.md`` and the plugin's
constructor all read that one model. A method class or a head/attention class carries it as its
``Options`` attribute; a factory function passes it to ``register(..., options=Model)``. The
constructor validates its keyword options with :meth:`PluginOptions.parse`, so a plugin built
from Python (tests, notebooks) gets the same checks and messages as a recipe.

Plugins written before declarations existed keep working: the options of a factory are read
from its keyword-only parameters with defaults, those of a method from a class attribute
``options = {name: default}``, with types inferred from the defaults (:func:`options_model`).
"""

from __future__ import annotations

import difflib
import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticUndefined

from bnnkit.errors import UsageError

__all__ = [
    "KIND_PATHS",
    "Field",
    "NoOptions",
    "OptionInfo",
    "OptionsError",
    "PluginOptions",
    "describe",
    "options_model",
]

#: the recipe table each plugin kind's options live in
KIND_PATHS: dict[str, str] = {
    "frontend": "model.frontend",
    "backbone": "model.backbone",
    "attention": "model.attention",
    "head": "model.head",
    "method": "inference",
    "score": "score",  # not a recipe table: ``bnnkit evaluate --score NAME`` (Score.__init__)
}


class OptionsError(UsageError, ValueError):
    """Option values a plugin's declaration rejects; ``problems`` holds one line per key.

    A :class:`~bnnkit.errors.UsageError` (the CLI prints it, exit code 2) and a ``ValueError``
    (what constructors raised for bad values before declarations existed)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def under(self, path: str, new: str) -> OptionsError:
        """The same problems with the key path ``path`` named ``new`` (e.g. ``score`` ->
        ``score.knn``: a plugin checks its options without knowing the name it was chosen by)."""

        def moved(line: str) -> str:
            if line == path or line.startswith((f"{path}.", f"{path}:")):
                line = new + line[len(path) :]
            return line.replace(f"'{path}.", f"'{new}.")

        return OptionsError([moved(p) for p in self.problems])


class PluginOptions(BaseModel):
    """Base of a plugin's option declaration. Strict: no unknown keys, no silent conversions
    (an int is accepted for a float, nothing else), frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def check(
        cls, given: Mapping[str, Any], path: str, *, owner: str = ""
    ) -> tuple[PluginOptions | None, list[str]]:
        """``(options, [])``, or ``(None, problems)`` with each problem's key path under
        ``path`` (e.g. ``inference.prior_sigma``); ``owner`` names the plugin in hints."""
        try:
            return cls.model_validate(dict(given)), []
        except ValidationError as exc:
            return None, _problems(cls, exc, given, path, owner)

    @classmethod
    def parse(cls, given: Mapping[str, Any], path: str, *, owner: str = "") -> Any:
        """The validated options, or :class:`OptionsError`."""
        options, problems = cls.check(given, path, owner=owner)
        if problems:
            raise OptionsError(problems)
        return options


class NoOptions(PluginOptions):
    """A plugin that takes no options."""


# -- error messages -------------------------------------------------------------------------------
def describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bounds(metadata: list[Any]) -> list[str]:
    out = []
    for m in metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                out.append(f"{op} {getattr(m, attr)}")
    return out


def type_text(tp: Any, metadata: list[Any] | None = None) -> str:
    """A type with its constraints in words: ``float > 0``, ``'auto' or float >= 0``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        meta: list[Any] = []
        for m in args[1:]:
            meta.extend(getattr(m, "metadata", None) or [m])
        return type_text(args[0], [*(metadata or []), *meta])
    if origin is Literal:
        text = " or ".join(repr(a) for a in args)
    elif origin in (Union, types.UnionType):
        text = " or ".join(type_text(a) for a in args if a is not type(None))
        text += " or none" if type(None) in args else ""
    elif origin in (list, tuple):
        text = f"list of {type_text(args[0])}" if args else "list"
    elif tp is Any:
        text = "any"
    else:
        text = getattr(tp, "__name__", str(tp))
    bounds = _bounds(metadata or [])
    return f"{text} {' and '.join(bounds)}" if bounds else text


def field_type_text(model: type[PluginOptions], name: str) -> str:
    info = model.model_fields[name]
    return type_text(info.annotation, list(info.metadata))


def _choices(model: type[PluginOptions], key: str) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` option, else None."""
    annotation = model.model_fields[key].annotation
    return get_args(annotation) if get_origin(annotation) is Literal else None


def _problems(
    model: type[PluginOptions],
    exc: ValidationError,
    given: Mapping[str, Any],
    path: str,
    owner: str,
) -> list[str]:
    accepted = list(model.model_fields)
    problems: list[str] = []
    done: set[str] = set()
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        if key in done:
            continue  # a union reports once per member; one line per key
        done.add(key)
        where = f"{path}.{key}" if key else path
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean '{path}.{close[0]}'?"
            elif accepted:
                hint = f"; {owner or 'it'} accepts: {', '.join(sorted(accepted))}"
            else:
                hint = f"; {owner or 'it'} takes no options"
            problems.append(f"{where}: unknown option{hint}")
        elif err["type"] in ("value_error", "assertion_error") or not key:
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            got = f" (got {describe_value(given[key])})" if key in given else ""
            problems.append(f"{where}: {msg}{got}")
        elif (choices := _choices(model, key)) is not None:
            value = given.get(key)
            close = difflib.get_close_matches(str(value), map(str, choices), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "choose one of"
            listed = ", ".join(repr(c) for c in choices)
            problems.append(f"{where}: unknown {key} {describe_value(value)}; {hint} ({listed})")
        else:
            expected = field_type_text(model, key)
            problems.append(f"{where}: expected {expected}, got {describe_value(given.get(key))}")
    return problems


# -- what a declaration says ----------------------------------------------------------------------
@dataclass(frozen=True)
class OptionInfo:
    """One option as ``bnnkit plugins`` and the docs show it."""

    name: str
    type: str
    default: Any
    help: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "help": self.help}


def describe(model: type[PluginOptions]) -> list[OptionInfo]:
    out = []
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        out.append(
            OptionInfo(
                name,
                field_type_text(model, name),
                None if default is PydanticUndefined else default,
                info.description or "",
            )
        )
    return out


def defaults(model: type[PluginOptions]) -> dict[str, Any]:
    return {o.name: o.default for o in describe(model)}


# -- plugins without a declaration ----------------------------------------------------------------
def _inferred_type(default: Any) -> Any:
    """The old rule: a bool needs a bool, an int an int, a float takes ints too, a str default
    also admits numbers (``"auto"``-style), a None default anything."""
    if default is None:
        return Any
    for kind, tp in ((bool, bool), (int, int), (float, float), (str, str | float)):
        if isinstance(default, kind):
            return tp
    return type(default) if isinstance(default, list | dict | tuple) else Any


def from_defaults(name: str, values: Mapping[str, Any]) -> type[PluginOptions]:
    fields: dict[str, Any] = {k: (_inferred_type(v), v) for k, v in values.items()}
    return create_model(name, __base__=PluginOptions, **fields)


def _keyword_defaults(fn: Callable[..., Any], skip: tuple[str, ...]) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and p.default is not inspect.Parameter.empty
        and p.name not in skip
    }


_inferred: dict[int, tuple[Any, type[PluginOptions]]] = {}


def options_model(obj: Any, *, skip: tuple[str, ...] = ()) -> type[PluginOptions]:
    """The declaration of a registered class or factory: its ``Options`` attribute, or (older
    plugins) one inferred from a method's ``options`` dict or a factory's keyword defaults
    (``skip``: keywords that are bnnkit's, e.g. a backbone's ``pretrained``)."""
    legacy = getattr(obj, "options", None)
    declared = getattr(obj, "Options", None)
    declares = isinstance(declared, type) and issubclass(declared, PluginOptions)
    if declares and not isinstance(legacy, Mapping):
        return declared
    hit = _inferred.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    name = f"{getattr(obj, '__name__', 'plugin')}Options"
    values = legacy if isinstance(legacy, Mapping) else _keyword_defaults(obj, skip)
    model = from_defaults(name, values)
    _inferred[id(obj)] = (obj, model)
    return model
