"""``bnnkit export``: a finished run as a portable folder in the Hugging Face model-repository
shape (:mod:`bnnkit.run.export`)."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import console, err_console, print_json


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("dest", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@click.option("--force", is_flag=True, help="Replace DIR when it holds an earlier export.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def command(run: Path, dest: Path, force: bool, as_json: bool) -> None:
    """Write the finished RUN as a self-contained folder DIR to share or upload.

    DIR has the shape of a Hugging Face model repository: model.safetensors (the run's model
    file, byte for byte), config.json (the resolved recipe as JSON, the bnnkit version, the
    plugins, input normalisation, feature dim and method facts), a model card README.md (YAML
    front matter; the run's metrics, abstention threshold and calibration, or a plain "not
    evaluated"), and what prediction needs: state.safetensors (the method's tensors only),
    threshold.json, temperature.json and the score fits the threshold uses. DIR is also a bnnkit
    run directory (checkpoint.json, recipe.toml), so `bnnkit predict DIR`, `bnnkit evaluate DIR`
    and `bnnkit.Run.load(DIR)` use it as they use RUN. Training-only files (optimiser and RNG
    state, history.csv, env.json, the previous checkpoint, an ensemble's member runs, plots,
    predictions) stay behind. Evaluate RUN (and calibrate it) first for a card with numbers.

    \b
    Examples:
      bnnkit export runs/quickstart-20261121-101500 detector/
      bnnkit predict detector/ photo.png --format json
      huggingface-cli upload OWNER/REPO detector/    # then: bnnkit pull OWNER/REPO
    """
    from bnnkit.run.export import export_run

    result = export_run(run, dest, force=force)
    if as_json:
        print_json({"path": str(result.path), "files": result.files,
                    "evaluated": result.evaluated, "notes": result.notes})  # fmt: skip
        return
    for note in result.notes:
        err_console().print(f"[yellow]note:[/] {note}", soft_wrap=True)
    console().print(f"exported {run} -> {result.path} ({len(result.files)} files)")
    console().print(f"next:   bnnkit predict {result.path} IMAGE")
