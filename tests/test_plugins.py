"""The plugin registry: entry points, third-party plugins, broken plugins, allow/deny lists."""

from __future__ import annotations

import json
import types
from importlib import metadata

import pytest
from helpers import QUICKSTART, tiny_overrides
from torch import nn

from bnnkit import hookimpl, plugins
from bnnkit.cli import main
from bnnkit.errors import PluginError


@pytest.fixture(autouse=True)
def _fresh_registry():
    plugins.reset_registry()
    yield
    plugins.reset_registry()


def _fake_attention_plugin() -> types.ModuleType:
    module = types.ModuleType("fake_attention_plugin")

    class Halve(nn.Module):
        def forward(self, x):
            return x * 0.5

    def create(channels: int, *, scale: float = 0.5) -> nn.Module:
        return Halve()

    @hookimpl
    def register_attention(register):
        register("halve", create, summary="multiplies the map by 0.5")

    module.register_attention = register_attention
    return module


def test_builtins_come_from_entry_points():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="bnnkit")}
    assert eps["method_bbb"] == "bnnkit_plugins.method_bbb"
    registry = plugins.get_registry()
    assert registry.get("method", "bbb").plugin == "method_bbb"
    assert registry.get("backbone", "resnet50").name == "timm"  # any timm model by name
    assert registry.get("backbone", "timm/test_resnet").name == "timm"


def test_third_party_plugin_is_listed_and_usable(runner, synth_root, tmp_path):
    plugins.add_plugin("fake", _fake_attention_plugin())
    try:
        result = runner.invoke(main, ["plugins", "--json", "--kind", "attention"])
        names = {p["name"]: p for p in json.loads(result.output)["plugins"]}
        assert names["halve"]["options"] == {"scale": 0.5}
        args = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path), "-q",
                *tiny_overrides(synth_root, **{"model.attention": '{name = "halve"}'})]  # fmt: skip
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    finally:
        plugins.remove_plugin("fake")


def test_broken_plugin_is_reported_and_cli_still_works(runner, monkeypatch):
    real = plugins._entry_points

    class BrokenEP:
        name = "exploding"
        value = "exploding_plugin"
        dist = types.SimpleNamespace(name="exploding-pkg", version="6.6.6")

        def load(self):
            raise ImportError("boom: missing dependency")

    monkeypatch.setattr(plugins, "_entry_points", lambda: [*real(), BrokenEP()])
    result = runner.invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "broken" in result.output and "exploding" in result.output and "boom" in result.output
    data = json.loads(runner.invoke(main, ["plugins", "--json"]).output)
    broken = {b["plugin"]: b for b in data["broken"]}
    assert broken["exploding"]["package"] == "exploding-pkg"
    assert broken["exploding"]["version"] == "6.6.6"
    assert runner.invoke(main, ["recipes", "validate", str(QUICKSTART)]).exit_code == 0


def test_allow_and_deny_lists(monkeypatch):
    monkeypatch.setenv("BNNKIT_DISABLE_PLUGINS", "attention_se")
    assert "se" not in plugins.get_registry().names("attention")
    plugins.reset_registry()
    monkeypatch.delenv("BNNKIT_DISABLE_PLUGINS")
    monkeypatch.setenv("BNNKIT_PLUGINS", "timm,attention_none,head_linear,method_map")
    registry = plugins.get_registry()
    assert registry.names("attention") == ["none"]
    assert registry.names("method") == ["map"]


def test_unknown_names_suggest():
    registry = plugins.get_registry()
    with pytest.raises(PluginError, match="unknown backbone 'resnet5'; did you mean 'resnet50'"):
        registry.get("backbone", "resnet5")
    with pytest.raises(PluginError, match="did you mean 'spatial'"):
        registry.get("attention", "spatail")
    with pytest.raises(PluginError, match="available: "):
        registry.get("head", "zzzzzzz")
