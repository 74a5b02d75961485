"""Tiled prediction (``predict --tiles``, ``evaluate --tiles``): the grid covers the image, the
aggregation is the image-level mixture per posterior sample, the rows carry the tile spread,
explain draws over the whole image, and folders say what they skipped."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnnkit.data.dataset import IMAGENET
from bnnkit.engine.features.tiles import (
    TILE_FIELDS,
    TiledTransform,
    Tiling,
    image_probs,
    tile_grid,
    tile_spread,
)
from bnnkit.engine.predict.explain import stitch
from bnnkit.metrics.records import Predictions

pytestmark = pytest.mark.usefixtures("one_thread")


def _covered(grid) -> np.ndarray:
    mask = np.zeros((grid.height, grid.width), bool)
    for top, left in grid.boxes:
        mask[max(top, 0) : top + grid.size, max(left, 0) : left + grid.size] = True
    return mask


def test_grid_covers_every_pixel_and_respects_max_tiles():
    tiling = Tiling(64)  # overlap 0.25: stride 48
    grid = tile_grid(300, 170, tiling)
    assert grid.scale == 1.0 and (grid.width, grid.height) == (300, 170)
    assert _covered(grid).all()
    # 6 columns (ceil(236 / 48) + 1) x 4 rows (ceil(106 / 48) + 1), all inside the image
    assert len(grid.boxes) == 6 * 4
    assert all(0 <= t <= 170 - 64 and 0 <= x <= 300 - 64 for t, x in grid.boxes)
    assert max(t for t, _ in grid.boxes) == 170 - 64 and max(x for _, x in grid.boxes) == 300 - 64

    for cap in (1, 4, 10):
        small = tile_grid(300, 170, Tiling(64, max_tiles=cap))
        assert len(small.boxes) <= cap
        assert small.scale < 1.0 and _covered(small).all()
        assert small.width == round(300 * small.scale)
    # smaller than a tile: one centred, padded tile like the centre crop
    tiny = tile_grid(40, 20, tiling)
    assert tiny.boxes == ((-22, -12),) and _covered(tiny).all()

    # the tiles are the image's pixels: stitched back, they are the image again
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (170, 300, 3), dtype=np.uint8)
    tiled = TiledTransform(tiling, IMAGENET)(Image.fromarray(pixels))
    assert tiled.tiles.shape == (24, 3, 64, 64)
    back = stitch(IMAGENET.denormalise(tiled.tiles), tiled.grid).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, pixels / 255.0, atol=1e-5)


def _h(p) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_aggregation_equals_a_hand_computation():
    # K = 2 posterior samples, T = 3 tiles; p(fake) per (sample, tile)
    pf = [[0.9, 0.2, 0.1], [0.7, 0.4, 0.1]]
    probs = torch.tensor([[[1 - p, p] for p in row] for row in pf], dtype=torch.float64)
    q = image_probs(probs, "mean")
    rec = Predictions.from_probs(q[:, None])
    q1 = [(0.9 + 0.2 + 0.1) / 3, (0.7 + 0.4 + 0.1) / 3]  # 0.4, 0.4
    p_img = sum(q1) / 2
    total = _h([1 - p_img, p_img])
    aleatoric = (_h([1 - q1[0], q1[0]]) + _h([1 - q1[1], q1[1]])) / 2
    assert float(rec.p_fake[0]) == pytest.approx(p_img)
    assert float(rec.total[0]) == pytest.approx(total)
    assert float(rec.aleatoric[0]) == pytest.approx(aleatoric)
    assert float(rec.epistemic[0]) == pytest.approx(total - aleatoric, abs=1e-12)

    spread = tile_spread(probs)
    per_tile = [0.8, 0.3, 0.1]
    assert spread["tiles"] == 3
    assert spread["tile_p_fake_max"] == pytest.approx(0.8)
    assert spread["tile_p_fake_sd"] == pytest.approx(float(np.std(per_tile)))
    mean_tile_entropy = sum(_h([1 - p, p]) for row in pf for p in row) / 6
    assert spread["tile_disagreement"] == pytest.approx(aleatoric - mean_tile_entropy)

    qmax = image_probs(probs, "max")  # per sample, the largest tile p(fake)
    torch.testing.assert_close(qmax[:, 1], torch.tensor([0.9, 0.7], dtype=torch.float64))
    torch.testing.assert_close(qmax.sum(-1), torch.ones(2, dtype=torch.float64))


def _corner_image(path: Path, size=(320, 240), patch=40) -> Path:
    """A grey image whose only "fake" evidence (pure red) is a square in one corner."""
    pixels = np.full((size[1], size[0], 3), 128, np.uint8)
    pixels[-patch:, -patch:] = (255, 0, 0)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def colour_scorer(monkeypatch):
    """Runs whose detector scores a crop by its mean colour: p(fake) is high when red dominates
    (a stand-in for a detector that has learnt some local artifact)."""
    import bnnkit.engine.predict.run as predict

    real_load = predict.load_run

    def load_run(*args, **kwargs):
        recipe, detector, method, meta = real_load(*args, **kwargs)
        object.__setattr__(detector, "feature_map", lambda x: x)
        object.__setattr__(detector, "pool_features", lambda fmap: fmap.mean(dim=(2, 3)))

        def sample(feats, k):
            red = feats[:, 0] - feats[:, 1:].mean(dim=1)  # grey 0, red 2 (mean = std = 0.5)
            shift = torch.linspace(-0.1, 0.1, k)[:, None]  # some posterior spread
            p = torch.sigmoid(8.0 * (red[None] - 0.5 + shift))
            return torch.stack([1 - p, p], dim=-1)

        object.__setattr__(method, "sample", sample)
        return recipe, detector, method, meta

    monkeypatch.setattr(predict, "load_run", load_run)


def test_corner_evidence_is_caught_with_tiles_not_by_the_centre_crop(
    trained_run, tmp_path, colour_scorer
):
    from bnnkit.api import Run

    image = _corner_image(tmp_path / "corner.png")
    run = Run.load(trained_run)
    (centre,) = run.predict(image, abstain=False)
    assert centre["p_fake"] < 0.05 and centre["verdict"] == "real"
    assert "tiles" not in centre

    (tiled,) = run.predict(image, abstain=False, tiles=True)  # downscaled to <= 64 tiles
    assert tiled["tile_scale"] < 1 and tiled["tiles"] <= 64
    assert tiled["tile_p_fake_max"] > 0.95  # the corner tile sees the red patch
    assert tiled["p_fake"] < 0.5  # ... which is a small part of the whole image (mean)
    assert tiled["tile_p_fake_sd"] > 0.1 and tiled["tile_disagreement"] > 0

    (full,) = run.predict(image, abstain=False, tiles=True, max_tiles=500)
    assert full["tile_scale"] == 1.0 and full["tiles"] == 13 * 10
    (anywhere,) = run.predict(image, abstain=False, tiles=True, tile_reduce="max")
    assert anywhere["verdict"] == "fake" and anywhere["p_fake"] > 0.95


def test_json_and_csv_rows_carry_the_tile_spread(runner, trained_run, tmp_path):
    from bnnkit.cli import main

    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 130, 3), np.uint8)).save(img)
    args = ["predict", str(trained_run), str(img), "--tiles", "--no-abstain"]
    result = runner.invoke(main, [*args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["tiles"] == {"size": 32, "overlap": 0.25, "max_tiles": 64, "reduce": "mean"}
    (row,) = out["predictions"]
    expected = len(tile_grid(130, 90, Tiling(32)).boxes)
    assert row["tiles"] == expected == 6 * 4 and row["tile_scale"] == 1.0
    assert set(TILE_FIELDS) <= set(row)
    assert 0 <= row["tile_p_fake_sd"] <= row["tile_p_fake_max"] <= 1
    assert row["p_fake"] <= row["tile_p_fake_max"] + 1e-6
    assert row["total"] == pytest.approx(row["aleatoric"] + row["epistemic"], abs=1e-5)

    result = runner.invoke(main, [*args, "--format", "csv"], catch_exceptions=False)
    header = result.stdout.splitlines()[0].split(",")
    assert header == [
        "path", "verdict", "p_fake", "total", "aleatoric", "epistemic", *TILE_FIELDS, "error",
        "temperature",  # the temperature applied (empty: none)
    ]  # fmt: skip
    result = runner.invoke(main, args, catch_exceptions=False)  # the table
    assert result.exit_code == 0 and "max tile" in result.stdout


def test_explain_with_tiles_draws_the_whole_image(runner, trained_run, tmp_path, monkeypatch):
    import bnnkit.report.explain as figures
    from bnnkit.cli import main

    img = tmp_path / "wide.png"
    pixels = np.random.default_rng(2).integers(0, 256, (70, 150, 3), np.uint8)
    Image.fromarray(pixels).save(img)
    shown = []
    real = figures.tiled_explain_figure

    def spy(image, attention, label, p_fake, epistemic, grid, title):
        shown.append((image, attention, p_fake, epistemic, grid))
        return real(image, attention, label, p_fake, epistemic, grid, title)

    monkeypatch.setattr(figures, "tiled_explain_figure", spy)
    out = tmp_path / "out" / "preds.json"
    # --no-abstain: the shared run may have been evaluated with the default abstention score
    # (rel_mahalanobis), a feature-space score a tiled image has none of
    args = ["predict", str(trained_run), str(img), "--tiles", "--explain", "--format", "json",
            "--no-abstain"]  # fmt: skip
    result = runner.invoke(main, [*args, "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["predictions"]
    assert row["error"] is None and Path(row["explain"]).is_file()
    assert Path(row["explain"]).parent == out.parent
    with Image.open(row["explain"]) as png:
        assert png.width > 500
    ((image, attention, p_fake, epistemic, grid),) = shown
    assert image.shape == (70, 150, 3) and len(grid.boxes) == row["tiles"]
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-5)  # the whole image, not a crop
    assert attention.shape == p_fake.shape == epistemic.shape == (70, 150)
    assert np.isfinite(attention).all() and (epistemic >= 0).all()
    assert p_fake.min() >= 0 and p_fake.max() == pytest.approx(row["tile_p_fake_max"], abs=1e-6)


def test_folder_reports_skipped_non_image_files(runner, trained_run, tmp_path):
    from bnnkit.api import Run
    from bnnkit.cli import main

    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 40), (10, 20, 30)).save(folder / "a.png")
    (folder / "notes.txt").write_text("hello")
    (folder / "sub" / "meta.json").write_text("{}")
    (folder / ".hidden.txt").write_text("not counted")
    result = runner.invoke(main, ["predict", str(trained_run), str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "skipped 2 non-image files (.json 1, .txt 1)" in result.output
    res = Run.load(trained_run).predict_result(folder)
    assert res.skipped == {".json": 1, ".txt": 1} and len(res.rows) == 1


def test_evaluate_with_tiles_records_the_tiling(runner, trained_run, tmp_path, synth_root):
    from bnnkit.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    args = ["evaluate", str(run), "--no-plots", "--tiles", "--max-tiles", "4"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = {"size": 32, "overlap": 0.25, "max_tiles": 4, "reduce": "mean"}
    assert json.loads((run / "metrics.json").read_text())["tiles"] == expected
    assert json.loads((run / "threshold.json").read_text())["tiles"] == expected
    # a prediction without tiles is warned that the threshold was calibrated tiled
    one = sorted(synth_root.glob("*adm/val/ai/*"))[0]
    result = runner.invoke(main, ["predict", str(run), str(one)], catch_exceptions=False)
    assert "calibrated with tiles" in result.output
