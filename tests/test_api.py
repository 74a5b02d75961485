"""The Python API (docs/api.md): its worked example runs as written, and the CLI built on it
gives the same numbers for the same run."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from helpers import REPO

from bnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

API_DOC = REPO / "docs" / "api.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/api.md should hold exactly one worked example"
    return blocks[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict:
    """Run the documented example in a fresh folder; return its namespace."""
    workdir = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        namespace: dict = {}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(_example(), str(API_DOC), "exec"), namespace)
        namespace["_stdout"] = out.getvalue()
        namespace["_workdir"] = workdir
    # paths in the example are relative to its folder
    namespace["run"] = type(namespace["run"])(workdir / namespace["run"].path)
    namespace["images"] = [workdir / p for p in namespace["images"]]
    return namespace


def test_example_trains_evaluates_and_predicts(example) -> None:
    run, metrics = example["run"], example["metrics"]
    assert (run.path / "checkpoint.json").is_file()
    assert metrics["schema_version"] == 3
    assert "midjourney" in metrics["ood"]
    assert run.metrics == json.loads((run.path / "metrics.json").read_text())
    assert len(example["images"]) == 2
    records = run.predict(example["images"], samples=16)
    assert [r["verdict"] in ("real", "fake", "uncertain") for r in records] == [True, True]
    assert all(r["error"] is None and 0.0 <= r["p_fake"] <= 1.0 for r in records)
    assert "midjourney epistemic AUROC" in example["_stdout"]


def test_cli_gives_the_api_numbers_for_the_same_run(example, runner) -> None:
    run, workdir = example["run"], example["_workdir"]
    api_metrics = example["metrics"]
    api_records = run.predict(example["images"], samples=16)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = runner.invoke(
            main, ["evaluate", str(run.path), "--ood", "midjourney", "--samples", "16", "--json"]
        )
        assert result.exit_code == 0, result.output
        cli_metrics = json.loads(result.output)
        result = runner.invoke(
            main,
            ["predict", str(run.path), *map(str, example["images"]), "--samples", "16",
             "--format", "json"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        cli_records = json.loads(result.output)
    for key in ("accuracy", "auroc", "nll", "ece", "epistemic_uncertainty"):
        assert cli_metrics["seen"][key] == api_metrics["seen"][key], key
    assert cli_metrics["ood"]["midjourney"] == api_metrics["ood"]["midjourney"]
    rows = cli_records["predictions"] if isinstance(cli_records, dict) else cli_records
    by_path = {Path(r["path"]).name: r for r in rows}
    for record in api_records:
        cli = by_path[Path(record["path"]).name]
        assert cli["verdict"] == record["verdict"]
        for key in ("p_fake", "total", "aleatoric", "epistemic"):
            assert cli[key] == pytest.approx(record[key], abs=1e-9), key


def test_run_load_finds_the_latest(example) -> None:
    from bnnkit import Run

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(example["_workdir"])
        assert Run.load().path.resolve() == example["run"].path.resolve()
        assert Run.latest().recipe.name == "quickstart"
        assert Run.load().history, "history.csv rows"
