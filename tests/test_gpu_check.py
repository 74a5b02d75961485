"""``make gpu-check`` / ``benchmarks/gpu_check.py`` on a machine without a GPU, and the parts of
the script that a GPU run depends on (stage runner, JUnit counts, stage orchestration, the
fine-tune throughput measurement on the CPU). The GPU tests themselves are tests/test_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def no_gpu_env() -> dict[str, str]:
    """No visible CUDA device (so the skip path runs even on a GPU machine), offline, and no
    make variables from an outer ``make test``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def check_skipped(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert result["gpu"] is False and result["status"] == "no GPU: skipped"
    assert result["device"] is None and result["torch"] == torch.__version__
    assert "no GPU: skipped" in proc.stderr
    return result


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("bnnkit_gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_without_a_gpu_prints_the_skip_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=tmp_path, env=no_gpu_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    result = check_skipped(proc)
    assert json.loads(out.read_text(encoding="utf-8")) == result


def test_make_gpu_check_without_a_gpu_exits_0_with_the_skip_json():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # this interpreter's venv; -o: never reinstall it from here (the stamp counts as up to date)
    cmd = ["make", "-s", "--no-print-directory", "-o", ".venv/.bnnkit-installed",
           f"BIN={Path(sys.executable).parent}", "gpu-check"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=no_gpu_env(), capture_output=True, text=True, timeout=300
    )
    check_skipped(proc)


def test_stage_runner_reports_exit_codes_and_kills_at_the_cap(gpu_check):
    ok = gpu_check.run_stage([sys.executable, "-c", "pass"], cap=60)
    assert (ok["status"], ok["returncode"], ok["cap_seconds"]) == ("ok", 0, 60)
    failed = gpu_check.run_stage([sys.executable, "-c", "raise SystemExit(3)"], cap=60)
    assert (failed["status"], failed["returncode"]) == ("failed", 3)
    slow = gpu_check.run_stage([sys.executable, "-c", "import time; time.sleep(60)"], cap=1)
    assert (slow["status"], slow["returncode"]) == ("timed out", None)
    assert slow["seconds"] < 30


def test_junit_counts(gpu_check, tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_gpu" name="test_a"/>'
        '<testcase classname="tests.test_gpu" name="test_b"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_c"><skipped message="no bf16"/>'
        "</testcase>"
        '<testcase classname="tests.test_gpu" name="test_d"><error message="fixture"/></testcase>'
        "</testsuite></testsuites>",
        encoding="utf-8",
    )
    counts = gpu_check.junit_counts(xml)
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped", "total")} == {
        "passed": 1, "failed": 1, "errors": 1, "skipped": 1, "total": 4,
    }  # fmt: skip
    assert counts["failures"] == [
        {"test": "tests.test_gpu::test_b", "message": "boom"},
        {"test": "tests.test_gpu::test_d", "message": "fixture"},
    ]


def test_check_runs_each_stage_within_the_budget(gpu_check, monkeypatch):
    """The orchestration of a GPU run, with the device and the stages stubbed: every stage gets
    min(its cap, what is left of the budget); one that would get under 15 s is skipped, and
    any stage not ok fails the check."""
    caps: dict[str, float] = {}

    def stage(name: str, status: str = "ok"):
        def run(*args) -> dict:
            caps[name] = args[-1]
            return {"status": status, "seconds": 0.0}

        return run

    monkeypatch.setattr(gpu_check, "device_info", lambda: {"name": "Fake GPU"})
    monkeypatch.setattr(gpu_check, "stage_tests", stage("tests"))
    monkeypatch.setattr(gpu_check, "stage_json", lambda name, *a: stage(name)(*a))
    result, ok = gpu_check.check(["tests", "bench", "throughput"], budget=450)
    assert ok and result["status"] == "ok" and result["gpu"] is True
    assert caps["tests"] == 180 and caps["bench"] == 90 and caps["throughput"] == 60
    assert gpu_check.summary(result).startswith("ok in ")

    caps.clear()
    result, ok = gpu_check.check(["tests", "sweep"], budget=14)
    assert not ok and result["tests"]["status"] == "skipped" and not caps
    assert result["status"] == "failed: tests, sweep"

    monkeypatch.setattr(gpu_check, "stage_tests", stage("tests", "timed out"))
    result, ok = gpu_check.check(["tests"], budget=100)
    assert not ok and caps["tests"] == pytest.approx(100, abs=1)
    assert result["status"] == "failed: tests"


def test_finetune_throughput_measures_both_loops_on_the_cpu(gpu_check):
    """The throughput stage's code path, tiny and on the CPU (AMP and channels-last are off
    there): figures are positive, nothing about their size is asserted."""
    out = gpu_check.finetune_throughput(
        torch.device("cpu"), backbone="test_resnet", image_size=32, batch=4, steps=1,
        repeats=2, budget_s=30,
    )  # fmt: skip
    assert (out["amp"], out["channels_last"]) == ("off", False)
    assert set(out["images_per_second"]) == {"bare_timm", "map", "bbb"}
    assert all(v > 0 for v in out["images_per_second"].values())
    assert set(out["bnnkit_over_bare_timm"]) == {"map", "bbb"}
    assert all(v > 0 for v in out["bnnkit_over_bare_timm"].values())
    assert out["repeats"] >= 2
