"""Typed plugin options: one declaration per plugin, read by recipe validation, ``bnnkit plugins``,
the docs and the constructor; essential built-ins; shadowed catalogue names; entry points."""

from __future__ import annotations

import importlib.util
import inspect
import json
import tomllib
import types
from pathlib import Path

import pytest
from helpers import QUICKSTART
from torch import nn

from bnnkit import Field, hookimpl, hookspecs, plugins
from bnnkit.cli import main
from bnnkit.errors import RecipeError, UsageError
from bnnkit.recipe import validate
from bnnkit_plugins.head_linear import LinearHead
from bnnkit_plugins.method_sgld import StochasticGradientLangevin

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_registry():
    plugins.reset_registry()
    yield
    plugins.reset_registry()


def _sgld_recipe(**inference) -> dict:
    return {
        "model": {"backbone": {"name": "test_resnet"}},
        "inference": {"name": "sgld", **inference},
    }


def test_an_option_added_in_one_place_reaches_every_reader(monkeypatch, runner):
    """Acceptance: a new sgld option, declared only in the method's Options, is validated with
    its key path, listed by `bnnkit plugins --kind method`, in the docs table and given to the
    constructor."""

    class WithWarmup(StochasticGradientLangevin.Options):
        warmup_steps: int = Field(10, ge=0, le=1000, description="steps before the first sample")

    monkeypatch.setattr(StochasticGradientLangevin, "Options", WithWarmup)
    plugins.reset_registry()
    registry = plugins.get_registry()

    with pytest.raises(RecipeError) as info:
        validate(_sgld_recipe(warmup_steps="ten"), registry)
    assert info.value.problems == [
        "inference.warmup_steps: expected int >= 0 and <= 1000, got 'ten'"
    ]
    with pytest.raises(RecipeError) as info:
        validate(_sgld_recipe(warmup_stpes=5), registry)
    assert info.value.problems == [
        "inference.warmup_stpes: unknown option; did you mean 'inference.warmup_steps'?"
    ]
    with pytest.raises(
        RecipeError, match=r"inference\.warmup_steps: expected int >= 0 and <= 1000"
    ):
        validate(_sgld_recipe(warmup_steps=5000), registry)
    recipe = validate(_sgld_recipe(warmup_steps=7), registry)

    out = runner.invoke(main, ["plugins", "--kind", "method"], env={"COLUMNS": "250"}).output
    assert "warmup_steps" in out and "int >= 0 and <= 1000" in out
    assert "steps before the first sample" in out
    data = json.loads(runner.invoke(main, ["plugins", "--kind", "method", "--json"]).output)
    (sgld,) = [r for r in data["plugins"] if r["name"] == "sgld"]
    assert sgld["options"]["warmup_steps"] == 10
    assert {"name": "warmup_steps", "type": "int >= 0 and <= 1000", "default": 10,
            "help": "steps before the first sample"} in sgld["option_info"]  # fmt: skip

    spec = importlib.util.spec_from_file_location("gen", ROOT / "docs" / "gen_plugin_options.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert "| `warmup_steps` | int >= 0 and <= 1000 | `10` | steps before the first sample |" in (
        gen.render(registry)
    )  # so tests/test_docs.py reports docs/plugins.md as stale until regenerated

    method = StochasticGradientLangevin(LinearHead(4, 2), num_train=8, **recipe.inference.options())
    assert method.opts.warmup_steps == 7 and method.config["warmup_steps"] == 7


def test_constructors_read_the_declaration():
    with pytest.raises(UsageError, match=r"^inference\.thin: expected int >= 1, got 0$"):
        StochasticGradientLangevin(LinearHead(4, 2), num_train=8, thin=0)
    with pytest.raises(ValueError, match="did you mean 'inference.prior_sigma'"):
        StochasticGradientLangevin(LinearHead(4, 2), num_train=8, prior_sigm=1.0)
    head = plugins.get_registry().get("head", "bbb").obj
    with pytest.raises(UsageError, match="model.head.prior: unknown prior 'laplce'; did you mean"):
        head(4, 2, prior="laplce")


def test_recipes_validate_constructs_the_plugins(runner, tmp_path):
    """Values only a constructor rejects fail `recipes validate` (exit 2, key path, no
    traceback), not the start of a training."""
    module = types.ModuleType("odd_kernel_plugin")

    def create(channels: int, *, k: int = 3) -> nn.Module:  # an old-style plugin: no declaration
        if k % 2 == 0:
            raise UsageError(f"model.attention.k must be odd, got {k}")
        return nn.Identity()

    @hookimpl
    def register_attention(register):
        register("oddk", create)

    module.register_attention = register_attention
    plugins.add_plugin("oddk", module)
    try:
        args = [
            "recipes",
            "validate",
            str(QUICKSTART),
            "--set",
            'model.attention={name="oddk", k=4}',
        ]
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "model.attention.k must be odd, got 4" in result.output
        assert "Traceback" not in result.output
        args[-1] = 'model.attention={name="oddk", k=5}'
        assert runner.invoke(main, args).exit_code == 0
    finally:
        plugins.remove_plugin("oddk")
    bad = ["recipes", "validate", str(QUICKSTART), "--set", "model.head.posterior_rho_init=true"]
    result = runner.invoke(main, bad)
    assert (
        result.exit_code == 2 and "model.head.posterior_rho_init: expected float" in result.output
    )


def test_essential_builtins_cannot_be_disabled(monkeypatch, runner):
    monkeypatch.setenv("BNNKIT_DISABLE_PLUGINS", "method_map,timm,attention_se")
    registry = plugins.get_registry()
    assert "map" in registry.names("method") and "timm" in registry.names("backbone")
    assert "se" not in registry.names("attention")
    assert any("'method_map' is essential" in n for n in registry.notes)
    monkeypatch.delenv("BNNKIT_DISABLE_PLUGINS")
    monkeypatch.setenv("BNNKIT_PLUGINS", "attention_se")
    plugins.reset_registry()
    registry = plugins.get_registry()
    assert registry.names("attention") == ["none", "se"]
    assert registry.names("method") == ["map"] and registry.names("head") == ["linear"]
    assert "BNNKIT_PLUGINS omits it" in runner.invoke(main, ["plugins"]).output


def test_a_backbone_shadowing_a_timm_name_is_a_conflict(runner):
    module = types.ModuleType("shadow_plugin")

    class Tiny(nn.Module):
        out_channels = 3

        def forward(self, x):
            return x

    @hookimpl
    def register_backbones(register):
        register("resnet18", lambda name, *, pretrained=False: Tiny())

    module.register_backbones = register_backbones
    plugins.add_plugin("shadow", module)
    try:
        registry = plugins.get_registry()
        (conflict,) = registry.conflicts
        assert "'resnet18'" in conflict and "shadows timm" in conflict
        assert registry.get("backbone", "resnet18").plugin == "shadow"
        assert registry.get("backbone", "timm/resnet18").name == "timm"
        data = json.loads(runner.invoke(main, ["plugins", "--json"]).output)
        assert data["conflicts"] == [conflict]
    finally:
        plugins.remove_plugin("shadow")


def test_every_plugin_module_is_an_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    registered = set(project["entry-points"]["bnnkit"].values())
    modules = {f"bnnkit_plugins.{p.stem}" for p in (ROOT / "plugins").glob("*.py")}
    modules.discard("bnnkit_plugins.__init__")
    assert modules - registered == set(), "plugins/ modules missing from pyproject.toml"
    assert registered - modules == set(), "pyproject.toml names modules not in plugins/"


def test_hookspecs_are_typed():
    for name in plugins.HOOKS.values():
        sig = inspect.signature(getattr(hookspecs, name))
        assert sig.parameters["register"].annotation != inspect.Parameter.empty, name
        assert sig.return_annotation == "None", name
