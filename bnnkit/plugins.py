"""Plugin discovery and the registry of frontends, backbones, attention blocks, heads, methods and
scores.

Every plugin, built-in or third-party, is a module named by an entry point in the group ``bnnkit``.
Loading is done entry point by entry point (not with pluggy's all-or-nothing
``load_setuptools_entrypoints``) so that one plugin raising on import is recorded as broken and
the rest of the CLI keeps working. ``BNNKIT_PLUGINS`` (comma-separated entry-point names) is an
allow-list; ``BNNKIT_DISABLE_PLUGINS`` a deny-list. The essential built-ins (:data:`ESSENTIAL`:
the timm backbone, ``map``, the ``linear`` head, ``none`` attention and frontend) load whatever
the lists say, with a note in :attr:`Registry.notes`.

Each entry knows its options' declaration (:mod:`bnnkit.options`), which recipe validation,
``bnnkit plugins`` and the docs read.
"""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from bnnkit import hookspecs
from bnnkit.errors import PluginError
from bnnkit.options import NoOptions, OptionInfo, PluginOptions, describe, options_model

ENTRY_POINT_GROUP = "bnnkit"
KINDS: tuple[str, ...] = ("frontend", "backbone", "attention", "head", "method", "score")
HOOKS: dict[str, str] = {
    "frontend": "register_frontends",
    "backbone": "register_backbones",
    "attention": "register_attention",
    "head": "register_heads",
    "method": "register_methods",
    "score": "register_scores",
}
#: entry points bnnkit cannot run without; BNNKIT_PLUGINS / BNNKIT_DISABLE_PLUGINS do not apply
ESSENTIAL: tuple[str, ...] = (
    "timm",
    "method_map",
    "head_linear",
    "attention_none",
    "frontend_none",
)


@dataclass(frozen=True)
class PluginEntry:
    """One registered thing: a frontend, backbone, attention or head factory, a method class or
    a score class."""

    kind: str
    name: str
    obj: Any
    plugin: str
    package: str
    version: str
    summary: str = ""
    catalog: Callable[[], Iterable[str]] | None = None
    options_model: type[PluginOptions] = NoOptions

    @property
    def owner(self) -> str:
        """How messages name it: ``method 'bbb'``."""
        return f"{self.kind} '{self.name}'"

    def options(self) -> dict[str, Any]:
        """Recipe options this entry accepts, with their defaults."""
        return {o.name: o.default for o in self.option_info()}

    def option_info(self) -> list[OptionInfo]:
        """Each option's name, type (with its range or choices), default and help."""
        return describe(self.options_model)


@dataclass(frozen=True)
class BrokenPlugin:
    plugin: str
    package: str
    version: str
    error: str


@dataclass
class Registry:
    entries: dict[str, dict[str, PluginEntry]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    broken: list[BrokenPlugin] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, entry: PluginEntry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None:
            self.conflicts.append(
                f"{entry.kind} '{entry.name}' from {entry.package} ignored: "
                f"already provided by {existing.package}"
            )
            return
        self.entries[entry.kind][entry.name] = entry

    def check_shadowing(self) -> None:
        """Report a backbone registered under a name a family's catalogue already has (e.g. a
        plugin's ``resnet18`` over timm's): recipes naming it get the plugin's, and
        ``family/name`` still reaches the family's. Only computed when such a backbone exists."""
        plain = [e for e in self.entries["backbone"].values() if e.catalog is None]
        if not plain or not self._catalogs:
            return
        for entry in plain:
            for family, names in self._catalogs.items():
                if entry.name in names:
                    owner = self.entries["backbone"][family].package
                    self.conflicts.append(
                        f"backbone '{entry.name}' from {entry.package} shadows {family}'s "
                        f"catalogued model of that name (from {owner}); recipes naming "
                        f"'{entry.name}' get {entry.package}'s, '{family}/{entry.name}' "
                        f"gets {family}'s"
                    )

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    @cached_property
    def _catalogs(self) -> dict[str, frozenset[str]]:
        out = {}
        for entry in self.entries["backbone"].values():
            if entry.catalog is not None:
                out[entry.name] = frozenset(entry.catalog())
        return out

    def get(self, kind: str, name: str) -> PluginEntry:
        """The entry for ``name``, or a :class:`PluginError` with a did-you-mean suggestion."""
        if kind not in self.entries:
            raise PluginError(f"unknown plugin kind '{kind}'; kinds are {', '.join(KINDS)}")
        entry = self.entries[kind].get(name)
        if entry is not None:
            return entry
        if kind == "backbone":
            family, _, model = name.partition("/")
            if model and family in self._catalogs and model in self._catalogs[family]:
                return self.entries[kind][family]
            for fam, names in self._catalogs.items():
                if name in names:
                    return self.entries[kind][fam]
        raise PluginError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        if kind == "backbone" and (tags := self._known_tags(name)) is not None:
            base, _, tag = name.rpartition(".")
            known = ", ".join(tags) if tags else "none (the name has no pretrained weights)"
            return f"unknown pretrained tag '{tag}' of backbone '{base}'; its tags: {known}"
        candidates = list(self.entries[kind])
        if kind == "backbone":
            for names in self._catalogs.values():
                candidates.extend(names)
        close = difflib.get_close_matches(str(name), candidates, n=1, cutoff=0.6)
        msg = f"unknown {kind} '{name}'"
        if close:
            return f"{msg}; did you mean '{close[0]}'?"
        shown = sorted(self.entries[kind])
        return f"{msg}; available: {', '.join(shown) if shown else '(none installed)'}"

    def _known_tags(self, name: str) -> list[str] | None:
        """For ``model.tag`` (or ``family/model.tag``) whose ``model`` a backbone family
        catalogues: the tags catalogued for it (``model.<tag>`` entries); else ``None``."""
        base, dot, _ = name.rpartition(".")
        if not dot or not base:
            return None
        family, _, model = base.partition("/")
        catalogs = (
            [self._catalogs[family]] if model and family in self._catalogs else
            list(self._catalogs.values())
        )  # fmt: skip
        model = model if model and family in self._catalogs else base
        for names in catalogs:
            if model in names:
                return sorted(n.rpartition(".")[2] for n in names if n.startswith(model + "."))
        return None


def _split_env(var: str) -> set[str] | None:
    raw = os.environ.get(var, "").strip()
    return {p.strip() for p in raw.split(",") if p.strip()} if raw else None


def _entry_points() -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))

    # Built-ins first, so a third-party plugin cannot silently shadow one; then stable by name.
    def key(ep: metadata.EntryPoint) -> tuple[int, str, str]:
        dist = ep.dist.name if ep.dist else ""
        return (0 if dist == "bnnkit" else 1, dist, ep.name)

    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in sorted(eps, key=key):
        ident = (ep.name, ep.value)
        if ident not in seen:  # editable installs can expose the same dist twice
            seen.add(ident)
            unique.append(ep)
    return unique


def _collect(pm: pluggy.PluginManager, registry: Registry, sources: dict[str, tuple[str, str]]):
    for kind, hook_name in HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):  # registration order
            package, version = sources.get(impl.plugin_name, (impl.plugin_name, ""))

            def register(
                name: str,
                obj: Any,
                *,
                summary: str = "",
                catalog: Callable[[], Iterable[str]] | None = None,
                options: type[PluginOptions] | None = None,
                _kind: str = kind,
                _plugin: str = impl.plugin_name,
                _package: str = package,
                _version: str = version,
            ) -> None:
                skip = ("pretrained",) if _kind == "backbone" else ()
                model = options or options_model(obj, skip=skip)
                summary = summary or getattr(obj, "summary", "")  # a class may carry its own
                registry.add(
                    PluginEntry(
                        _kind, name, obj, _plugin, _package, _version, summary, catalog, model
                    )
                )

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:  # a plugin's hook failing must not break the others
                registry.broken.append(
                    BrokenPlugin(impl.plugin_name, package, version, f"{hook_name}: {exc!r}")
                )


_extra_plugins: list[tuple[str, object]] = []
_registry: Registry | None = None


def add_plugin(name: str, plugin: object) -> None:
    """Register a plugin object (module or class with hookimpls) without an entry point.

    Meant for tests and notebooks; installed packages should use the ``bnnkit`` entry-point group.
    """
    _extra_plugins.append((name, plugin))
    reset_registry()


def remove_plugin(name: str) -> None:
    _extra_plugins[:] = [(n, p) for n, p in _extra_plugins if n != name]
    reset_registry()


def reset_registry() -> None:
    global _registry
    _registry = None


def get_registry() -> Registry:
    """The registry, loaded on first use and cached for the process."""
    global _registry
    if _registry is None:
        _registry = _load()
    return _registry


def _load() -> Registry:
    registry = Registry()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    allow = _split_env("BNNKIT_PLUGINS")
    deny = _split_env("BNNKIT_DISABLE_PLUGINS") or set()
    sources: dict[str, tuple[str, str]] = {}
    for ep in _entry_points():
        package = ep.dist.name if ep.dist else "?"
        if (allow is not None and ep.name not in allow) or ep.name in deny:
            if not (package == "bnnkit" and ep.name in ESSENTIAL):
                continue
            registry.notes.append(
                f"plugin '{ep.name}' is essential and loads although "
                + (
                    "BNNKIT_DISABLE_PLUGINS names it"
                    if ep.name in deny
                    else "BNNKIT_PLUGINS omits it"
                )
            )
        version = ep.dist.version if ep.dist else ""
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
            registry.broken.append(BrokenPlugin(ep.name, package, version, f"{exc!r}{where}"))
            continue
        sources[ep.name] = (package, version)
    for name, plugin in _extra_plugins:
        if pm.has_plugin(name) or pm.is_registered(plugin):  # e.g. already loaded by entry point
            continue
        pm.register(plugin, name=name)
        mod = plugin if isinstance(plugin, ModuleType) else None
        sources[name] = (getattr(mod, "__name__", name), "")
    _collect(pm, registry, sources)
    registry.check_shadowing()
    return registry
