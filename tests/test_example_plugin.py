"""The example third-party package (examples/bnnkit-plugin-example) seen through its entry points.

Nothing is pip-installed: a temporary ``bnnkit_plugin_example-<version>.dist-info`` (METADATA +
entry_points.txt written from the package's own pyproject.toml) and the package's ``src/`` go on
the path (``PYTHONPATH`` of a fresh ``bnnkit`` process, or ``sys.path`` in-process), which is all
``importlib.metadata`` needs to find them. The package's own tests run here too (collected
in-process from examples/bnnkit-plugin-example/tests), so the template authors copy cannot rot.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bnnkit-plugin-example"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# The example package's own tests, collected as tests of this module (its conftest only puts
# src/ on sys.path, done here instead).
sys.path.append(str(EXAMPLE / "src"))
_spec = importlib.util.spec_from_file_location(
    "bnnkit_plugin_example_tests", EXAMPLE / "tests" / "test_bnnkit_plugin_example.py"
)
assert _spec is not None and _spec.loader is not None
_example_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_example_tests)
globals().update(
    {
        f"{name}_example_package" if name.startswith("test_") else name: value
        for name, value in vars(_example_tests).items()
        if name.startswith("test_") or name == "registry"
    }
)


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    """A folder holding the example package's dist-info, as pip would have written it."""
    site = tmp_path_factory.mktemp("site")
    dist = site / f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {PROJECT['name']}\nVersion: {PROJECT['version']}\n",
        encoding="utf-8",
    )
    lines = ["[bnnkit]"] + [f"{k} = {v}" for k, v in PROJECT["entry-points"]["bnnkit"].items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return site


@pytest.fixture
def installed(site_dir, monkeypatch, tmp_path):
    """In this process: the example package visible through entry points, cwd in tmp_path."""
    from bnnkit.plugins import reset_registry

    monkeypatch.syspath_prepend(str(site_dir))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.delenv("BNNKIT_PLUGINS", raising=False)
    monkeypatch.delenv("BNNKIT_DISABLE_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    reset_registry()
    yield
    reset_registry()  # the next get_registry() (after monkeypatch's undo) no longer sees them


def invoke(args: list[str]):
    from click.testing import CliRunner

    from bnnkit.cli import main

    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, f"bnnkit {' '.join(args)} failed:\n{result.output}"
    return result


@pytest.fixture(scope="module")
def plugin_env(site_dir) -> dict[str, str]:
    """Environment for a fresh bnnkit process in which the example package looks installed."""
    env = dict(os.environ)
    paths = [str(site_dir), str(EXAMPLE / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("BNNKIT_PLUGINS", None)
    env.pop("BNNKIT_DISABLE_PLUGINS", None)
    return env


def bnnkit(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"bnnkit {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def plugins_json(env: dict[str, str], cwd: Path) -> dict:
    return json.loads(bnnkit(["plugins", "--json"], env, cwd).stdout)


def test_entry_points_match_the_modules() -> None:
    eps = PROJECT["entry-points"]["bnnkit"]
    assert set(eps) == {"example_eca", "example_swag"}
    for value in eps.values():
        rel = Path("src", *value.split(".")).with_suffix(".py")
        assert (EXAMPLE / rel).is_file(), f"entry point {value} names no module"


@pytest.mark.slow
def test_plugins_lists_both_with_package_and_version(plugin_env, tmp_path) -> None:
    data = plugins_json(plugin_env, tmp_path)
    rows = {(r["kind"], r["name"]): r for r in data["plugins"]}
    for key in (("attention", "eca"), ("method", "swag")):
        assert key in rows, f"{key} not listed by bnnkit plugins"
        assert rows[key]["package"] == PROJECT["name"]
        assert rows[key]["version"] == PROJECT["version"]
    assert rows[("method", "swag")]["heads"] == ["linear"]
    assert set(rows[("attention", "eca")]["options"]) == {"kernel_size", "gamma", "beta"}
    assert not [b for b in data["broken"] if b["plugin"].startswith("example_")]
    assert not [c for c in data["conflicts"] if PROJECT["name"] in c]


def test_disable_one_plugin_by_entry_point_name(installed, monkeypatch) -> None:
    from bnnkit.plugins import get_registry, reset_registry

    registry = get_registry()
    assert registry.get("method", "swag").package == PROJECT["name"]
    monkeypatch.setenv("BNNKIT_DISABLE_PLUGINS", "example_swag")
    reset_registry()
    names = {
        (r["kind"], r["name"]) for r in json.loads(invoke(["plugins", "--json"]).output)["plugins"]
    }
    assert ("attention", "eca") in names and ("method", "swag") not in names


@pytest.mark.slow
def test_recipe_using_both_trains_and_evaluates(installed, tmp_path) -> None:
    from bnnkit.data.synth import synthesize

    data = tmp_path / "data"
    synthesize(data, train_per_class=8, val_per_class=4, size=32)
    runs = tmp_path / "runs"
    sets = [
        f"data.root={data}",
        "data.image_size=32",
        "data.train_limit=4",  # 7 generators x 2 classes x (4 - 1 calibration image) = 42 images
        "train.epochs=1",
        "train.head_epochs=1",
        "train.batch_size=16",  # 3 head-phase steps -> 3 SWAG snapshots
        "eval.samples=8",
    ]
    recipe = str(EXAMPLE / "swag_eca.toml")
    overrides = [a for s in sets for a in ("--set", s)]
    invoke(["train", recipe, "--runs-dir", str(runs), "-q", *overrides])
    (run,) = runs.iterdir()
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["complete"] and meta["method"] == "swag"
    assert meta["method_meta"]["n_snapshots"] == 3  # collected in the head-only phase only
    assert meta["method_meta"]["mean_std"] > 0
    env_json = json.loads((run / "env.json").read_text())
    assert env_json["plugins"]["attention"]["package"] == PROJECT["name"]
    assert env_json["plugins"]["method"]["version"] == PROJECT["version"]

    invoke(["evaluate", str(run), "--ood", "midjourney", "--no-plots"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "swag"
    assert metrics["ood_generators"] == ["midjourney"]
    # SWAG samples differ, so the predictive has an epistemic part (MAP's would be exactly 0).
    assert metrics["seen"]["epistemic_uncertainty"] > 0
