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


def test_unseen_benchmark_quick_reports_caught_per_method_and_score(tmp_path):
    """``benchmarks/unseen.py --quick``: leave-one-out over three synthetic generators, two
    methods x three scores; one JSON object whose figures are fractions of the errors actually
    counted (``errors_caught <= errors``), the best pair among them, and the markdown table."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    md = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(UNSEEN), "--quick", "--md", str(md)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert set(result["results"]) == {"map", "bbb"}
    caught = []
    for per_score in result["results"].values():
        assert set(per_score) == {"entropy", "mutual_info", "knn"}
        for figures in per_score.values():
            assert set(figures["per_generator"]) == {"midjourney", "sdv4", "biggan"}
            assert 0 <= figures["errors_caught"] <= figures["errors"]
            if figures["errors"]:
                assert figures["caught"] == figures["errors_caught"] / figures["errors"]
                caught.append(figures["caught"])
            assert 0.0 <= figures["seen_abstained"] <= 0.25  # calibrated for 10 %
    assert caught, "no unseen-generator errors at all: the benchmark measures nothing"
    assert result["best"]["caught"] == max(caught)
    assert "| map |" in md.read_text() and "knn" in md.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]
