"""``bnnkit.testing``: registering a plugin whose package is also installed, and the method
conformance check catching broken methods (the runner is exercised by the method tests)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bnnkit.methods.base import InferenceMethod
from bnnkit.plugins import add_plugin, get_registry, remove_plugin, reset_registry
from bnnkit.testing import check_method, registered

PROBE = """
from torch import nn

from bnnkit import hookimpl


@hookimpl
def register_attention(register):
    register("probe_attention", lambda channels: nn.Identity())
"""


@pytest.fixture
def installed_probe(tmp_path, monkeypatch):
    """A plugin module ``bnnkit_probe`` that an installed distribution's entry point names, as a
    ``pip install -e`` (or an egg-info in the source tree) leaves it."""
    (tmp_path / "bnnkit_probe.py").write_text(textwrap.dedent(PROBE), encoding="utf-8")
    dist = tmp_path / "bnnkit_probe-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bnnkit-probe\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[bnnkit]\nprobe = bnnkit_probe\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("BNNKIT_PLUGINS", raising=False)
    monkeypatch.delenv("BNNKIT_DISABLE_PLUGINS", raising=False)
    reset_registry()
    import bnnkit_probe

    yield bnnkit_probe
    sys.modules.pop("bnnkit_probe", None)
    reset_registry()


def test_registering_an_installed_plugin_is_safe(installed_probe):
    with registered(installed_probe) as registry:
        entry = registry.get("attention", "probe_attention")
        assert (entry.plugin, entry.package, entry.version) == ("probe", "bnnkit-probe", "0.3")
        assert not registry.conflicts and not registry.broken
    # the guide's plain fixture (add_plugin, then get_registry) works too
    add_plugin("test_probe", installed_probe)
    try:
        assert get_registry().get("attention", "probe_attention").package == "bnnkit-probe"
    finally:
        remove_plugin("test_probe")


def test_registered_plugins_go_away_on_exit(tmp_path):
    module = type(sys)("bnnkit_probe_local")
    exec(compile(textwrap.dedent(PROBE), "probe", "exec"), module.__dict__)
    reset_registry()
    with registered(module) as registry:
        assert registry.get("attention", "probe_attention").package == "bnnkit_probe_local"
    assert "probe_attention" not in get_registry().names("attention")


# -- check_method -------------------------------------------------------------------------------
D, C, B = 4, 3, 5


class Logits(InferenceMethod):
    """Broken: returns logits, not probabilities."""

    def sample(self, features, k):
        return self.head.sample_logits(features, k)


class Flat(InferenceMethod):
    """Broken: drops the sample dimension."""

    def sample(self, features, k):
        return torch.softmax(self.head(features), -1)


class Forgetful(InferenceMethod):
    """Broken: keeps a temperature in its state but does not load it back."""

    def __init__(self, head, *, num_train, **options):
        super().__init__(head, num_train=num_train, **options)
        self.temperature = torch.ones(())

    def sample(self, features, k):
        probs = torch.softmax(self.head(features) / self.temperature, -1)
        return probs.expand(k, *probs.shape)

    def extra_state(self):
        return {"temperature": self.temperature}

    def load_extra_state(self, state):
        pass


class Noisy(InferenceMethod):
    """Unseeded noise: not reproducible under the same global seed."""

    def sample(self, features, k):
        rng = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        noise = torch.randn(k, features.shape[0], C, generator=rng)
        return torch.softmax(self.head(features) + noise, -1)


def _method(cls: type[InferenceMethod]) -> InferenceMethod:
    torch.manual_seed(0)
    return cls(get_registry().get("head", "linear").obj(D, C), num_train=10)


def test_a_conforming_method_passes():
    method = _method(InferenceMethod)
    check_method(method, torch.randn(B, D), fresh=lambda: _method(InferenceMethod))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (Logits, "outside \\[0, 1\\]|sum to"),
        (Flat, "has shape"),
        (Noisy, "not reproducible"),
    ],
)
def test_broken_samples_are_caught(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_method(_method(cls), torch.randn(B, D))


def test_a_state_that_does_not_round_trip_is_caught():
    method = _method(Forgetful)
    method.temperature = torch.tensor(0.25)
    with pytest.raises(AssertionError, match="restored from its state"):
        check_method(method, torch.randn(B, D), fresh=lambda: _method(Forgetful))


def test_a_stochastic_method_claimed_deterministic_is_caught():
    class Jitter(InferenceMethod):
        def sample(self, features, k):
            return torch.softmax(self.head.sample_logits(features, k) + torch.randn(k, 1, C), -1)

    with pytest.raises(AssertionError, match="deterministic method"):
        check_method(_method(Jitter), torch.randn(B, D), deterministic=True)


def test_the_shipped_methods_conform(tmp_path):
    """Every built-in method, briefly trained on a toy problem, passes the check."""
    torch.manual_seed(0)
    x = torch.randn(32, D)
    y = (x[:, 0] > 0).long()
    registry = get_registry()
    for name in registry.names("method"):
        cls = registry.get("method", name).obj
        head = registry.get("head", cls.default_head).obj

        def build(cls=cls, head=head) -> InferenceMethod:
            torch.manual_seed(0)
            return cls(head(D, 2), num_train=len(x))

        method = build()
        opt = method.configure_optimizer(
            [{"params": list(method.head.parameters())}], optimizer="adam", lr=0.01, weight_decay=0
        )
        for step in range(1, 11 if cls.trains else 1):  # training-free: nothing to optimise
            opt.zero_grad()
            method.training_loss(x, y, torch.arange(len(x))).loss.backward()
            opt.step()
            method.after_step(step)
        method.after_epoch(1)
        method.after_training(x, y)
        rows = method.members.num_members if name == "ensemble" else None
        rows = D if not cls.trains else rows  # one row per perturbation (the D features)
        check_method(method, x[:B], fresh=build, rows=rows, deterministic=name == "map" or None)


def test_the_module_is_documented():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    for name in ("registry_fixture", "check_method", "train_and_evaluate"):
        assert "bnnkit.testing" in guide and name in guide, f"docs/plugins.md: {name}"
