"""``data.debias`` (bnnkit.data.debias): GenImage's JPEG/size shortcut controlled.

The acceptance test trains on a synthetic stand-in whose only cue is the format
(``bnnkit data synth --strength 0``: no generator fingerprint; reals JPEG q96 of varying size,
fakes PNG of one size): a detector trained on the raw data collapses under ``--debias jpeg96``
evaluation, one trained with ``jpeg96`` does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import QUICKSTART, invoke, train_and_evaluate
from PIL import Image

from bnnkit.data.dataset import ImageDataset
from bnnkit.data.debias import (
    JPEG96_QUALITY,
    jpeg_quality,
    normalise_debias,
    reencode_jpeg,
    size_match,
)
from bnnkit.data.genimage import Sample
from bnnkit.errors import UsageError
from bnnkit.run import RunLayout

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(pixels).save(path, format=fmt, **({"quality": 96} if fmt == "JPEG" else {}))
    return path


# --------------------------------------------------------------------------- units


def test_controls_checked_in_canonical_order():
    assert normalise_debias(["size_matched", "JPEG96", "jpeg96"]) == ["jpeg96", "size_matched"]
    assert normalise_debias(None) == []
    with pytest.raises(UsageError, match="png96"):
        normalise_debias(["png96"])
    from bnnkit.recipe import load_recipe

    assert load_recipe(str(QUICKSTART)).data.debias == []
    r = load_recipe(str(QUICKSTART), ['data.debias=["jpeg96"]'])
    assert r.data.debias == ["jpeg96"]
    with pytest.raises(Exception, match="debias"):
        load_recipe(str(QUICKSTART), ['data.debias=["png96"]'])


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 96, 100])
def test_jpeg_quality_read_from_the_quantisation_tables(tmp_path, quality):
    path = tmp_path / "x.jpg"
    Image.fromarray(np.full((24, 24, 3), 120, np.uint8)).save(path, quality=quality)
    assert jpeg_quality(path) == quality
    assert jpeg_quality(_image(tmp_path / "y.png", 8, 8)) is None  # not a JPEG


def test_jpeg96_reencodes_fakes_only_and_deterministically(tmp_path):
    real = _image(tmp_path / "real.jpg", 40, 32, seed=1)
    fake = _image(tmp_path / "fake.png", 32, 32, seed=2)
    samples = [Sample(real, 0, "sdv4"), Sample(fake, 1, "sdv4")]
    plain = ImageDataset(samples, np.asarray, ["sdv4"])
    debiased = ImageDataset(samples, np.asarray, ["sdv4"], debias=("jpeg96",))
    (r0, *_), (f0, *_) = plain[0], plain[1]
    (r1, *_), (f1, *_) = debiased[0], debiased[1]
    assert np.array_equal(r0, r1)  # reals untouched
    assert not np.array_equal(f0, f1)  # fakes re-encoded ...
    expected = np.asarray(reencode_jpeg(Image.open(fake).convert("RGB"), JPEG96_QUALITY))
    assert np.array_equal(f1, expected)  # ... at quality 96
    assert np.array_equal(debiased[1][0], f1)  # the same bytes every time


def test_size_matched_keeps_reals_in_the_fakes_band(tmp_path):
    def sample(name, w, h, label, gen="sdv4"):
        ext = ".jpg" if label == 0 else ".png"
        return Sample(_image(tmp_path / f"{name}{ext}", w, h), label, gen)

    fakes = [sample("f1", 64, 64, 1), sample("f2", 72, 90, 1), sample("f3", 64, 64, 1)]
    reals = [
        sample("r_small", 100, 60, 0),  # shorter side 60 < 64: out
        sample("r_in", 200, 64, 0),  # 64: in
        sample("r_big", 100, 100, 0),  # 100 > 72: out
        sample("r_in2", 70, 80, 0),  # 70: in
    ]
    other = [sample("o_real", 300, 300, 0, "adm")]  # no fakes of adm: its reals stay
    kept = size_match(fakes + reals + other, balance=False)
    names = [s.path.stem for s in kept]
    assert names == ["f1", "f2", "f3", "r_in", "r_in2", "o_real"]
    balanced = [s.path.stem for s in size_match(fakes + reals + other, balance=True)]
    assert balanced == ["f1", "f2", "r_in", "r_in2", "o_real"]  # fakes cut to the reals left
    with pytest.raises(UsageError, match=r"sdv4.*\[64, 72\]"):
        size_match(fakes + [reals[0], reals[2]])


def test_feature_cache_key_holds_the_controls():
    from bnnkit.engine.features.cache import model_digest
    from bnnkit.recipe import load_recipe

    detector = SimpleNamespace(
        backbone=torch.nn.Linear(2, 2), attention=torch.nn.Identity(), pool="avg",
        input_filter_name="none", normalisation=SimpleNamespace(to_dict=lambda: {}),
    )  # fmt: skip
    raw = load_recipe(str(QUICKSTART))
    debiased = load_recipe(str(QUICKSTART), ['data.debias=["jpeg96"]'])
    assert model_digest(detector, raw) != model_digest(detector, debiased)
    assert model_digest(detector, raw) == model_digest(detector, load_recipe(str(QUICKSTART)))


# --------------------------------------------------------------------------- acceptance


@pytest.fixture(scope="module")
def shortcut_root(tmp_path_factory) -> Path:
    """Format (and size) as the only cue: no fingerprints, sdv4 and adm, 64 px."""
    root = tmp_path_factory.mktemp("shortcut")
    invoke(["data", "synth", str(root), "--strength", "0", "--size", "64", "--generator", "sdv4",
            "--generator", "adm", "--train-per-class", "80", "--val-per-class", "48"])  # fmt: skip
    return root


_SETS = {
    "data.train_generators": '["sdv4"]',
    "data.holdout": '["adm"]',
    "data.image_size": "64",
    "train.backbone": '"frozen"',  # the Laplacian frontend + a random tiny CNN, head trained
    "train.epochs": "30",
}


def _sdv4_accuracy(run: Path, *debias: str) -> tuple[float, dict]:
    invoke(["evaluate", str(run), "--no-plots", *(a for d in debias for a in ("--debias", d))])
    m = json.loads(RunLayout(run).metrics.read_text(encoding="utf-8"))
    return m["per_generator"]["sdv4"]["accuracy"], m


def test_format_shortcut_collapses_under_jpeg96(tmp_path, shortcut_root):
    raw_run = train_and_evaluate(
        QUICKSTART, tmp_path / "raw", data=shortcut_root, sets=_SETS, backbone=None,
        evaluate=False,
    ).run  # fmt: skip
    acc_raw, m_raw = _sdv4_accuracy(raw_run)
    acc_ctrl, m_ctrl = _sdv4_accuracy(raw_run, "jpeg96")
    assert "debias" not in m_raw
    assert m_ctrl["debias"]["controls"] == ["jpeg96"]
    assert m_ctrl["debias"]["fake_jpeg_quality"] == 96
    assert m_ctrl["debias"]["reals_estimated_quality"]["median"] == 96  # synth reals: q96
    # measured: 0.917 raw, 0.458 under jpeg96 (the detector learned "PNG = fake")
    assert acc_raw - acc_ctrl >= 0.20, (acc_raw, acc_ctrl)

    fair_run = train_and_evaluate(
        QUICKSTART, tmp_path / "fair", data=shortcut_root,
        sets={**_SETS, "data.debias": '["jpeg96"]'}, backbone=None, evaluate=False,
    ).run  # fmt: skip
    assert 'debias = [\n    "jpeg96",\n]' in RunLayout(fair_run).recipe.read_text()
    own, m_own = _sdv4_accuracy(fair_run)  # evaluated as trained: under jpeg96
    assert m_own["debias"]["controls"] == ["jpeg96"]
    raw_eval, m_none = _sdv4_accuracy(fair_run, "none")
    assert "debias" not in m_none
    # measured: 0.615 under jpeg96, 0.354 raw: no loss under the controlled evaluation
    assert own > raw_eval - 0.20, (own, raw_eval)


def test_protocol_prints_raw_and_controlled_tables(tmp_path, shortcut_root):
    out = tmp_path / "proto"
    sets = {"data.root": json.dumps(str(shortcut_root)), "train.backbone": '"frozen"',
            "train.epochs": "2", "data.image_size": "64", "eval.samples": "4"}  # fmt: skip
    args = ["protocol", "sdv4", "--recipe", str(QUICKSTART), "--generators", "sdv4,adm",
            "--out", str(out), "--debias", "jpeg96"]  # fmt: skip
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    text = invoke(args)
    assert "raw data" in text and "jpeg96 (controlled)" in text
    record = json.loads((out / "protocol.json").read_text(encoding="utf-8"))
    assert record["debias"] == ["jpeg96"]
    ctrl = record["controlled"]
    assert all(r["source"] != "published" for r in ctrl["table"])
    assert (out / ctrl["files"]["md"]).is_file()
    (cell,) = record["cells"]
    raw = json.loads(Path(cell["metrics"]).read_text(encoding="utf-8"))
    assert "debias" not in raw  # the main table: the raw data
    controlled = json.loads(Path(ctrl["metrics"][0]).read_text(encoding="utf-8"))
    assert controlled["debias"]["controls"] == ["jpeg96"]
    assert "skipped" in invoke(args)  # done cells (both evaluations) are not redone


def test_an_evaluation_debias_never_moves_training_images_into_calibration(tmp_path):
    """``evaluate --debias size_matched`` narrows the training listing of a run trained without
    it. The calibration images must stay a subset of the run's own (never images it trained
    on): the carve is made on the listing before any debias filter, which then only removes."""
    from bnnkit.data.splits import train_calibration_split
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import load_recipe

    top = tmp_path / "imagenet_ai_0419_sdv4" / "train"
    for label, folder, sides in (
        ("ai", "ai", range(60, 81)),
        ("nature", "nature", range(40, 101, 2)),
    ):
        (top / folder).mkdir(parents=True)
        for i, side in enumerate(sides):
            ext = ".png" if label == "ai" else ".jpg"
            _image(top / folder / f"{label}_{i}{ext}", side, side + 7, seed=i)
    sets = [f"data.root={json.dumps(str(tmp_path))}", 'data.train_generators=["sdv4"]',
            "data.holdout=[]", "data.calibration=0.3"]  # fmt: skip
    recipe = load_recipe("quickstart", sets, get_registry())
    trained_on, calibration = (set(map(str, (s.path for s in part)))
                               for part in train_calibration_split(recipe))  # fmt: skip
    recipe.data.debias = ["size_matched"]  # as `evaluate --debias size_matched` sets it
    narrowed_train, narrowed_cal = (set(map(str, (s.path for s in part)))
                                    for part in train_calibration_split(recipe))  # fmt: skip
    assert narrowed_cal and narrowed_cal <= calibration and not narrowed_cal & trained_on
    assert narrowed_train and narrowed_train <= trained_on
    assert len(narrowed_train) + len(narrowed_cal) < len(trained_on) + len(calibration)
