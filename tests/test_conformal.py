"""Split-conformal thresholds (issue 22, item 2), checked by simulation: over 1000 random
calibration/test splits of a synthetic record, the share of seen test images kept is at least
1 - alpha on average and at most 1 - alpha + 1/(n + 1); the Neyman-Pearson verdict threshold
calls at most alpha of the real test images fake on average. The naive empirical quantile
(index ceil(n (1 - alpha)) instead of ceil((n + 1)(1 - alpha))) fails the same simulation at
small n, so the test would catch that mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnnkit.metrics.conformal import (
    conformal_index,
    conformal_threshold,
    neyman_pearson_threshold,
)

SPLITS = 1000


def _record(seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic evaluation record: per image a score (a heavy-tailed mixture with a tied
    atom), a label and p(fake)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.where(rng.random(n) < 0.1, 0.0, rng.standard_t(3, n) ** 2)  # 10 % tied at 0
    p_fake = 1 / (1 + np.exp(-(2.0 * labels - 1.0) * 1.5 - rng.normal(0, 1.5, n)))
    return scores, labels, p_fake


def _mean_kept(n_cal: int, alpha: float, threshold=conformal_threshold) -> float:
    scores, _, _ = _record()
    rng = np.random.default_rng(1)
    kept = []
    for _ in range(SPLITS):
        order = rng.permutation(scores.size)
        cal, test = scores[order[:n_cal]], scores[order[n_cal : n_cal + 200]]
        t = threshold(torch.from_numpy(cal), alpha)
        kept.append(np.mean(test <= t))
    return float(np.mean(kept))


@pytest.mark.parametrize(("n_cal", "alpha"), [(5, 0.2), (19, 0.1), (50, 0.1), (200, 0.05)])
def test_split_conformal_keeps_at_least_one_minus_alpha_of_new_seen_images(n_cal, alpha):
    mean = _mean_kept(n_cal, alpha)
    mc = 3 * math.sqrt(alpha * (1 - alpha) / (SPLITS * 200)) + 3 * math.sqrt(
        alpha * (1 - alpha) / SPLITS / n_cal
    )  # Monte-Carlo slack: test images and calibration sets
    assert mean >= 1 - alpha - mc
    # the upper bound holds for untied scores; 10 % of these tie at 0, below every threshold
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + mc


def test_the_naive_quantile_violates_the_guarantee_at_small_n():
    def naive(scores, alpha):
        s = torch.sort(scores.double()).values
        return float(s[math.ceil(s.numel() * (1 - alpha)) - 1])

    assert _mean_kept(5, 0.2, naive) < 0.8 - 0.05  # 4 of 6 ranks: about 0.67
    assert _mean_kept(5, 0.2) >= 0.8 - 0.02


def test_neyman_pearson_threshold_bounds_the_real_images_called_fake():
    scores, labels, p_fake = _record(2)
    rng = np.random.default_rng(3)
    alpha, n_cal, false_alarms = 0.05, 100, []
    for _ in range(SPLITS):
        order = rng.permutation(labels.size)
        cal, test = order[:n_cal], order[n_cal : n_cal + 400]
        t = neyman_pearson_threshold(
            torch.from_numpy(p_fake[cal]), torch.from_numpy(labels[cal]), alpha
        )
        reals = test[labels[test] == 0]
        false_alarms.append(np.mean(p_fake[reals] > t))
    assert np.mean(false_alarms) <= alpha + 3 * math.sqrt(alpha / (SPLITS * 200))
    assert np.mean(false_alarms) >= alpha - 0.03  # not trivially conservative


def test_index_edge_cases():
    assert conformal_index(9, 0.1) == 9  # (n + 1)(1 - alpha) = 9 exactly: no round-up
    assert conformal_index(5, 0.2) == 5
    assert conformal_threshold(torch.tensor([1.0, 2.0]), 0.1) == math.inf  # k = 3 > n
    assert conformal_threshold(torch.tensor([3.0, 1.0, 2.0]), 0.5) == 2.0  # k = 2
    with pytest.raises(ValueError):
        conformal_index(10, 0.0)


def test_evaluate_guarantee_prints_the_bound_and_records_it(trained_run, tmp_path):
    """``bnnkit evaluate --guarantee 0.9``: the threshold is the split-conformal order statistic
    of the calibration images' scores, printed with the bound and the calibration size, and
    recorded in metrics.json and threshold.json."""
    import json
    import shutil

    from click.testing import CliRunner

    from bnnkit.cli import main

    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    args = ["evaluate", str(run), "--guarantee", "0.9", "--abstain-on", "entropy", "--no-plots"]
    result = CliRunner().invoke(main, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "guarantee: a new seen image is kept with probability >= 0.9" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    g = metrics["abstention"]["guarantee"]
    n = metrics["abstention"]["calibration"]["n"]
    assert g["level"] == 0.9 and g["n_calibration"] == n and g["rank"] == conformal_index(n, 0.1)
    assert metrics["coverage_target"] == 0.9
    threshold = json.loads((run / "threshold.json").read_text())
    assert threshold["guarantee"] == g
    from bnnkit.data.splits import calibration_items
    from bnnkit.recipe import load_run_recipe

    assert len(calibration_items(load_run_recipe(run / "recipe.toml"))) == n
    assert g["finite"] == math.isfinite(threshold["threshold"])
    # the plain empirical quantile at the same level uses rank ceil(0.9 n) <= ceil(0.9 (n + 1)):
    # the conformal threshold is never below it (and above it when those ranks differ)
    args = ["evaluate", str(run), "--coverage", "0.9", "--abstain-on", "entropy", "--no-plots"]
    assert CliRunner().invoke(main, args).exit_code == 0
    plain = json.loads((run / "threshold.json").read_text())
    assert "guarantee" not in plain and plain["threshold"] <= threshold["threshold"]
    if math.ceil(0.9 * n) < g["rank"]:
        assert plain["threshold"] < threshold["threshold"]


def test_max_false_alarm_sets_the_verdict_threshold_predict_applies(
    trained_run, synth_root, tmp_path
):
    """``evaluate --max-false-alarm 0.2``: the verdict threshold is set on the calibration
    reals' p(fake); metrics.json reports the false-alarm rate it reaches on the seen val reals
    (recomputed here from predictions.csv); predict applies it by default, --threshold
    overrides it."""
    import csv
    import json
    import shutil

    from click.testing import CliRunner

    from bnnkit.cli import main

    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    args = ["evaluate", str(run), "--max-false-alarm", "0.2", "--no-plots"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    v = json.loads((run / "metrics.json").read_text())["verdict_threshold"]
    t = v["p_threshold"]
    assert v["max_false_alarm"] == 0.2 and v["n_real_calibration"] > 0
    assert json.loads((run / "threshold.json").read_text())["p_threshold"] == t
    with open(run / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["condition"] == "clean" and r["seen"] == "1"]
    reals = [float(r["p_fake"]) for r in rows if r["label"] == "0"]
    assert v["seen_false_alarm"] == pytest.approx(np.mean([p > t for p in reals]))
    image = str(sorted((synth_root / "imagenet_ai_0508_adm" / "val").rglob("*.*"))[0])
    base = ["predict", str(run), image, "--format", "json"]
    assert json.loads(CliRunner().invoke(main, base).stdout)["p_threshold"] == t
    given = CliRunner().invoke(main, [*base, "--threshold", "0.5"]).stdout
    assert json.loads(given)["p_threshold"] == 0.5
