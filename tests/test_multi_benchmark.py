"""Several benchmarks in one evaluation (issue 21, item 2): ``bnnkit evaluate RUN --data a=DIR
--data b=GENIMAGE_DIR`` on a binary-layout run and a GenImage tree, checked against plain
evaluations of the same images (bnnkit/engine/evaluate/benchmarks.py)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import QUICKSTART, invoke, train_and_evaluate

from bnnkit.cli import main
from bnnkit.engine.evaluate.benchmark_parts import Benchmark, parse_benchmarks, summary
from bnnkit.errors import UsageError

#: per-generator values that depend only on the images' predictions (not on the thresholds)
KEYS = (
    "n",
    "accuracy",
    "real_accuracy",
    "fake_accuracy",
    "auroc",
    "nll",
    "ece",
    "epistemic_uncertainty",
)


def test_parse_benchmarks():
    got = parse_benchmarks(["a=/data/x", "b=/data/y:binary", "c=/data/z:v2"])
    assert got == [
        Benchmark("a", "/data/x"),
        Benchmark("b", "/data/y", "binary"),
        Benchmark("c", "/data/z:v2"),  # not a layout: part of the root
    ]
    for bad in (["/data/x"], ["=x"], ["a="], ["a/b=x"], ["a=x", "a=y"]):
        with pytest.raises(UsageError):
            parse_benchmarks(bad)


def test_summary_mean_and_min_skip_undefined():
    b = {
        "x": {"all": {"accuracy": 0.9, "auroc": 0.8}},
        "y": {"all": {"accuracy": 0.5, "auroc": float("nan")}},
    }
    s = summary(b)
    assert s["accuracy"] == {"mean": 0.7, "min": 0.5, "min_benchmark": "y", "n": 2}
    assert s["auroc"] == {"mean": 0.8, "min": 0.8, "min_benchmark": "x", "n": 1}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _same_generators(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for gen, entry in want.items():
        for key in KEYS:
            a, b = got[gen][key], entry[key]
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (
                gen,
                key,
            )


def test_evaluate_several_benchmarks(tmp_path, synth_root):
    data = tmp_path / "binary"
    invoke(["data", "synth", data, "--layout", "binary", "--size", "32",
            "--train-per-class", "8", "--val-per-class", "4"])  # fmt: skip
    run = train_and_evaluate(
        QUICKSTART, tmp_path, data=data, backbone=None, evaluate=False,
        sets={"train.backbone": '"frozen"'},
    ).run  # fmt: skip
    # independent references: plain evaluations of the same images
    invoke(["evaluate", run, "--no-plots"])
    plain_a = _metrics(run)
    invoke(["evaluate", run, "--no-plots", "--data-root", synth_root, "--ood", "midjourney"])
    plain_b = _metrics(run)

    out = invoke(
        ["evaluate", run, "--no-plots", "--data", f"a={data}", "--data", f"b={synth_root}"]
    )
    m = _metrics(run)
    assert list(m["benchmarks"]) == ["a", "b"]
    a, b = m["benchmarks"]["a"], m["benchmarks"]["b"]
    assert a["layout"] == "binary" and b["layout"] == "genimage"
    assert a["ood_generators"] == b["ood_generators"] == ["midjourney"]
    assert a["seen_generators"] == plain_a["seen_generators"]
    # benchmark a is the run's own data: everything equals the plain evaluation, thresholds too
    _same_generators(a["per_generator"], plain_a["per_generator"])
    assert a["ood"] == plain_a["ood"]
    assert a["abstention"]["by_score"] == plain_a["abstention"]["by_score"]
    # benchmark b: the plain evaluation on its root (whose calibration images differ, so only
    # the per-image predictions' tables must match)
    _same_generators(b["per_generator"], plain_b["per_generator"])
    assert (
        b["ood"]["midjourney"]["scores"]["mutual_info"]
        == (plain_b["ood"]["midjourney"]["scores"]["mutual_info"])
    )
    # the summary is the mean and minimum of the per-benchmark values
    for key in ("accuracy", "auroc"):
        values = {n: e["all"][key] for n, e in m["benchmarks"].items()}
        assert m["summary"][key]["mean"] == pytest.approx(sum(values.values()) / 2)
        assert m["summary"][key]["min"] == min(values.values())
        assert values[m["summary"][key]["min_benchmark"]] == min(values.values())
    # each benchmark's pooled accuracy is that of its images
    n_a = sum(e["n"] for e in plain_a["per_generator"].values())
    ok_a = sum(e["n"] * e["accuracy"] for e in plain_a["per_generator"].values())
    assert a["all"]["n"] == n_a and a["all"]["accuracy"] == pytest.approx(ok_a / n_a)

    # the terminal and report.md show both benchmarks, their average and minimum
    for row in ("a", "b", "mean", "min"):
        assert any(line.split()[:1] == [row] for line in out.splitlines()), out
    report = (run / "report.md").read_text()
    assert "## Benchmarks" in report and "### Benchmark a" in report
    assert "### Benchmark b" in report and "| **mean** |" in report and "| **min** |" in report
    # predictions.csv: a benchmark column, every image once
    with open(run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["benchmark"] for r in rows} == {"a", "b"}
    assert len(rows) == a["n_images"] + b["n_images"]
    # one backbone pass per image: calibration images once, each benchmark's once
    streamed = json.loads((run / "timing.json").read_text())["images_streamed"]
    n_cal = m["abstention"]["calibration"]["n"]
    assert streamed == {"calibration": n_cal, "benchmark:a": a["n_images"],
                        "benchmark:b": b["n_images"], "total": n_cal + len(rows)}  # fmt: skip
    # bnnkit compare: the cross-benchmark mean and minimum
    row = json.loads(invoke(["compare", run, "--format", "json"]))[0]
    assert row["bench_acc_mean"] == m["summary"]["accuracy"]["mean"]
    assert row["bench_auroc_min"] == m["summary"]["auroc"]["min"]
    assert "min acc" in invoke(["compare", run, "--format", "markdown"])

    # an external benchmark (no seen generator): its OOD block has no seen images to compare
    ext = tmp_path / "ext"
    invoke(["data", "synth", ext, "--size", "32", "--generator", "midjourney",
            "--train-per-class", "2", "--val-per-class", "2"])  # fmt: skip
    invoke(["evaluate", run, "--no-plots", "--data", f"a={data}", "--data", f"ext={ext}"])
    e = _metrics(run)["benchmarks"]["ext"]
    assert e["seen_generators"] == [] and e["ood_generators"] == ["midjourney"]
    assert e["ood"]["midjourney"]["n_id"] == 0 and e["ood"]["midjourney"]["n_ood"] == 2
    assert e["all"]["n"] == 4 and _metrics(run)["summary"]["accuracy"]["n"] == 2

    # --data does not combine with --ood; a missing run data root (calibration) is named
    res = CliRunner().invoke(main, ["evaluate", str(run), "--data", f"b={synth_root}",
                                    "--ood", "midjourney"])  # fmt: skip
    assert res.exit_code != 0 and "--data does not combine with --ood" in res.output
    res = CliRunner().invoke(main, ["evaluate", str(run), "--data", f"b={synth_root}",
                                    "--data-root", str(tmp_path / "gone")])  # fmt: skip
    assert res.exit_code != 0 and "gone" in res.output, res.output
    res = CliRunner().invoke(main, ["evaluate", str(run), "--data", f"b={tmp_path / 'nope'}"])
    assert res.exit_code != 0 and "benchmark's data root does not exist" in res.output


# -- the cost benchmark (a smoke test: tiny, no timing asserted) -------------------------------
def test_multi_benchmark_script_prints_its_figures(tmp_path):
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "multi.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--val-per-class", "2", "--train-per-class", "8",
         "--size", "32", "--rounds", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # exactly one JSON object on stdout
    fig = result["figures"]
    assert fig["backbone_passes_per_image_multi"] == 1.0  # every image once
    assert fig["backbone_passes_per_image_separate"] > 1.0  # calibration once per benchmark
    cal, n = result["details"]["calibration_images"], result["details"]["benchmarks"]
    assert fig["images_streamed"]["separate"] - fig["images_streamed"]["multi"] == (n - 1) * cal
    assert fig["multi_over_separate_seconds"] > 0 and fig["multi_over_separate_cpu_seconds"] > 0
    assert result["meets_targets"] == {"backbone_passes_per_image_multi": True}
    assert list(tmp_path.iterdir()) == []  # nothing written outside its temp folder


def test_data_refuses_a_run_whose_recipe_sets_a_guarantee_or_a_false_alarm_bound(
    trained_run, synth_root, tmp_path, runner
):
    """--data does not apply eval.guarantee / eval.max_false_alarm yet: it must say so rather
    than write a threshold.json without them (predict would silently fall back to 0.5)."""
    import shutil

    from bnnkit.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    recipe = run / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("[eval]\n", "[eval]\nmax_false_alarm = 0.1\n"))
    result = runner.invoke(main, ["evaluate", str(run), "--no-plots", "--data", f"b={synth_root}"])
    assert result.exit_code == 2, result.output
    assert "does not apply the run's eval.max_false_alarm = 0.1" in result.output
