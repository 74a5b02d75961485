"""``bnnkit pull``: fetch an exported run from the Hugging Face Hub (:mod:`bnnkit.run.pull`)."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import console


@click.command("pull")
@click.argument("repo_id")
@click.argument("dest", metavar="[DIR]", required=False, type=click.Path(path_type=Path))
@click.option("--revision", default=None, help="A branch, tag or commit of the repository.")
def command(repo_id: str, dest: Path | None, revision: str | None) -> None:
    """Download the exported detector REPO_ID (owner/name on the Hugging Face Hub) into DIR
    (default: models/<owner>--<name>), ready for `bnnkit predict DIR` and `bnnkit evaluate DIR`.

    The repository must be a folder written by `bnnkit export`; anything else is refused after
    the download. Offline (HF_HUB_OFFLINE=1) or with the Hub unreachable, it stops at once with
    a message and exit code 2 (every request has a timeout: HF_HUB_ETAG_TIMEOUT,
    HF_HUB_DOWNLOAD_TIMEOUT). A private or gated repository needs `hf auth login` first.

    \b
    Examples:
      bnnkit pull OWNER/REPO detector/
      bnnkit predict detector/ photo.png
    """
    from bnnkit.run.pull import pull

    path = pull(repo_id, dest, revision=revision)
    console().print(f"pulled {repo_id} -> {path}")
    console().print(f"next:   bnnkit predict {path} IMAGE")
