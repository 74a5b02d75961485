"""The working core end to end through the CLI: plugins, data, train, evaluate, predict."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import click
from helpers import QUICKSTART, tiny_overrides

from bnnkit import __version__
from bnnkit.cli import main

COMMANDS = {
    "calibrate": None,
    "compare": None,
    "data": {"synth", "check"},
    "devices": None,
    "evaluate": None,
    "export": None,
    "plugins": None,
    "predict": None,
    "protocol": None,
    "pull": None,
    "recipes": {"list", "show", "validate", "copy"},
    "train": None,
}


def test_registered_commands_each_answer_help(runner):
    """The click commands actually registered on ``main`` (not words of its docstring), each
    invocable with ``--help``, and each listed in the group's own help."""
    assert set(main.commands) == set(COMMANDS)
    listing = runner.invoke(main, ["--help"])
    assert listing.exit_code == 0, listing.output
    section = listing.output.split("Commands:", 1)[1]
    listed = re.findall(r"^  (\S+)", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)
    for name, subcommands in COMMANDS.items():
        command = main.commands[name]
        paths = [[name]]
        if subcommands is not None:
            assert isinstance(command, click.Group) and set(command.commands) == subcommands
            paths += [[name, sub] for sub in sorted(subcommands)]
        for path in paths:
            result = runner.invoke(main, [*path, "--help"], prog_name="bnnkit")
            assert result.exit_code == 0, (path, result.output)
            assert result.output.startswith(f"Usage: bnnkit {' '.join(path)} "), result.output


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_plugins_lists_builtins(runner):
    result = runner.invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    have = {(p["kind"], p["name"]): p for p in data["plugins"]}
    for key in [("backbone", "timm"), ("attention", "none"), ("attention", "spatial"),
                ("attention", "se"), ("head", "linear"), ("head", "dropout"), ("head", "bbb"),
                ("method", "map"), ("method", "bbb"), ("method", "mcdropout"),
                ("attention", "cbam"), ("head", "lrt"), ("method", "lrt"), ("method", "sgld"),
                ("method", "psgld"), ("method", "sghmc"), ("method", "kflaplace"),
                ("method", "ensemble")]:  # fmt: skip
        assert key in have, key
        assert have[key]["package"] == "bnnkit" and have[key]["version"] == __version__
    assert have[("method", "bbb")]["heads"] == ["bbb"]
    assert data["broken"] == [] and data["conflicts"] == []
    table = runner.invoke(main, ["plugins"])
    assert table.exit_code == 0 and "mcdropout" in table.output


def test_data_synth_and_check(runner, tmp_path):
    root = tmp_path / "synth"
    args = ["data", "synth", str(root), "--train-per-class", "2", "--val-per-class", "1",
            "--size", "32"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 48 images for 8 generators" in result.output
    again = runner.invoke(main, [*args, "--exist-ok"])
    assert "already there" in again.output
    (root / "imagenet_ai_0508_adm" / "train" / "ai" / "broken.png").write_bytes(b"")
    result = runner.invoke(main, ["data", "check", str(root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["generators"]) == {
        "adm", "biggan", "glide", "midjourney", "sdv4", "sdv5", "vqdm", "wukong",
    }  # fmt: skip
    assert report["counts"]["adm"]["train"]["ai"] == {"files": 3, "readable": 2}
    assert report["counts"]["sdv4"]["val"]["nature"]["files"] == 1
    assert [Path(b["path"]).name for b in report["broken"]] == ["broken.png"]
    table = runner.invoke(main, ["data", "check", str(root)])
    assert "broken.png" in table.output and "empty file" in table.output


def test_data_check_missing_root(runner, tmp_path):
    result = runner.invoke(main, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "bnnkit data synth" in result.output


def test_train_writes_run_directory(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"recipe.toml", "model-final.safetensors", "state-final.safetensors",
            "checkpoint.json", "history.csv", "env.json"} <= names  # fmt: skip
    assert len([n for n in names if n.startswith("model-")]) == 1  # older tags cleaned up
    assert not any(n.endswith((".pt", ".pth", ".pkl")) for n in names)
    rows = list(csv.DictReader((trained_run / "history.csv").open()))
    assert len(rows) == 1 and rows[0]["phase"] == "finetune"
    assert {"loss", "nll", "kl", "train_acc", "val_acc"} <= set(rows[0])
    meta = json.loads((trained_run / "checkpoint.json").read_text())
    assert meta["complete"] is True and meta["method"] == "bbb"
    env = json.loads((trained_run / "env.json").read_text())
    assert env["plugins"]["head"]["name"] == "bbb" and env["seed"] == 0


def test_evaluate_latest_run_with_ood(runner, trained_run, tmp_path):
    run = tmp_path / "runs" / trained_run.name  # a copy: the shared run stays unevaluated
    shutil.copytree(trained_run, run)
    result = runner.invoke(main, ["evaluate", "--runs-dir", str(run.parent), "--ood", "midjourney"])
    assert result.exit_code == 0, result.output
    assert "unseen generator: midjourney" in result.output
    assert "epistemic AUROC" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ood_generators"] == ["midjourney"]
    assert metrics["per_generator"]["midjourney"]["seen"] is False
    assert set(metrics["per_generator"]) == {
        "adm", "biggan", "glide", "sdv4", "sdv5", "vqdm", "wukong", "midjourney",
    }  # fmt: skip
    for m in metrics["per_generator"].values():
        assert {"accuracy", "auroc", "nll", "brier", "ece"} <= set(m)
        # BBB's K head samples differ: a real posterior spread on every generator
        assert m["epistemic_uncertainty"] > 0
    assert 0.0 <= metrics["ood"]["midjourney"]["scores"]["mutual_info"]["auroc"] <= 1.0


def test_evaluate_refuses_seen_generator(runner, trained_run):
    result = runner.invoke(main, ["evaluate", str(trained_run), "--ood", "adm"])
    assert result.exit_code == 2
    assert "trained on adm" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["evaluate", str(trained_run), "--ood", "midjorney"])
    assert result.exit_code == 2 and "did you mean 'midjourney'" in result.output


def test_evaluate_without_runs(runner, tmp_path):
    result = runner.invoke(main, ["evaluate", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no finished run" in result.output


def test_predict_formats_and_bad_files(runner, trained_run, synth_root, tmp_path):
    folder = tmp_path / "imgs"
    src = sorted((synth_root / "imagenet_ai_0419_biggan" / "val" / "ai").iterdir())[:2]
    folder.mkdir()
    for p in src:
        shutil.copy(p, folder / p.name)
    (folder / "notes.png").write_text("not an image")
    single = sorted((synth_root / "imagenet_midjourney" / "val" / "nature").iterdir())[0]
    args = ["predict", str(trained_run), str(single), str(folder), str(tmp_path / "missing.png")]
    result = runner.invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    preds = {Path(p["path"]).name: p for p in json.loads(result.output)["predictions"]}
    assert len(preds) == 5
    assert (
        preds["notes.png"]["verdict"] == "error" and "not an image" in preds["notes.png"]["error"]
    )
    assert preds["missing.png"]["verdict"] == "error"
    good = [p for p in preds.values() if p["error"] is None]
    assert len(good) == 3
    for p in good:
        assert 0.0 <= p["p_fake"] <= 1.0
        # 'uncertain' when evaluate's calibrated abstention threshold (written above) is exceeded
        assert p["verdict"] in ("uncertain", "fake" if p["p_fake"] >= 0.5 else "real"), p
        assert p["epistemic"] > 0 and p["aleatoric"] > 0  # BBB: samples differ, none certain
    csv_out = runner.invoke(main, [*args, "--format", "csv"])
    assert csv_out.exit_code == 0
    assert csv_out.output.splitlines()[0].startswith("path,verdict,p_fake")
    table = runner.invoke(main, args)
    assert table.exit_code == 0 and "error" in table.output
    # nothing readable at all: the error rows still come out, and the exit code says so
    bad = runner.invoke(main, ["predict", str(trained_run), str(tmp_path / "missing.png")])
    assert bad.exit_code == 1 and "no file could be predicted" in bad.output


def test_same_seed_gives_identical_metrics(runner, synth_root, tmp_path):
    outs = []
    for i in range(2):
        runs = tmp_path / f"runs{i}"
        args = ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q",
                *tiny_overrides(synth_root)]  # fmt: skip
        assert runner.invoke(main, args).exit_code == 0
        (run,) = list(runs.iterdir())
        assert runner.invoke(main, ["evaluate", str(run), "--json"]).exit_code == 0
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.pop("run")
        outs.append(metrics)
    assert outs[0] == outs[1]


def test_frozen_backbone_reuses_feature_cache(runner, synth_root, tmp_path):
    cache = tmp_path / "cache"
    base = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path / "runs"), "-q",
            "--cache-dir", str(cache),
            *tiny_overrides(synth_root, **{"train.backbone": '"frozen"'})]  # fmt: skip
    first = runner.invoke(main, [*base, "--set", 'inference.name="bbb"'])
    assert first.exit_code == 0, first.output
    manifests = list((cache / "features").glob("*/manifest.json"))
    assert len(manifests) == 14  # train + val, one entry per generator folder (7)
    stamps = {p: p.stat().st_mtime_ns for p in (cache / "features").rglob("*")}
    second = runner.invoke(
        main,
        [*base, "--set", 'inference={name="mcdropout"}', "--set", 'model.head={name="dropout"}'],
    )
    assert second.exit_code == 0, second.output
    assert {p: p.stat().st_mtime_ns for p in (cache / "features").rglob("*")} == stamps
    runs = sorted((tmp_path / "runs").iterdir())
    history = list(csv.DictReader((runs[-1] / "history.csv").open()))
    assert [r["phase"] for r in history] == ["head"]


def test_tensorboard_scalars_beside_history(runner, synth_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path), "-q",
            *tiny_overrides(synth_root, **{"train.log": '["tensorboard"]'})]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    (run,) = list(tmp_path.iterdir())
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"finetune/loss", "finetune/val_acc", "finetune/kl"} <= tags
    assert [e.step for e in events.Scalars("finetune/loss")] == [1]
