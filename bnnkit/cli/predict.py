"""``bnnkit predict``: p(fake), uncertainty parts and a verdict per file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from bnnkit.cli._common import console, device_option, fmt

FIELDS = ["path", "verdict", "p_fake", "total", "aleatoric", "epistemic", "error"]


@click.command("predict")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt_",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--samples", "-k", type=int, default=None, help="Posterior samples K.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="p(fake) at or above which the verdict is 'fake'.",
)
@device_option
def command(
    run: Path,
    inputs: tuple[Path, ...],
    fmt_: str,
    samples: int | None,
    batch_size: int,
    threshold: float,
    device: str,
) -> None:
    """Predict with a trained RUN on image files and folders (searched recursively).

    For each file: the verdict (real/fake), p(fake) from the posterior predictive, and the
    total / aleatoric / epistemic uncertainty in nats. A file that cannot be read gets an
    error entry; the others are still predicted.

    \b
    Examples:
      bnnkit predict runs/quickstart-20261121-101500 photo.png folder/
      bnnkit predict runs/quickstart-20261121-101500 folder/ --format json > preds.json
    """
    import torch

    from bnnkit.data.dataset import FileDataset, build_transform
    from bnnkit.data.images import list_images
    from bnnkit.engine.build import load_run
    from bnnkit.engine.device import select_device
    from bnnkit.engine.loop import extract_features, make_loader, mc_predictive
    from bnnkit.engine.runs import resolve_run

    run_dir = resolve_run(run)
    dev, _ = select_device(device)
    recipe, detector, method, _meta = load_run(run_dir, dev)
    files: list[Path] = []
    errors: dict[str, str] = {}
    for item in inputs:
        if item.is_dir():
            files.extend(list_images(item))
        elif item.is_file():
            files.append(item)  # opened by content whatever its name; failures are reported
        else:
            errors[str(item)] = "no such file or directory"
    d = recipe.data
    dataset = FileDataset(files, build_transform(d.image_size, d.preprocess, train=False))
    loader = make_loader(
        dataset, batch_size, shuffle=False, seed=recipe.seed, workers=0, device=dev
    )
    feats = extract_features(detector, loader, dev)
    for b in feats.broken:
        errors[b.path] = b.reason
    torch.manual_seed(recipe.seed)
    pred = mc_predictive(method, feats.features, samples or recipe.eval.samples, dev)
    rows = []
    by_index = {int(i): j for j, i in enumerate(feats.indices)}
    for i, path in enumerate(files):
        j = by_index.get(i)
        if j is None:
            continue
        p = float(pred.p_fake[j])
        rows.append(
            {
                "path": str(path),
                "verdict": "fake" if p >= threshold else "real",
                "p_fake": p,
                "total": float(pred.total[j]),
                "aleatoric": float(pred.aleatoric[j]),
                "epistemic": float(pred.epistemic[j]),
                "error": None,
            }
        )
    rows += [
        {
            "path": p,
            "verdict": "error",
            "p_fake": None,
            "total": None,
            "aleatoric": None,
            "epistemic": None,
            "error": why,
        }
        for p, why in errors.items()
    ]
    if fmt_ == "json":
        click.echo(
            json.dumps(
                {
                    "run": str(run_dir),
                    "samples": samples or recipe.eval.samples,
                    "predictions": rows,
                },
                indent=2,
            )
        )
    elif fmt_ == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
    else:
        from rich.table import Table

        table = Table(title=f"predictions of {run_dir.name}", title_justify="left")
        for c in ("file", "verdict", "p(fake)", "total", "aleatoric", "epistemic"):
            table.add_column(c, justify="left" if c in ("file", "verdict") else "right")
        for r in rows:
            if r["error"]:
                table.add_row(r["path"], "[red]error[/]", r["error"], "", "", "")
            else:
                style = "red" if r["verdict"] == "fake" else "green"
                table.add_row(
                    r["path"],
                    f"[{style}]{r['verdict']}[/]",
                    fmt(r["p_fake"]),
                    fmt(r["total"]),
                    fmt(r["aleatoric"]),
                    fmt(r["epistemic"], 4),
                )
        console().print(table)
