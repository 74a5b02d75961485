"""Recipe validation: every problem at once, key paths, suggestions, exit code 2."""

from __future__ import annotations

import pytest
from helpers import QUICKSTART

from bnnkit.cli import main
from bnnkit.errors import RecipeError
from bnnkit.overrides import apply_overrides, parse_value
from bnnkit.plugins import get_registry
from bnnkit.recipe import dump_recipe, load_recipe, validate

FIVE_MISTAKES = """
[data]
imgae_size = 64                                # 1: typo in a key
holdout = ["midjourney", "adm"]                # 2: held out AND trained on
train_generators = ["adm", "biggan"]

[model.backbone]
name = "resnet5"                               # 3: unknown plugin name

[inference]
name = "bbb"

[train]
epochs = "three"                               # 4: wrong type
batch_size = -4                                # 5: out of range
"""


def test_five_mistakes_reported_at_once(runner, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(FIVE_MISTAKES)
    for args in (["recipes", "validate", str(path)], ["train", str(path)]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        out = result.output
        assert "Traceback" not in out
        assert "5 problems" in out
        assert "data.imgae_size: unknown key; did you mean 'data.image_size'?" in out
        assert "data.holdout: adm also listed in data.train_generators" in out
        assert "model.backbone.name: unknown backbone 'resnet5'; did you mean 'resnet50'?" in out
        assert "train.epochs:" in out and "'three'" in out
        assert "train.batch_size:" in out and "greater than or equal to 1" in out


def test_plugin_options_and_head_compatibility():
    raw = {
        "model": {"backbone": {"name": "test_resnet"}, "head": {"name": "linear"},
                  "attention": {"name": "spatial", "kernel_sise": 3}},
        "inference": {"name": "bbb", "kl_weigth": 0.1, "elbo_samples": "two"},
    }  # fmt: skip
    with pytest.raises(RecipeError) as info:
        validate(raw, get_registry())
    problems = info.value.problems
    assert (
        "model.attention.kernel_sise: unknown option; did you mean 'model.attention.kernel_size'?"
        in problems
    )  # noqa: E501
    assert "inference.kl_weigth: unknown option; did you mean 'inference.kl_weight'?" in problems
    assert any(p.startswith("inference.elbo_samples: expected int") for p in problems)
    assert "model.head.name: bbb needs a head in (bbb); got linear" in problems


def test_unknown_generator_and_missing_model():
    with pytest.raises(RecipeError) as info:
        validate({"data": {"holdout": ["midjorney"]}}, get_registry())
    assert "model: required key is missing" in info.value.problems
    assert any("did you mean 'midjourney'" in p for p in info.value.problems)


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("1e-3", 1e-3), ("true", True), ('["a", "b"]', ["a", "b"]), ('"x y"', "x y"),
     ("data/synth", "data/synth"), ("{name = 'se'}", {"name": "se"})],
)  # fmt: skip
def test_set_values_parse_as_toml(text, value):
    assert parse_value(text) == value


def test_overrides_nested_and_errors():
    raw = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "model.backbone.name=x"])
    assert raw == {"train": {"epochs": 5}, "model": {"backbone": {"name": "x"}}}
    with pytest.raises(RecipeError) as info:
        apply_overrides({"train": 3}, ["noequals", "train.epochs=1"])
    assert len(info.value.problems) == 2


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(QUICKSTART, ["train.epochs=2", "seed=7"])
    assert recipe.train.epochs == 2 and recipe.seed == 7 and recipe.name == "quickstart"
    path = tmp_path / "resolved.toml"
    path.write_text(dump_recipe(recipe))
    again = load_recipe(path)
    assert again.to_dict() == {**recipe.to_dict(), "name": "quickstart"}
    assert again.model.head.options() == {"posterior_rho_init": -4.0}


def test_bundled_recipe_by_name_and_suggestion():
    assert load_recipe("quickstart").name == "quickstart"
    from bnnkit.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'quickstart'"):
        load_recipe("quikstart")
