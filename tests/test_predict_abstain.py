"""``bnnkit predict`` with a calibrated abstention threshold, and ``--explain`` overlays."""

from __future__ import annotations

import json
import os
import shutil

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bnnkit.cli import main  # noqa: E402

SEEN_VAL = ["imagenet_ai_0508_adm", "imagenet_ai_0419_biggan"]


@pytest.fixture(scope="module")
def calibrated_run(trained_run, tmp_path_factory):
    """A copy of the shared quickstart run, evaluated with a 50% coverage target so that
    about half of the seen validation images lie above the threshold."""
    from click.testing import CliRunner

    run = tmp_path_factory.mktemp("predict") / trained_run.name
    shutil.copytree(trained_run, run)
    args = ["evaluate", str(run), "--coverage", "0.5", "--no-plots", "--abstain-on", "entropy"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return run


def _seen_images(synth_root):
    return [synth_root / g / "val" / c for g in SEEN_VAL for c in ("ai", "nature")]


def _predict(runner, run, *args):
    result = runner.invoke(main, ["predict", str(run), *map(str, args), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_calibrated_threshold_gives_uncertain_verdicts(runner, calibrated_run, synth_root):
    threshold = json.loads((calibrated_run / "threshold.json").read_text())
    # the total predictive entropy (called "entropy" since threshold.json v2)
    assert threshold["score"] == "entropy" and threshold["coverage_target"] == 0.5
    out = _predict(runner, calibrated_run, *_seen_images(synth_root))
    assert out["abstention"]["threshold"] == threshold["threshold"]
    assert out["samples"] == threshold["samples"]  # the K the threshold was calibrated with
    preds = out["predictions"]
    assert len(preds) == 16
    for p in preds:
        assert p["score"] == "entropy" and p["score_value"] == pytest.approx(p["total"])
        above = p["score_value"] > threshold["threshold"]
        assert (p["verdict"] == "uncertain") == above
        if not above:
            assert p["verdict"] == ("fake" if p["p_fake"] >= 0.5 else "real")
    verdicts = [p["verdict"] for p in preds]
    assert "uncertain" in verdicts and set(verdicts) - {"uncertain"}

    table = runner.invoke(
        main, ["predict", str(calibrated_run), *map(str, _seen_images(synth_root))]
    )
    assert table.exit_code == 0 and "uncertain" in table.output
    assert "calibrated for 50% coverage" in table.output


def test_forced_thresholds_and_opting_out(runner, calibrated_run, synth_root):
    images = _seen_images(synth_root)[:2]
    path = calibrated_run / "threshold.json"
    saved = path.read_text()
    try:
        forced = json.loads(saved)
        forced["threshold"] = -1.0  # below every uncertainty: abstain on everything
        path.write_text(json.dumps(forced))
        assert {p["verdict"] for p in _predict(runner, calibrated_run, *images)["predictions"]} == {
            "uncertain"
        }
        for flags in (["--no-abstain"], ["--max-uncertainty", "100"]):
            preds = _predict(runner, calibrated_run, *images, *flags)["predictions"]
            assert {p["verdict"] for p in preds} <= {"real", "fake"}
        preds = _predict(runner, calibrated_run, *images, "--max-uncertainty", "0")["predictions"]
        assert {p["verdict"] for p in preds} == {"uncertain"}

        forced["model_sha256"] = "0" * 64  # calibrated for other weights: ignored, with a warning
        path.write_text(json.dumps(forced))
        args = ["predict", str(calibrated_run), *map(str, images), "--format", "json"]
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and "other weights" in result.stderr
        out = json.loads(result.stdout)
        assert out["abstention"] is None
        assert {p["verdict"] for p in out["predictions"]} <= {"real", "fake"}
    finally:
        path.write_text(saved)


def test_explain_writes_overlay_beside_the_json(runner, calibrated_run, synth_root, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted((synth_root / "imagenet_midjourney" / "val" / "ai").iterdir())[:2]
    for p in src:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"not an image at all")
    out_json = tmp_path / "out" / "preds.json"
    result = runner.invoke(
        main, ["predict", str(calibrated_run), str(folder), "--explain", "--format", "json",
               "-o", str(out_json)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    preds = {
        os.path.basename(p["path"]): p for p in json.loads(out_json.read_text())["predictions"]
    }
    assert preds["broken.png"]["verdict"] == "error"  # reported, the others carry on
    for p in src:
        row = preds[p.name]
        assert row["error"] is None and row["verdict"] in ("real", "fake", "uncertain")
        png = out_json.parent / f"{p.stem}.explain.png"
        assert row["explain"] == str(png)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width >= 500

    # Default folder RUN/explain/; verdicts do not depend on --explain (its sampling is forked).
    plain = _predict(runner, calibrated_run, folder)["predictions"]
    result = runner.invoke(main, ["predict", str(calibrated_run), str(src[0]), "--explain"])
    assert result.exit_code == 0, result.output
    assert (calibrated_run / "explain" / f"{src[0].stem}.explain.png").is_file()
    assert [p["p_fake"] for p in plain] == [
        preds[os.path.basename(p["path"])]["p_fake"] for p in plain
    ]


def test_attention_map_comes_from_the_spatial_mask_or_the_feature_norm(calibrated_run):
    from torch import nn

    from bnnkit.engine.build import load_run
    from bnnkit.engine.predict.explain import attention_maps

    _, detector, _, _ = load_run(calibrated_run, torch.device("cpu"))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = detector.feature_map(images)
    maps, label = attention_maps(detector, fmap)
    assert label.startswith("attention mask")
    assert maps.shape == fmap.shape[:1] + fmap.shape[2:]
    assert torch.equal(maps, detector.attention.last_map[:, 0])

    detector.attention = nn.Identity()  # e.g. attention "none": no mask to show
    maps, label = attention_maps(detector, fmap)
    assert label.startswith("feature-map norm")
    assert torch.allclose(maps, fmap.norm(dim=1))


def test_the_default_abstention_score_is_the_preregistered_one(runner, trained_run, tmp_path):
    """evaluate abstains on ``rel_mahalanobis`` unless told otherwise (the score pre-registered
    on benchmarks/unseen.py, whose constant must agree), and on ``entropy`` with --tiles (a
    tiled image has no one feature vector); the help says both."""
    from pathlib import Path

    from bnnkit.metrics.schema import DEFAULT_ABSTAIN_SCORE

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "unseen.py"
    text = path.read_text()
    assert f'DEFAULT_ABSTAIN = "{DEFAULT_ABSTAIN_SCORE}"' in text
    assert DEFAULT_ABSTAIN_SCORE == "rel_mahalanobis"
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    result = runner.invoke(main, ["evaluate", str(run), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "threshold.json").read_text())["score"] == "rel_mahalanobis"
    result = runner.invoke(main, ["evaluate", str(run), "--no-plots", "--tiles"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "threshold.json").read_text())["score"] == "entropy"
    help_text = runner.invoke(main, ["evaluate", "--help"]).output
    assert "default: rel_mahalanobis" in help_text
