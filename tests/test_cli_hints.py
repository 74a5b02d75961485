"""Hints that lead somewhere (issue 18, item 17): a run evaluated or calibrated from another
directory names ``--data-root`` and the root the run recorded, and a misspelt score option is
named by the key the user gave (``score.knn.kk``), with its suggestion (``score.knn.k``)."""

from __future__ import annotations

import shutil
import tomllib

import pytest
from click.testing import CliRunner

from bnnkit.cli import main


@pytest.fixture()
def moved_run(trained_run, synth_root, tmp_path, monkeypatch):
    """A copy of the shared run whose recipe records a relative data root (``data``, as a
    project's ``bnnkit train`` writes it), in ``proj/runs/``, with the data at ``proj/data``;
    the current directory is elsewhere."""
    project = tmp_path / "proj"
    run = project / "runs" / trained_run.name
    shutil.copytree(trained_run, run)
    (project / "data").symlink_to(synth_root, target_is_directory=True)
    recipe = run / "recipe.toml"
    recorded = tomllib.loads(recipe.read_text())["data"]["root"]
    text = recipe.read_text().replace(f'root = "{recorded}"', 'root = "data"', 1)
    assert text != recipe.read_text()
    recipe.write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return run


@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_missing_data_root_names_data_root_and_the_recorded_root(moved_run, command):
    result = CliRunner().invoke(main, [command, str(moved_run)])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())  # rich may wrap long lines
    assert "data root 'data' does not exist" in out
    assert "this run records data.root = 'data'" in out
    assert f"--data-root {moved_run.parent.parent / 'data'}" in out
    assert "Traceback" not in out


def test_wrong_data_root_still_names_the_recorded_root(moved_run, tmp_path):
    result = CliRunner().invoke(
        main, ["calibrate", str(moved_run), "--data-root", str(tmp_path / "nowhere")]
    )
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "has no GenImage generator folders" in out
    assert f"--data-root {moved_run.parent.parent / 'data'}" in out


def test_unknown_score_option_is_named_by_its_full_key(trained_run, tmp_path):
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    args = ["evaluate", str(run), "--score", "knn", "--set", "score.knn.kk=10"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "score.knn.kk: unknown option; did you mean 'score.knn.k'?" in out
    assert "score.kk" not in out
