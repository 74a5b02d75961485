"""A training fit belongs to the posterior it was made with (issue 18, item 6): ``vim`` reads
the head's mean logits, so ``evaluate --set inference.KEY=VALUE`` or another K refits it
instead of loading the fit made for the recipe's posterior."""

from __future__ import annotations

import json

import pytest
from helpers import invoke, recipe, train_and_evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

VIM = ["--no-plots", "--score", "vim", "--abstain-on", "vim"]


@pytest.fixture(scope="module")
def sgld_run(tmp_path_factory, synth_root):
    work = tmp_path_factory.mktemp("sgld_fit")
    sets = {"train.head_epochs": 4, "train.backbone": '"frozen"', "eval.batch_size": 64}
    return train_and_evaluate(
        recipe("resnet50_sgld"), work, data=synth_root, sets=sets, evaluate=False
    ).run


def _fits(run, *args) -> dict:
    invoke(["evaluate", run, *VIM, *args])
    return json.loads((run / "timing.json").read_text())["scores"]


def test_inference_overrides_and_k_refit_the_training_fit(sgld_run):
    assert _fits(sgld_run)["fitted"] == ["vim"]
    assert _fits(sgld_run)["loaded"] == ["vim"]  # same posterior: the saved fit is reused
    fits = _fits(sgld_run, "--set", "inference.max_samples=5")
    assert fits["fitted"] == ["vim"] and fits["loaded"] == []
    assert _fits(sgld_run, "--set", "inference.max_samples=5")["loaded"] == ["vim"]
    fits = _fits(sgld_run, "--samples", "3")  # another K: another mean of the logits
    assert fits["fitted"] == ["vim"] and fits["loaded"] == []
