"""Fetching an exported run from the Hugging Face Hub (``bnnkit pull``).

:func:`pull` downloads a model repository with ``huggingface_hub.snapshot_download`` into a
folder and checks that it is a bnnkit export (:func:`bnnkit.run.export.is_export`). Offline
(``HF_HUB_OFFLINE=1``) or with the Hub unreachable it fails at once with a
:class:`~bnnkit.errors.UsageError` (exit code 2) that says so; every request has a timeout
(``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT``, 10 s by default), so it never hangs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bnnkit._version import __version__
from bnnkit.errors import UsageError
from bnnkit.run.dirs import is_run_dir
from bnnkit.run.export import CONFIG_FILE, is_export

__all__ = ["default_dir", "pull"]

#: seconds to wait for the Hub's answer about the repository (huggingface_hub's etag timeout)
TIMEOUT_S = 10.0


def default_dir(repo_id: str) -> Path:
    """Where ``bnnkit pull REPO_ID`` puts the folder without DIR: ``models/<owner>--<name>``."""
    return Path("models") / repo_id.replace("/", "--")


def _download(repo_id: str, dest: Path, revision: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id,
        revision=revision,
        local_dir=dest,
        library_name="bnnkit",
        library_version=__version__,
        etag_timeout=TIMEOUT_S,
    )


def _why(exc: Exception) -> str:
    """A one-line reason for a failed download."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, HFValidationError):
        return f"not a repository id ({str(exc).splitlines()[0]})"
    if isinstance(exc, GatedRepoError):
        return "the repository is gated: accept its terms on the Hub and log in (hf auth login)"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repository on the Hub (or it is private: log in with `hf auth login`)"
    if isinstance(exc, RevisionNotFoundError):
        return "the repository has no such revision"
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set, so the Hub is not contacted, and no copy is cached"
    if isinstance(exc, LocalEntryNotFoundError):
        return "the Hub cannot be reached (no network?) and no copy is cached"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def pull(repo_id: str, dest: str | Path | None = None, *, revision: str | None = None) -> Path:
    """Download the exported run ``repo_id`` (``owner/name``) into ``dest`` (default
    :func:`default_dir`); the folder, checked to be a bnnkit export. A download that fails, or
    a repository that is not an export, is a :class:`UsageError`; a failed download leaves no
    folder behind that was not there before."""
    dest = Path(dest) if dest is not None else default_dir(repo_id)
    existed = dest.exists()
    if existed and any(dest.iterdir()) and not is_export(dest):
        raise UsageError(f"'{dest}' exists and is not an exported bnnkit run",
                         hint="choose another DIR")  # fmt: skip
    try:
        _download(repo_id, dest, revision)
    except Exception as exc:  # huggingface_hub's errors, httpx's, OSError, ValueError (bad ids)
        if not existed:
            shutil.rmtree(dest, ignore_errors=True)
        raise UsageError(
            f"cannot fetch '{repo_id}' from the Hugging Face Hub: {_why(exc)}",
            hint="check the name and your connection (unset HF_HUB_OFFLINE to go online), or "
            "copy an exported folder by other means and use it directly",
        ) from None
    if not (is_export(dest) and is_run_dir(dest)):
        raise UsageError(
            f"'{repo_id}' was downloaded to {dest} but is not a bnnkit export (it lacks "
            f"{CONFIG_FILE}, checkpoint.json or recipe.toml)",
            hint="a bnnkit model repository is written by `bnnkit export RUN DIR`",
        )
    return dest
