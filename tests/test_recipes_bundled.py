"""Bundled recipes: shipped, valid, self-describing, and usable by name from any directory."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnnkit.cli import main
from bnnkit.recipe import load_recipe
from bnnkit.recipes_bundled import bundled

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = bundled()
NAMES = sorted(BUNDLED)


def invoke(args: list[str], **kwargs):
    return CliRunner().invoke(main, args, catch_exceptions=False, **kwargs)


def opening_comment(text: str) -> list[str]:
    """The recipe's leading ``#`` lines, without the ``#``."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def test_every_recipe_in_the_source_tree_is_bundled() -> None:
    assert NAMES, "no bundled recipes found (is the package installed?)"
    in_tree = sorted(p.stem for p in (ROOT / "recipes").glob("*.toml"))
    assert in_tree == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_bundled_recipe_validates(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name, f"{name}.toml sets name = {recipe.name!r}; use the file's stem"


@pytest.mark.parametrize("name", NAMES)
def test_bundled_recipe_opens_with_what_it_runs_and_how_to_override(name: str) -> None:
    comment = opening_comment(BUNDLED[name])
    assert comment and len(comment[0]) >= 20, (
        f"{name}.toml must open with a `# ...` line saying what it runs"
    )
    assert any("--set" in line for line in comment), (
        f"{name}.toml's opening comment should show how to override a key (--set KEY=VALUE)"
    )


@pytest.mark.parametrize("name", NAMES)
def test_commands_in_the_opening_comment_name_valid_overrides(name: str, tmp_path) -> None:
    """A ``bnnkit train NAME --set ...`` line in the header is checked as `recipes validate`."""
    joined = " ".join(opening_comment(BUNDLED[name])).replace("\\ ", " ")
    for command in re.findall(r"bnnkit train (\S+)((?: --set \S+)*)", joined):
        target, sets = command
        if target.removesuffix(".toml").split("/")[-1] != name:
            continue
        args = shlex.split(sets)
        result = invoke(["recipes", "validate", name, *args])
        assert result.exit_code == 0, f"{name}: documented overrides fail:\n{result.output}"


# -- bnnkit recipes ... ----------------------------------------------------------------------------
def test_recipes_list() -> None:
    result = invoke(["recipes", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert sorted(listed) == NAMES
    for name, description in listed.items():
        assert description == opening_comment(BUNDLED[name])[0]
    table = invoke(["recipes", "list"])
    assert table.exit_code == 0 and "quickstart" in table.output


def test_recipes_show_prints_the_toml() -> None:
    result = invoke(["recipes", "show", "quickstart"])
    assert result.exit_code == 0
    assert result.output == BUNDLED["quickstart"]
    assert tomllib.loads(result.output)["name"] == "quickstart"


def test_recipes_show_unknown_name_suggests() -> None:
    result = invoke(["recipes", "show", "quikstart"])
    assert result.exit_code == 2
    assert "did you mean 'quickstart'" in result.output


def test_recipes_validate_ok_resolved_and_problems(tmp_path) -> None:
    ok = invoke(["recipes", "validate", "quickstart", "--set", "train.epochs=2"])
    assert ok.exit_code == 0 and "ok" in ok.output
    resolved = invoke(
        ["recipes", "validate", "quickstart", "--resolved", "--set", "train.epochs=2"]
    )
    assert resolved.exit_code == 0
    assert tomllib.loads(resolved.output)["train"]["epochs"] == 2
    bad = invoke(["recipes", "validate", "quickstart", "--set", "train.epoch=2"])
    assert bad.exit_code == 2
    assert "did you mean 'train.epochs'" in bad.output


def test_recipes_copy_then_validate_the_copy(tmp_path) -> None:
    result = invoke(["recipes", "copy", "quickstart", str(tmp_path)])
    assert result.exit_code == 0, result.output
    copied = tmp_path / "quickstart.toml"
    assert copied.read_text(encoding="utf-8") == BUNDLED["quickstart"]
    again = invoke(["recipes", "copy", "quickstart", str(copied)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = invoke(["recipes", "copy", "quickstart", str(copied), "--force"])
    assert forced.exit_code == 0
    assert invoke(["recipes", "validate", str(copied)]).exit_code == 0


# -- by name, outside the checkout -----------------------------------------------------------------
def test_bundled_name_resolves_outside_the_checkout(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    sets = ["model.backbone.name=test_resnet", "model.backbone.pretrained=false"]
    result = invoke(
        ["recipes", "validate", "resnet50_bbb", *(a for s in sets for a in ("--set", s))]
    )
    assert result.exit_code == 0, result.output


def test_train_quickstart_by_name_from_outside_the_checkout(tmp_path) -> None:
    from bnnkit.data.synth import synthesize

    data = tmp_path / "data"
    synthesize(data, train_per_class=8, val_per_class=4, size=32)
    work = tmp_path / "elsewhere"
    work.mkdir()
    sets = [f"data.root={data}", "data.image_size=32", "data.train_limit=4", "train.epochs=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", "train", "quickstart", "-q"]
        + [a for s in sets for a in ("--set", s)],
        cwd=work,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = (work / "runs").iterdir()
    assert run.name.startswith("quickstart-")
    assert json.loads((run / "checkpoint.json").read_text())["complete"]
    assert tomllib.loads((run / "recipe.toml").read_text())["data"]["image_size"] == 32
