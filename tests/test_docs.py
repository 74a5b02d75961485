"""Docs that cannot drift: the plugin guide against the hookspecs and base classes, its example
plugins against bnnkit, the CLI reference against ``--help``, the README against recipes/."""

from __future__ import annotations

import importlib.util
import inspect
import re
import types
from pathlib import Path

import pytest

from bnnkit import hookspecs  # noqa: E402
from bnnkit.methods.base import InferenceMethod, LossParts  # noqa: E402
from bnnkit.model.heads import Head  # noqa: E402
from bnnkit.scores.base import Score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
README = ROOT / "README.md"
REGENERATE = "regenerate it with: python docs/gen_cli.py"


def code_blocks(path: Path) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)


def hookspec_functions() -> dict[str, types.FunctionType]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, marker)
    }


def signature_text(fn) -> str:
    """``(a: T, *, b: U = 1) -> R`` with string annotations unquoted (postponed evaluation)."""
    return str(inspect.signature(fn)).replace("'", "")


DEF_LINE = re.compile(r"^\s*def (\w+)(\(.*\)(?: -> [^:#]+?)?)\s*(?::.*|#.*)?$")


def documented_defs(block: str) -> dict[str, str]:
    """``name -> signature text`` for every one-line ``def`` in a code block."""
    out = {}
    for line in block.splitlines():
        m = DEF_LINE.match(line.split("#", 1)[0])
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def class_block(name: str) -> str:
    blocks = [b for b in code_blocks(GUIDE) if re.search(rf"^class {name}\b", b, re.M)]
    assert blocks, f"docs/plugins.md has no code block declaring `class {name}`"
    body = blocks[0].split(f"class {name}", 1)[1]
    return re.split(r"^\S", body.split("\n", 1)[1], maxsplit=1, flags=re.M)[0]


# -- hooks ----------------------------------------------------------------------------------------
def test_every_hookspec_is_documented_with_its_signature() -> None:
    specs = hookspec_functions()
    assert specs, "no hookspecs found in bnnkit.hookspecs"
    blocks = code_blocks(GUIDE)
    # The reference lines: a bare `def register_x(...)` line (no body), one per hook.
    spec_line = re.compile(r"^def (register_\w+)(\(.*\)(?: -> [^:\n]+)?)$", re.M)
    documented = {m.group(1): m.group(2) for b in blocks for m in spec_line.finditer(b)}
    missing = sorted(set(specs) - set(documented))
    assert not missing, (
        f"hookspecs missing from docs/plugins.md: {missing} "
        "(add a line `def <hook>(<args>)` to its hook-specification code block)"
    )
    stale = sorted(set(documented) - set(specs))
    assert not stale, f"docs/plugins.md documents hooks that do not exist: {stale}"
    # Every hook implementation in the guide's examples must match its spec as well.
    for block in blocks:
        for line in block.splitlines():
            m = DEF_LINE.match(line.split("#", 1)[0])
            if m and m.group(1) in specs:
                documented.setdefault(m.group(1), m.group(2))
                assert m.group(2) == signature_text(specs[m.group(1)]), (
                    f"docs/plugins.md: `{line.strip()}` does not match bnnkit/hookspecs.py's "
                    f"`def {m.group(1)}{signature_text(specs[m.group(1)])}`"
                )
    for name, fn in specs.items():
        assert documented[name] == signature_text(fn), (
            f"docs/plugins.md documents `def {name}{documented[name]}`, "
            f"but bnnkit/hookspecs.py declares `def {name}{signature_text(fn)}`"
        )


def test_each_hooks_register_callback_is_documented() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for name, fn in hookspec_functions().items():
        calls = re.findall(r"``(register\(.*?\))``", fn.__doc__ or "")
        assert calls, f"bnnkit/hookspecs.py: {name}'s docstring should show its register(...) call"
        for call in calls:
            assert f"`{call}`" in text, f"docs/plugins.md does not show `{call}` for {name}"


# -- base classes ---------------------------------------------------------------------------------
def public_methods(cls: type) -> dict[str, str]:
    return {
        name: signature_text(value)
        for name, value in vars(cls).items()
        if inspect.isfunction(value) and (not name.startswith("_") or name == "__init__")
    }


@pytest.mark.parametrize("cls", [InferenceMethod, Head, Score], ids=lambda c: c.__name__)
def test_base_class_interface_is_documented(cls: type) -> None:
    block = class_block(cls.__name__)
    documented = documented_defs(block)
    for name, sig in public_methods(cls).items():
        assert name in documented, f"docs/plugins.md: `{cls.__name__}.{name}` is not documented"
        assert documented[name] == sig, (
            f"docs/plugins.md documents `def {name}{documented[name]}`, but "
            f"{cls.__module__} declares `def {name}{sig}`"
        )
    stale = [n for n in documented if not hasattr(cls, n)]
    assert not stale, f"docs/plugins.md documents {cls.__name__} methods that do not exist: {stale}"
    for attr, annotation in inspect.get_annotations(cls).items():
        pattern = rf"^\s*{attr}: {re.escape(str(annotation))}(?:\s|=|$)"
        assert re.search(pattern, block, re.M), (
            f"docs/plugins.md: class attribute `{cls.__name__}.{attr}: {annotation}` is missing"
        )


def test_every_inference_method_member_has_a_table_row() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    members = [*public_methods(InferenceMethod), *inspect.get_annotations(InferenceMethod)]
    for name in members:
        assert re.search(rf"^\| [^|]*`{name}[`(]", text, re.M), f"no table row for `{name}`"


def test_loss_parts_fields_are_documented() -> None:
    block = class_block("LossParts")
    for name in inspect.signature(LossParts).parameters:
        assert re.search(rf"^\s*{name}: Tensor", block, re.M), f"LossParts.{name} undocumented"


# -- the guide's example plugins work -------------------------------------------------------------
def example_modules() -> list[types.ModuleType]:
    modules = []
    for i, block in enumerate(code_blocks(GUIDE)):
        if "@hookimpl" in block and "register(" in block:
            module = types.ModuleType(f"bnnkit_docs_example_{i}")
            exec(compile(block, f"docs/plugins.md block {i}", "exec"), module.__dict__)
            modules.append(module)
    return modules


def test_guide_example_plugins_build_train_and_sample() -> None:
    import torch

    from bnnkit.engine.build import build
    from bnnkit.errors import UsageError
    from bnnkit.plugins import add_plugin, get_registry, remove_plugin
    from bnnkit.recipe import validate

    modules = example_modules()
    assert len(modules) >= 4, "expected one example plugin per kind in docs/plugins.md"
    names = [m.__name__ for m in modules]
    try:
        for module in modules:
            add_plugin(module.__name__, module)
        registry = get_registry()
        raw = {
            "model": {
                "frontend": {"name": "gain", "init": 0.5},
                "backbone": {"name": "tinycnn", "width": 16},
                "attention": {"name": "gate"},
                "head": {"name": "cosine", "scale": 5.0},
            },
            "inference": {"name": "smooth", "smoothing": 0.2},
        }
        recipe = validate(raw, registry)
        torch.manual_seed(0)
        detector, method = build(recipe, num_train=8)
        feats = detector.features(torch.randn(4, 3, 32, 32))
        assert feats.shape == (4, 16)
        parts = method.training_loss(feats, torch.tensor([0, 1, 0, 1]))
        parts.loss.backward()
        assert detector.backbone.body[0].weight.grad is not None
        assert detector.frontend.gain.grad is not None  # the example frontend is learnable
        probs = method.sample(feats.detach(), 3)
        assert probs.shape == (3, 4, 2)
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4))
        raw["inference"]["smoothing"] = 1.5
        with pytest.raises(UsageError, match="inference.smoothing"):
            build(validate(raw, registry), num_train=8)
    finally:
        for name in names:
            remove_plugin(name)


# -- the built-ins' options tables ----------------------------------------------------------------
def load_docs_script(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_options_tables_are_up_to_date() -> None:
    """docs/plugins.md's options tables are the built-ins' declarations, regenerated."""
    gen = load_docs_script("gen_plugin_options")
    block = gen.current(GUIDE.read_text(encoding="utf-8"))
    assert block is not None, "docs/plugins.md lost its plugin-options markers"
    assert block == gen.render(), (
        "docs/plugins.md's options tables are stale; python docs/gen_plugin_options.py"
    )


# -- CLI reference ---------------------------------------------------------------------------------
def load_gen_cli() -> types.ModuleType:
    return load_docs_script("gen_cli")


def test_cli_reference_is_up_to_date() -> None:
    gen_cli = load_gen_cli()
    expected = gen_cli.render()
    path = ROOT / "docs" / "cli.md"
    assert path.is_file(), f"docs/cli.md is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == expected, f"docs/cli.md is stale; {REGENERATE}"


def test_cli_reference_covers_every_command() -> None:
    from bnnkit.cli import main

    text = load_gen_cli().render()
    for name in main.list_commands(None):  # type: ignore[arg-type]
        assert f"\n## bnnkit {name}\n" in text


# -- README ----------------------------------------------------------------------------------------
def test_readme_recipe_table_lists_every_bundled_recipe() -> None:
    text = README.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([\w.-]+)` \|", text, re.M))
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*.toml"))
    assert recipes, "no recipes/*.toml found"
    missing = [r for r in recipes if r not in rows]
    assert not missing, (
        f"README.md's recipe table lacks: {missing} (add a `| \\`name\\` | ...` row)"
    )


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?!https?://|#)[^)#\s]+)", text)
    assert "docs/plugins.md" in links and "docs/cli.md" in links
    for link in links:
        assert (ROOT / link).exists(), f"README.md links to missing {link}"
