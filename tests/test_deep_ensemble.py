"""Deep ensembles of whole detectors (``inference.members = "detectors"``): options, the combined
detector, M member runs whose backbones differ, per-member resume after a kill, and a run that
predict and evaluate accept with epistemic uncertainty > 0 on every image."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from helpers import invoke, recipe, tiny_overrides
from safetensors.torch import load_file

from bnnkit.run import RunLayout

pytestmark = pytest.mark.usefixtures("one_thread")

DEEP = recipe("quickstart_deep_ensemble")
M = 3


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise point is written."""


def _train(synth_root: Path, runs: Path, cache: Path, **sets: object):
    from click.testing import CliRunner

    from bnnkit.cli import main

    args = ["train", str(DEEP), "--runs-dir", str(runs), "--cache-dir", str(cache), "-q",
            *tiny_overrides(synth_root, **{"inference.size": M, **sets})]  # fmt: skip
    return CliRunner().invoke(main, args)


def _only_run(runs: Path) -> Path:
    (run,) = list(runs.iterdir())
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    meta = json.loads(RunLayout(run).checkpoint.read_text())
    return load_file(str(run / meta["files"]["model"]))


#: the terminal output of the uninterrupted training (the fixture below)
TRAIN_OUTPUT: dict[str, str] = {}


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("deep")
    result = _train(synth_root, work / "runs", work / "cache")
    assert result.exit_code == 0, result.output
    TRAIN_OUTPUT["train"] = result.output
    return _only_run(work / "runs")


# -- options ------------------------------------------------------------------------------------
def test_members_takes_an_int_or_detectors_and_size_only_with_detectors():
    from bnnkit.errors import UsageError
    from bnnkit.options import describe
    from bnnkit_plugins.method_ensemble import BootstrapEnsemble

    count = BootstrapEnsemble.detector_members
    assert count({}) == 0 and count({"members": 3}) == 0  # old recipes: M heads
    assert count({"members": "detectors"}) == 5 and count({"members": "detectors", "size": 2}) == 2
    with pytest.raises(UsageError, match=r"inference\.size: only used with members"):
        count({"members": 3, "size": 2})
    with pytest.raises(UsageError, match=r"inference\.members: expected int >= 1 or 'detectors'"):
        count({"members": "detector"})
    types = {o.name: o.type for o in describe(BootstrapEnsemble.Options)}
    assert types == {"members": "int >= 1 or 'detectors'", "size": "int >= 1", "bootstrap": "bool"}


# -- the combined detector -----------------------------------------------------------------------
def test_ensemble_detector_concatenates_members_and_samples_one_row_each():
    from bnnkit.model.detector import Detector
    from bnnkit.model.ensemble import EnsembleDetector
    from bnnkit_plugins.backbone_timm import create_timm_backbone
    from bnnkit_plugins.head_linear import LinearHead

    torch.manual_seed(0)
    members = []
    for _ in range(M):
        backbone = create_timm_backbone("test_resnet", pretrained=False)
        members.append(
            Detector(backbone, torch.nn.Identity(), LinearHead(backbone.out_channels, 2))
        )
    ensemble = EnsembleDetector(members).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats = ensemble.features(x)
        own = [m.eval().features(x) for m in members]
        logits = ensemble.head.sample_logits(feats, k=17)
    d = members[0].feature_dim
    assert feats.shape == (4, M * d) and ensemble.feature_dim == M * d
    torch.testing.assert_close(feats, torch.cat(own, dim=1))
    assert logits.shape == (M, 4, 2)  # one row per member, whatever k
    for m, member in enumerate(members):
        torch.testing.assert_close(logits[m], member.head(own[m]))
    mixture = torch.softmax(logits, -1).mean(0).log()
    torch.testing.assert_close(ensemble.head(feats), mixture)
    assert set(ensemble.member(1).state_dict()) == set(members[1].state_dict())


# -- training, resume, predict, evaluate ---------------------------------------------------------
def test_members_are_whole_detectors_whose_backbones_differ(uninterrupted):
    run = uninterrupted
    record = json.loads(RunLayout(run).members_record.read_text())
    assert [m["complete"] for m in record["members"]] == [True] * M
    meta = json.loads(RunLayout(run).checkpoint.read_text())
    assert meta["complete"] and meta["method_meta"]["backbone_passes"] == M
    weights = _weights(run)
    conv = sorted(k for k in weights if k.startswith("backbone.0.") and k.endswith("weight"))[0]
    for a in range(M):
        member = _weights(RunLayout(run).member(a))
        for key, value in member.items():  # the run's checkpoint holds each member's weights
            prefix = {"backbone": "backbone", "attention": "attention", "head": "head.heads"}
            kind, rest = key.split(".", 1)
            if kind in prefix:
                torch.testing.assert_close(weights[f"{prefix[kind]}.{a}.{rest}"], value)
        for b in range(a + 1, M):
            other = conv.replace("backbone.0.", f"backbone.{b}.")
            assert not torch.equal(weights[conv.replace("backbone.0.", f"backbone.{a}.")],
                                   weights[other])  # fmt: skip


def test_resume_skips_finished_members_and_matches_uninterrupted(
    uninterrupted, synth_root, tmp_path, monkeypatch, runner
):
    from bnnkit.cli import main
    from bnnkit.engine.train.members import EnsembleTrainer
    from bnnkit.methods.base import InferenceMethod

    runs, cache = tmp_path / "runs", tmp_path / "cache"
    real_train_member = EnsembleTrainer._train_member

    def killed_before_member_1(self, index, sub):
        if index == 1:
            raise Killed  # between members: member 0 finished, member 1 not started
        return real_train_member(self, index, sub)

    with monkeypatch.context() as m:
        m.setattr(EnsembleTrainer, "_train_member", killed_before_member_1)
        with pytest.raises(Killed):
            _train(synth_root, runs, cache)
    run = _only_run(runs)
    m0 = RunLayout(run).member(0)
    stamp = {p.name: p.stat().st_mtime_ns for p in m0.iterdir() if p.is_file()}
    assert not RunLayout(run).checkpoint.exists()

    def ctrl_c_before_member_1(self, index, sub):  # SIGINT outside a member's own handler
        if index == 1:
            raise KeyboardInterrupt
        return real_train_member(self, index, sub)

    with monkeypatch.context() as m:
        m.setattr(EnsembleTrainer, "_train_member", ctrl_c_before_member_1)
        stopped = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert stopped.exit_code == 128 + signal.SIGINT, stopped.output
    assert "stopped between members; 1 of 3 finished" in stopped.output.replace("\n", " ")
    assert "Traceback" not in stopped.output
    early = runner.invoke(main, ["evaluate", str(run), "--no-plots"])  # not combined yet
    assert early.exit_code == 2 and "members are not all trained" in early.output, early.output
    assert f"bnnkit train --resume {run}" in early.output.replace("\n", "")
    from bnnkit.api import Run
    from bnnkit.errors import UsageError

    with pytest.raises(UsageError, match="members are not all trained"):  # the API's path
        Run(run).evaluate(device="cpu", plots=False)

    calls = {"n": 0}

    def sigint_after_an_epoch(self, epoch):  # inside member 1: a clean stop, checkpoint saved
        calls["n"] += 1
        if calls["n"] == 1:
            signal.raise_signal(signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(InferenceMethod, "after_epoch", sigint_after_an_epoch)
        second = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert second.exit_code == 128 + signal.SIGINT, second.output
    assert "member 2 of 3: SIGINT" in second.output
    assert f"bnnkit train --resume {run}" in second.output.replace("\n", "")
    assert not json.loads(RunLayout(RunLayout(run).member(1)).checkpoint.read_text())["complete"]

    third = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert third.exit_code == 0, third.output
    assert "resumed from member 2 of 3, finetune epoch 2" in third.output
    assert {p.name: p.stat().st_mtime_ns for p in m0.iterdir() if p.is_file()} == stamp
    resumed, baseline = _weights(run), _weights(uninterrupted)
    assert resumed.keys() == baseline.keys()
    for key in baseline:  # CPU, no workers: resuming is exact
        torch.testing.assert_close(resumed[key], baseline[key], rtol=0, atol=0)
    again = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert again.exit_code == 2 and "already complete" in again.output


def test_predict_and_evaluate_accept_the_run_with_epistemic_everywhere(uninterrupted, synth_root):
    from bnnkit.api import Run

    run = Run.load(uninterrupted)
    rows = run.predict([synth_root], samples=8)
    assert len(rows) > 20 and all(r["error"] is None for r in rows)
    assert min(r["epistemic"] for r in rows) > 0  # M members disagree on every image
    invoke(["evaluate", str(uninterrupted), "--no-plots", "--ood", "midjourney"])
    timing = json.loads(RunLayout(uninterrupted).timing.read_text())
    assert timing["predict_seconds_per_image"] > 0


def test_frozen_pretrained_backbone_is_refused_and_member_resume_too(
    synth_root, tmp_path, uninterrupted, runner
):
    from bnnkit.cli import main

    runs = tmp_path / "runs"
    result = _train(synth_root, runs, tmp_path / "cache", **{
        "train.backbone": '"frozen"', "model.backbone.pretrained": True})  # fmt: skip
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", " ")
    assert 'train.backbone: "frozen" with pretrained weights' in text
    assert "model.backbone.pretrained = false" in text
    assert not any(runs.iterdir())  # no half-made run left behind
    # hub weights that cannot be fetched (HF_HUB_OFFLINE): the first member fails to build, and
    # the ensemble's folder (recipe, members.json, an empty members/m0) is not left behind
    result = _train(synth_root, runs, tmp_path / "cache", **{"model.backbone.pretrained": True})
    assert result.exit_code != 0 and "could not load pretrained weights" in result.output
    assert not any(runs.iterdir()), sorted(p.name for p in runs.rglob("*"))
    recipe = tmp_path / "ens.toml"  # `recipes validate` says it before any training
    recipe.write_text(DEEP.read_text().replace('backbone = "finetune"', 'backbone = "frozen"')
                      .replace("pretrained = false", "pretrained = true"))  # fmt: skip
    result = runner.invoke(main, ["recipes", "validate", str(recipe)])
    assert result.exit_code == 2 and "with pretrained weights" in result.output, result.output
    member = RunLayout(uninterrupted).member(0)
    result = runner.invoke(main, ["train", "--resume", str(member)])
    assert result.exit_code == 2 and "resume the ensemble" in result.output


def test_frozen_random_backbones_train_and_predict(synth_root, tmp_path):
    from bnnkit.api import Run

    sets = {"train.backbone": '"frozen"', "inference.size": 2, "inference.bootstrap": False}
    result = _train(synth_root, tmp_path / "runs", tmp_path / "cache", **sets)
    assert result.exit_code == 0, result.output
    rows = Run.load(_only_run(tmp_path / "runs")).predict([synth_root / "imagenet_midjourney"])
    assert rows and min(r["epistemic"] for r in rows) > 0


def test_member_bootstrap_resamples_the_training_split(synth_root, tmp_path):
    from bnnkit.engine.train.distributed import DistInfo
    from bnnkit.engine.train.members import MemberData, member_recipe
    from bnnkit.recipe import load_recipe

    r = load_recipe(str(DEEP), [f'data.root="{synth_root}"'])

    def split(index: int, resample: bool) -> list[str]:
        mrec = member_recipe(r, index)
        data = MemberData(mrec, torch.device("cpu"), DistInfo(), tmp_path, resample=resample)
        return [str(s.path) for s in data.splits()[0]]

    plain, first, second = split(0, False), split(0, True), split(1, True)
    assert len(first) == len(plain) and set(first) < set(plain)  # N draws, with repeats
    assert first == split(0, True) and first != second  # seeded per member
    assert first == sorted(first, key=plain.index)  # generators stay together


def test_members_are_described_as_members_in_the_terminal_report_and_curves(uninterrupted):
    """The last line, report.md and training_curves.png speak of M member detectors trained for
    E epochs each, not of M x E + 1 epochs of one detector with K samples over its head."""
    from bnnkit.report import read_history
    from bnnkit.report.history import member_history
    from bnnkit.report.plots import training_curves_figure

    last = TRAIN_OUTPUT["train"].strip().splitlines()[-2]  # before "next: bnnkit evaluate"
    assert f"{M} member detectors, train acc" in last and "train acc -" not in last, last
    assert "ensemble val acc" in last
    history = read_history(uninterrupted)
    members = member_history(history)
    assert members is not None and len(set(members.epochs())) == 1
    epochs = members.epochs()[0]  # each member's own epochs (tiny: one)
    assert members.ensemble is not None and members.ensemble["phase"] == "ensemble"

    invoke(["evaluate", str(uninterrupted), "--ood", "midjourney"])
    report = RunLayout(uninterrupted).report.read_text()
    assert "over the head only" not in report and f"{M} whole member detectors" in report
    assert f"{M} member detectors trained one after another, {epochs} epoch(s) each" in report
    assert f"Training: {len(history)} epoch(s)" not in report

    fig = training_curves_figure(history)
    ax_loss, ax_acc = fig.axes
    for ax in (ax_loss, ax_acc):  # one line per member (train and validation), each from 1
        lines = [line for line in ax.get_lines() if line.get_linestyle() in ("-", "--")]
        assert len(lines) == 2 * M
        assert all(list(line.get_xdata()) == list(range(1, epochs + 1)) for line in lines)
        assert ax.get_xlabel() == "epoch of each member"
    assert [t.get_text() for t in ax_acc.get_legend().get_texts()] == [
        *(f"member {i + 1}" for i in range(M)),
        "ensemble (validation)",
    ]
