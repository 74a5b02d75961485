"""``benchmarks/run.py --quick`` runs end to end and prints one JSON object with every figure.

Only the shape and sign of the numbers are checked, and that every built-in head and method
gives a number (never null): timings depend on the machine, so no test asserts on them (the
figures themselves are recorded from full runs; see benchmarks/README.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run.py"


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _builtin_methods() -> set[str]:
    """bnnkit's own methods that train a head, one name per class (aliases such as ``vi``
    dropped; the training-free ``wepe`` and ``rigid`` have nothing to train)."""
    from bnnkit.plugins import get_registry

    entries = get_registry().entries["method"]
    first: dict[int, str] = {}
    for name in sorted(entries):
        if entries[name].package == "bnnkit" and getattr(entries[name].obj, "trains", True):
            first.setdefault(id(entries[name].obj), name)
    return set(first.values())


@pytest.mark.slow
def test_quick_benchmark_prints_every_figure(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        # One thread: the smoke test may share the cores with other tests.
        "OMP_NUM_THREADS": "1",
    }
    out_file = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeats", "1", "--out", str(out_file)],
        cwd=tmp_path,  # nothing may be written to the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a timing assertion
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert json.loads(out_file.read_text()) == result
    assert list(tmp_path.iterdir()) == [out_file]

    # Every built-in head and method is installed: each must yield a number, never null.
    for key in ("predict_k100_over_k1", "naive_k100_over_ours"):
        figures = result[key]
        assert set(figures) == {"bbb", "lrt", "dropout"}
        for head, value in figures.items():
            assert _positive(value), (key, head, value)
    assert result["details"]["predict"]["skipped"] == {}
    assert isinstance(result["naive_passes_timed"], int) and result["naive_passes_timed"] >= 1

    steps = result["bayes_step_over_map_step"]
    assert set(steps) == {"bbb", "lrt"}
    for head, value in steps.items():
        assert _positive(value), (head, value)
    assert result["details"]["step"]["skipped"] == {}

    assert _positive(result["toolkit_eval_over_bare_timm"])

    sweep = result["frozen_sweep_seconds"]
    assert _positive(sweep["total"])
    per_method = sweep["per_method"]
    assert set(per_method) == _builtin_methods()  # an alias (vi) is not trained twice
    for name, value in per_method.items():
        assert _positive(value), (name, value)
    assert result["details"]["sweep"]["errors"] == {}
    assert math.isclose(sweep["total"], sum(per_method.values()), rel_tol=1e-9)
    assert result["details"]["sweep"]["feature_dim"] > 0
    assert set(result["meets_targets"]) == set(result["targets"])
    assert result["settings"]["mode"] == "quick"


SCALE = REPO / "benchmarks" / "scale.py"


def _scale(tmp_path: Path, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCALE), *args, "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_scale_benchmark_data_check_figures(tmp_path):
    """``benchmarks/scale.py`` on two tiny trees, data check only: cold and warm figures, the
    targets map, nothing written outside its work folder."""
    result = _scale(tmp_path, "--sizes", "40,80", "--only", "check")
    assert set(result["sizes"]) == {"40", "80"}
    for figures in result["sizes"].values():
        for stage in ("check_cold", "check_warm"):
            assert _positive(figures[stage]["seconds"]) and _positive(figures[stage]["peak_rss"])
    assert set(result["meets_targets"]) == {
        "seconds_per_image_flat.check_cold", "warm_check_speedup",
    }  # fmt: skip
    assert all(isinstance(v, bool) for v in result["meets_targets"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


@pytest.mark.slow
def test_scale_benchmark_every_stage(tmp_path):
    result = _scale(
        tmp_path, "--sizes", "40", "--methods", "map", "--decode-files", "20",
        "--decode-files-256", "10", "--draft-files", "4",
    )  # fmt: skip
    figures = result["sizes"]["40"]
    for stage in ("extract", "sweep", "evaluate"):
        assert _positive(figures[stage]["seconds_per_image"]), stage
        assert _positive(figures[stage]["peak_rss"]), stage
    assert _positive(result["decode"]["ratio"])
    assert result["jpeg_draft"]["max_abs_pixel_difference"] >= 0
    assert set(result["meets_targets"]) == set(result["figures"])


UNSEEN = REPO / "benchmarks" / "unseen.py"


def _unseen(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(UNSEEN), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


HEADLINE_KEYS = {
    "method", "score", "data_seeds", "caught", "ci95", "unseen_coverage", "seen_abstention",
}  # fmt: skip


def test_unseen_benchmark_quick_reports_the_preregistered_headline(tmp_path):
    """``benchmarks/unseen.py --quick``: the pre-registered pairs only, leave-one-out over three
    synthetic generators on data seed 1; a ``headline`` with exactly the documented keys, its
    bootstrap interval around the point estimate, the unseen coverage and the seen abstention
    reached; per fold the unseen abstention rate; no "best" anywhere; the markdown table."""
    md = tmp_path / "table.md"
    proc = _unseen(tmp_path, "--quick", "--md", str(md))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["mode"] == "headline" and result["exploratory"] is None
    assert "best" not in result
    head = result["headline"]
    assert set(head) == HEADLINE_KEYS
    assert head["data_seeds"] == [1]
    assert result["preregistered"][0]["method"] == head["method"]
    assert result["preregistered"][0]["score"] == head["score"]
    assert head["caught"] is not None, "no unseen-generator errors: the benchmark measures nothing"
    low, high = head["ci95"]
    assert 0.0 <= low <= head["caught"] <= high <= 1.0
    assert 0.0 <= head["unseen_coverage"] <= 1.0 and 0.0 <= head["seen_abstention"] <= 1.0
    pair = result["preregistered"][0]
    folds = pair["per_fold"]
    assert {f["generator"] for f in folds} == {"midjourney", "sdv4", "biggan"}
    assert all(0 <= f["errors_caught"] <= f["errors"] for f in folds)
    assert pair["errors"] == sum(f["errors"] for f in folds)
    assert head["caught"] == pair["errors_caught"] / pair["errors"]
    kept = sum((1 - f["unseen_abstained"]) * f["unseen_n"] for f in folds)
    assert abs(head["unseen_coverage"] - kept / sum(f["unseen_n"] for f in folds)) < 1e-12
    table = md.read_text()
    assert "Pre-registered" in table and f"| {head['method']} | {head['score']} |" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_unseen_benchmark_refuses_the_choosing_seed_in_headline_mode(tmp_path):
    """Data seed 0 chose the pre-registered pairs: the headline refuses it (before any work)."""
    proc = _unseen(tmp_path, "--data-seeds", "0,1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "data seed 0 chose the pre-registered pairs" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_unseen_benchmark_only_narrows_the_preregistered_pairs_never_changes_them(tmp_path):
    """``--only METHOD`` re-measures a changed method's pre-registered pairs; it cannot name a
    pair that was not pre-registered, nor go with the exploratory grid (before any work)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("unseen_bench", UNSEEN)
    assert spec is not None and spec.loader is not None
    unseen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unseen)
    args = unseen.parse(["--only", "gp,sngp"])
    assert args.pairs == [p for p in unseen.PREREGISTERED if p[0] in ("gp", "sngp")]
    assert args.pairs and unseen.PREREGISTERED[0] not in args.pairs  # no headline row then
    for bad, message in (
        (["--only", "map"], "no pre-registered pair has that method"),
        (["--explore", "--only", "gp"], "--only belongs to the headline"),
    ):
        proc = _unseen(tmp_path, *bad)
        assert proc.returncode == 2 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_unseen_benchmark_guarantee_reports_both_thresholds(tmp_path):
    """``--guarantee 0.9``: every pre-registered pair is also evaluated with split-conformal
    thresholds (``eval.guarantee``, recorded by bnnkit in each cell), reported beside the
    unchanged headline; ``--explore`` and a level outside (0, 1) are refused before any work."""
    for bad in (["--guarantee", "1.5"], ["--explore", "--guarantee", "0.9"]):
        proc = _unseen(tmp_path, *bad)
        assert proc.returncode == 2 and "--guarantee LEVEL" in proc.stderr
    keep, md = tmp_path / "work", tmp_path / "table.md"
    proc = _unseen(tmp_path, "--quick", "--guarantee", "0.9", "--keep", str(keep), "--md", str(md))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["settings"]["guarantee"] == 0.9
    plain, guaranteed = result["preregistered"], result["guaranteed"]["preregistered"]
    assert [(p["method"], p["score"]) for p in guaranteed] == [
        (p["method"], p["score"]) for p in plain
    ]
    assert all(0.0 <= g["seen_abstention"] <= 1.0 for g in guaranteed)
    cells = list((keep / "seed1" / "protocol-guarantee0.9").rglob("metrics.json"))
    assert cells and all(
        json.loads(c.read_text())["abstention"]["guarantee"]["level"] == 0.9 for c in cells
    )
    assert not any(
        "guarantee" in json.loads(c.read_text())["abstention"]
        for c in (keep / "seed1" / "protocol").rglob("metrics.json")
    )
    assert "With and without the guarantee" in md.read_text()
