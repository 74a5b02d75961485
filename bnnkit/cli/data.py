"""``bnnkit data``: write the synthetic stand-in, check a data root (any layout)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bnnkit.cli._common import console, path_option, print_json

SYNTH_MARKER = "bnnkit-synth.json"


@click.group("data")
def command() -> None:
    """Prepare and inspect data (GenImage, {0_real,1_fake} trees, manifests).

    GenImage is laid out as <root>/<generator folder>/{train,val}/{ai,nature}/*; generators are
    named by short name (adm biggan glide midjourney sdv4 sdv5 vqdm wukong), found by folder-name
    suffix, so official, "tiny" and nested copies all work. Other layouts (data.layout): binary
    ({train,val,test}/<generator>/{0_real,1_fake}) and manifest (CSV/Parquet path,label
    [,generator,family,split]); auto detects which.
    """


@command.command("synth")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Same seed, byte-identical files.")
@click.option(
    "--train-per-class", default=40, show_default=True, help="Train images per generator and class."
)
@click.option(
    "--val-per-class", default=16, show_default=True, help="Val images per generator and class."
)
@click.option(
    "--size",
    default=64,
    show_default=True,
    help="Side of the fakes in pixels (reals vary up to 1.5x).",
)
@click.option(
    "--strength",
    default=3.0,
    show_default=True,
    help="Fingerprint strength: 1 is subtle; 3 lets a tiny CNN learn them in a minute.",
)
@click.option(
    "--generator", "generators", multiple=True, help="Only these generators (repeatable)."
)
@click.option(
    "--exist-ok", is_flag=True, help="Do nothing if ROOT already holds this exact synthetic set."
)
@click.option(
    "--layout",
    type=click.Choice(["genimage", "binary"]),
    default="genimage",
    show_default=True,
    help="Folders: GenImage's, or {train,val}/<generator>/{0_real,1_fake} (same images).",
)
def synth(
    root: Path,
    seed: int,
    train_per_class: int,
    val_per_class: int,
    size: int,
    strength: float,
    generators: tuple[str, ...],
    exist_ok: bool,
    layout: str,
) -> None:
    """Write a synthetic GenImage-shaped dataset to ROOT (seconds, no download).

    Every generator leaves its own artifact fingerprint (periodic upsampling peaks, blockiness,
    smoothing, colour shifts, ...), so training on seven generators and testing on the eighth
    means something. Deterministic from --seed.

    \b
    Example:
      bnnkit data synth data/synth --seed 0
      bnnkit data synth data/tiny --train-per-class 8 --val-per-class 4 --size 32
      bnnkit data synth data/synth-binary --layout binary
    """
    from rich.progress import Progress

    from bnnkit.data.synth import SYNTH_VERSION, synthesize

    params = {
        "seed": seed,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "strength": strength,
        "generators": sorted(generators) or "all",
        "version": SYNTH_VERSION,  # a tree written by another version is rewritten
        **({"layout": layout} if layout != "genimage" else {}),
    }
    marker = root / SYNTH_MARKER
    if exist_ok and marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                console().print(f"{root}: synthetic data already there (same parameters); kept.")
                return
        except (OSError, json.JSONDecodeError):
            pass
    with Progress(console=console()) as progress:
        task = progress.add_task("writing images", total=None)
        summary = synthesize(
            root,
            seed=seed,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            size=size,
            strength=strength,
            generators=list(generators) or None,
            layout=layout,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    marker.write_text(json.dumps(params, indent=2))
    console().print(
        f"wrote {summary.total} images for {len(summary.counts)} generators to {root} "
        f"in {summary.seconds:.1f} s"
    )


@command.command("check")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--no-decode", is_flag=True, help="Count files only; skip decoding every image.")
@path_option("--cache-dir", ".bnnkit-cache", "Where the dataset index is kept.")
@click.option("--rescan", is_flag=True, help="Stat every file, even in unchanged folders.")
@click.option(
    "--layout",
    type=click.Choice(["auto", "genimage", "binary", "manifest"]),
    default="auto",
    show_default=True,
    help="The data layout (data.layout); auto detects it.",
)
def check(
    root: Path, as_json: bool, no_decode: bool, cache_dir: Path, rescan: bool, layout: str
) -> None:
    """Count images per generator, split and class, and list files that cannot be read.

    ROOT is a GenImage tree, a {0_real,1_fake} tree or a manifest (CSV/Parquet file, or a folder
    holding one manifest.csv); the layout found is printed first. A manifest's rows left out
    (file missing, bad label) are listed with their row numbers.

    Every image is fully decoded (truncated, empty, non-image, oversized files are caught);
    --no-decode only counts. Exit code 0 even when broken files are found: they are reported
    and skipped by train/evaluate. Non-image files are counted by extension. The file list
    and results are kept in an index under --cache-dir: a second check only reads what changed.

    \b
    Example:
      bnnkit data check data/synth
      bnnkit data check /data/genimage --json > genimage-check.json
    """
    from rich.progress import Progress

    from bnnkit.cli._data_output import render_inventory
    from bnnkit.data.inventory import take_inventory

    progress = Progress(console=console(), disable=as_json)
    task = progress.add_task("decoding", total=None)

    def advance(done: int, total: int) -> None:
        if done == 1:  # shown once the tree is found and decoding starts
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        inv = take_inventory(
            root,
            decode=not no_decode,
            progress=advance,
            cache_dir=cache_dir,
            rescan=rescan,
            layout=layout,
        )
    finally:
        if progress.live.is_started:
            progress.stop()
    if as_json:
        print_json(inv.to_json())
        return
    render_inventory(inv, root, decoded=not no_decode)
