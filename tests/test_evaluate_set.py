"""``bnnkit evaluate --set inference.KEY=VALUE``: evaluation-time method options (kflaplace's
prior precision), recorded in metrics.json and threshold.json and reused by ``bnnkit predict``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import invoke, recipe, train_and_evaluate

from bnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kfl_run(tmp_path_factory, synth_root):
    work = tmp_path_factory.mktemp("kfl_set")
    return train_and_evaluate(recipe("resnet50_kflaplace"), work, data=synth_root)


def test_set_prior_precision_at_evaluation_time(kfl_run, synth_root):
    run = kfl_run.run
    first = kfl_run.metrics["seen"]["epistemic_uncertainty"]
    assert "inference_overrides" not in kfl_run.metrics
    invoke(["evaluate", run, "--no-plots", "--set", "inference.prior_precision=0.001"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["inference_overrides"] == {"prior_precision": 0.001}
    assert metrics["seen"]["epistemic_uncertainty"] > first  # a weaker prior, a wider posterior
    threshold = json.loads((run / "threshold.json").read_text())
    assert threshold["inference_overrides"] == {"prior_precision": 0.001}
    assert 'prior_precision = "marglik"' in (run / "recipe.toml").read_text()  # run untouched

    # predict samples with the options the threshold was calibrated with
    images = sorted((synth_root / "imagenet_ai_0508_adm" / "val" / "ai").iterdir())[:2]
    out = json.loads(invoke(["predict", run, *images, "--format", "json"]))
    rows = {r["path"]: r for r in out["predictions"]}
    csv_rows = (run / "predictions.csv").read_text().splitlines()[1:]
    clean = {line.split(",")[4]: line.split(",") for line in csv_rows if line.startswith("clean")}
    for img in images:
        rel = img.relative_to(synth_root).as_posix()
        epistemic = float(clean[rel][8])  # the column after total and aleatoric (then scores)
        assert rows[str(img)]["epistemic"] == pytest.approx(epistemic, rel=1e-5)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epochs=2", "evaluate takes only inference.KEY=VALUE"),
        ("inference.name=map", "evaluate takes only inference.KEY=VALUE"),
        ("inference.prior_precision=-1", "prior_precision"),
        ("inference.no_such_option=1", "no_such_option"),
    ],
)
def test_set_refuses_other_keys_and_bad_values(kfl_run, item, message):
    result = CliRunner().invoke(main, ["evaluate", str(kfl_run.run), "--no-plots", "--set", item])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_one_rule_for_the_number_of_posterior_samples():
    from types import SimpleNamespace

    from bnnkit.engine.features.loop import posterior_samples

    r = SimpleNamespace(eval=SimpleNamespace(samples=32))
    assert posterior_samples(r, "validate") == 16  # min(eval.samples, 16)
    assert posterior_samples(SimpleNamespace(eval=SimpleNamespace(samples=4)), "validate") == 4
    assert posterior_samples(r, "evaluate") == 32
    assert posterior_samples(r, "evaluate", requested=5) == 5
    assert posterior_samples(r, "predict", calibrated={"samples": 8}) == 8  # threshold's K
    assert posterior_samples(r, "predict", requested=3, calibrated={"samples": 8}) == 3
    assert posterior_samples(r, "predict", calibrated=None) == 32
    with pytest.raises(ValueError):
        posterior_samples(r, "train")
