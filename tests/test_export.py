"""Portable model folders: ``bnnkit export RUN DIR`` (Hugging Face shape, still a run directory)
and ``bnnkit pull REPO_ID``; predict, evaluate and ``Run.load`` read an export as the run."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import QUICKSTART, RECIPES, invoke, train_and_evaluate
from safetensors import safe_open

from bnnkit import Run, __version__
from bnnkit.cli import main
from bnnkit.run.checkpoint import find_checkpoint
from bnnkit.run.export import export_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _images(root: Path, n: int = 4) -> list[Path]:
    """A few validation images: fakes and reals, a seen and the held-out generator."""
    found = sorted(root.glob("*/val/*/*.png"))
    return [found[i] for i in range(0, len(found), max(1, len(found) // n))][:n]


def _without_paths(tree):
    """The JSON of a prediction with every path (of the image, of the run) removed."""
    if isinstance(tree, dict):
        return {k: _without_paths(v) for k, v in tree.items() if k not in ("path", "run")}
    if isinstance(tree, list):
        return [_without_paths(v) for v in tree]
    return tree


def _predict_json(run: Path, images: list[Path], *extra: str) -> dict:
    return json.loads(invoke(["predict", run, *images, "--format", "json", *extra]))


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory) -> Path:
    """A copy of the shared run, calibrated and then evaluated (threshold, temperature, fits)."""
    run = tmp_path_factory.mktemp("export") / trained_run.name
    shutil.copytree(trained_run, run)
    invoke(["calibrate", run])
    invoke(["evaluate", run, "--no-plots"])
    return run


@pytest.fixture(scope="module")
def exported(evaluated) -> Path:
    dest = evaluated.parent / "detector"
    out = invoke(["export", evaluated, dest])
    assert f"-> {dest}" in out
    return dest


def test_export_predicts_like_the_run(evaluated, exported, synth_root):
    """The acceptance check: the same verdicts, probabilities and uncertainties, row for row,
    through the CLI and through Run.load (abstention on, the run's temperature applied)."""
    images = _images(synth_root)
    from_run, from_export = _predict_json(evaluated, images), _predict_json(exported, images)
    assert from_run["predictions"] and from_run["abstention"]["source"] == "threshold.json"
    assert from_run["temperature"] is not None
    assert _without_paths(from_export) == _without_paths(from_run)
    assert [r["path"] for r in from_export["predictions"]] == [str(p) for p in images]
    rows = Run.load(exported).predict(images)
    assert _without_paths(rows) == _without_paths(Run.load(evaluated).predict(images))
    assert _without_paths(rows) == _without_paths(from_run["predictions"])


def test_export_has_the_hugging_face_shape(evaluated, exported):
    files = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
    threshold = json.loads((evaluated / "threshold.json").read_text())
    fits = {f"scores/{threshold['score']}.{ext}" for ext in ("json", "safetensors")}
    assert files == {
        "README.md", "config.json", "model.safetensors", "state.safetensors", "checkpoint.json",
        "recipe.toml", "threshold.json", "temperature.json", "metrics.json", *fits,
    }  # fmt: skip
    found = find_checkpoint(evaluated)
    model = found.root / found.files["model"]
    assert (exported / "model.safetensors").read_bytes() == model.read_bytes()  # as stored
    with safe_open(str(exported / "state.safetensors"), framework="pt") as fh:
        names = fh.keys()
    assert not [k for k in names if not k.startswith("s.method")]  # no optimiser or RNG state
    meta = json.loads((exported / "checkpoint.json").read_text())
    assert not {"history", "broken", "feature_cache"} & set(meta)
    assert meta["files"] == {"model": "model.safetensors", "state": "state.safetensors"}

    config = json.loads((exported / "config.json").read_text())
    assert config["library_name"] == "bnnkit" and config["bnnkit_version"] == __version__
    assert config["recipe"] == tomllib.loads((evaluated / "recipe.toml").read_text())
    assert config["normalisation"] == found.meta["normalisation"]
    assert config["feature_dim"] == found.meta["feature_dim"]
    assert config["method_meta"] == found.meta["method_meta"]
    assert config["plugins"]["method"]["name"] == "bbb"
    assert config["plugins"]["frontend"] == {"name": "laplacian"}


def test_model_card_quotes_the_run(evaluated, exported):
    card = (exported / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: bnnkit" in front and "license: other" in front
    assert "depends-on-training-data" in front and '- "bnnkit"' in front
    metrics = json.loads((evaluated / "metrics.json").read_text())
    temperature = json.loads((evaluated / "temperature.json").read_text())
    block = metrics["abstention"]["by_score"][metrics["abstention"]["score"]]
    seen = metrics["seen"]
    assert f"| seen generators | {seen['n']} | {100 * seen['accuracy']:.1f} % |" in body
    assert f"{seen['auroc']:.3f}" in body and "| unseen generators |" in body
    assert f"`{metrics['abstention']['score']}` is above {block['threshold']:.4f}" in body
    assert f"seen images kept: {100 * block['seen']['coverage']:.1f} %" in body
    assert f"Temperature T = {temperature['temperature']:.4f}" in body
    assert "fitted on the calibration split" in body
    assert "training data's terms" in body


def test_evaluate_accepts_an_export(evaluated, exported, tmp_path):
    """evaluate writes into the exported folder and measures what it measured on the run."""
    dest = tmp_path / "copy"
    shutil.copytree(exported, dest)
    invoke(["evaluate", dest, "--no-plots"])
    got = json.loads((dest / "metrics.json").read_text())
    want = json.loads((evaluated / "metrics.json").read_text())
    for key in ("seen", "unseen", "per_generator", "abstention", "temperature"):
        assert got[key] == want[key], key
    assert (dest / "predictions.csv").is_file()


def test_unevaluated_run_exports_without_numbers(trained_run, tmp_path, synth_root):
    # a copy without evaluation files: other tests evaluate the shared run (order-dependent)
    plain_run = tmp_path / "run"
    shutil.copytree(trained_run, plain_run)
    for name in ("metrics.json", "threshold.json"):
        (plain_run / name).unlink(missing_ok=True)
    dest = tmp_path / "plain"
    result = export_run(plain_run, dest)
    assert not result.evaluated and any("not evaluated" in n for n in result.notes)
    assert not (dest / "threshold.json").exists() and not (dest / "metrics.json").exists()
    card = (dest / "README.md").read_text()
    assert "Not evaluated" in card and "%" not in card.split("## Evaluation")[1]
    images = _images(synth_root, 2)
    assert _without_paths(_predict_json(dest, images)) == _without_paths(
        _predict_json(trained_run, images)
    )


def test_export_refusals(trained_run, exported, tmp_path):
    code, out = _cli(["export", trained_run, exported])  # an earlier export: needs --force
    assert code == 2 and "--force" in out
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    code, out = _cli(["export", trained_run, other, "--force"])
    assert code == 2 and "replaces only" in out and (other / "a.txt").is_file()
    code, out = _cli(["export", trained_run, trained_run])
    assert code == 2 and "into itself" in out
    hf_only = tmp_path / "hf"
    hf_only.mkdir()
    (hf_only / "config.json").write_text("{}")
    code, out = _cli(["predict", hf_only, "x.png"])
    assert code == 2 and "not a bnnkit run or export" in out


def test_export_force_replaces_an_export(trained_run, tmp_path):
    dest = tmp_path / "again"
    export_run(trained_run, dest)
    (dest / "stale.txt").write_text("old")
    code, out = _cli(["export", trained_run, dest, "--force"])
    assert code == 0, out
    assert not (dest / "stale.txt").exists() and (dest / "model.safetensors").is_file()


def test_export_refuses_an_unfinished_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**meta, "complete": False}))
    code, out = _cli(["export", run, tmp_path / "out"])
    assert code == 2 and "has not finished training" in out
    assert not (tmp_path / "out").exists()


def test_resume_of_an_export_is_refused(exported, tmp_path):
    dest = tmp_path / "resume"
    shutil.copytree(exported, dest)
    code, out = _cli(["train", "--resume", dest])
    assert code == 2 and "already complete" in out


@pytest.mark.parametrize(
    ("recipe", "sets"),
    [
        (QUICKSTART, {"train.backbone": '"frozen"'}),
        (RECIPES / "quickstart_deep_ensemble.toml", {"inference.size": "2", "train.epochs": "1"}),
    ],
    ids=["frozen", "deep-ensemble"],
)
def test_frozen_and_ensemble_runs_export(recipe, sets, synth_root, tmp_path):
    """A frozen run (its feature cache is local and left behind) and a whole-detector ensemble
    (its members/ stay behind: the ensemble's own checkpoint holds every member)."""
    run = train_and_evaluate(recipe, tmp_path, data=synth_root, backbone=None, sets=sets).run
    meta = find_checkpoint(run).meta
    if "ensemble" in recipe.name:
        assert (run / "members").is_dir() and meta["method"] == "ensemble"
    else:
        assert Path(meta["feature_cache"]).is_dir()  # the training machine's cache
    dest = tmp_path / "detector"
    export_run(run, dest)
    assert not (dest / "members").exists() and (dest / "threshold.json").is_file()
    assert "feature_cache" not in json.loads((dest / "checkpoint.json").read_text())
    images = _images(synth_root, 3)
    assert _without_paths(_predict_json(dest, images)) == _without_paths(_predict_json(run, images))


def test_pull_offline_fails_fast_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code, out = _cli(["pull", "someone/detector", tmp_path / "d"])
    assert code == 2
    assert "cannot fetch 'someone/detector'" in out and "HF_HUB_OFFLINE" in out
    assert not (tmp_path / "d").exists()
    code, out = _cli(["pull", "not a repo id", tmp_path / "d"])
    assert code == 2 and "not a repository id" in out


def test_pull_from_an_emulated_hub(exported, tmp_path, monkeypatch, synth_root):
    """The success path, with snapshot_download emulated by a local 'hub' of exported folders."""
    hub = {"someone/detector": exported, "someone/other": exported / "scores"}
    calls = []

    def snapshot_download(repo_id, *, local_dir, **kwargs):
        calls.append((repo_id, kwargs.get("library_name"), kwargs.get("etag_timeout")))
        shutil.copytree(hub[repo_id], local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    dest = tmp_path / "pulled"
    assert f"-> {dest}" in invoke(["pull", "someone/detector", dest])
    assert calls == [("someone/detector", "bnnkit", 10.0)]
    images = _images(synth_root, 2)
    assert _without_paths(_predict_json(dest, images)) == _without_paths(
        _predict_json(exported, images)
    )
    code, out = _cli(["pull", "someone/other", tmp_path / "other"])
    assert code == 2 and "is not a bnnkit export" in out


def test_a_partial_checkpoint_exports_its_base_reference(trained_run, tmp_path):
    """A lora/partial run's model file holds only what trains, with a reference to the base
    in checkpoint.json: the file is copied as stored, the reference goes along and is said."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "checkpoint.json").read_text())
    base = {"mode": "lora", "backbone": "test_resnet", "pretrained": "/data/base.safetensors",
            "digest": "0" * 64}  # fmt: skip
    (run / "checkpoint.json").write_text(json.dumps({**meta, "base": base}))
    result = export_run(run, tmp_path / "out")
    assert any("only the lora weights" in n and "(not in the folder)" in n for n in result.notes)
    assert json.loads((result.path / "checkpoint.json").read_text())["base"] == base
    assert json.loads((result.path / "config.json").read_text())["base"] == base
    card = (result.path / "README.md").read_text()
    assert "only the lora tensors; the base is rebuilt from the file /data/base.safetensors" in card


def test_metrics_of_other_weights_are_left_out_of_an_export(evaluated, tmp_path):
    """metrics.json is quoted only when its evaluation's threshold.json holds these weights'
    sha256; a run trained further since shows no numbers that belong to other weights."""
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    threshold = json.loads((run / "threshold.json").read_text())
    threshold["model_sha256"] = "0" * 64  # as if the run had been trained further since
    (run / "threshold.json").write_text(json.dumps(threshold))
    result = export_run(run, tmp_path / "out")
    assert not result.evaluated and "metrics.json" not in result.files
    assert any("metrics.json cannot be tied to these weights" in n for n in result.notes)
    assert "Not evaluated" in (tmp_path / "out" / "README.md").read_text()
