"""Manifests: a CSV (or Parquet) file listing the images, one row each, with the columns
``path,label[,generator,family,split]`` (SIDBench's and B-Free's way of describing a dataset).

- ``path``: relative to the manifest's folder (absolute paths are read as they are);
- ``label``: ``0``/``1`` or ``real``/``fake`` (any case);
- ``generator``: defaults to the manifest folder's name; ``family``: optional grouping of
  generators (recorded in ``metrics.json`` and shown in ``report.md``);
- ``split``: ``train``/``val``/``test``; split ``"val"`` reads a generator's ``val`` rows, else its
  ``test`` rows; without the column every row is evaluation data (``val``) and training refuses.

Rows are numbered as a spreadsheet shows them (the header is row 1). A row whose file is missing
or whose label, split or path is bad is a :class:`Problem`: ``bnnkit data check`` lists each with
its row number, training and evaluation skip it and say how many they skipped. There is no
folder index for a manifest (the manifest *is* the file list): each listed file is stat'ed when
the manifest is read, and ``data check`` decodes every one.
"""

from __future__ import annotations

import csv
import functools
import os
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.errors import UsageError

MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".pq")
LABELS: dict[str, int] = {"0": 0, "1": 1, "real": 0, "fake": 1, "0_real": 0, "1_fake": 1}
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED: tuple[str, ...] = ("path", "label")


@dataclass(frozen=True)
class Row:
    row: int
    path: Path
    label: int
    generator: str
    family: str | None
    split: str | None
    size: int | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Problem:
    """A manifest row left out, and why."""

    row: int
    path: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.path or '(no path)'}: {self.reason}"


@dataclass
class Manifest:
    file: Path
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    has_split: bool = False

    def generators(self) -> dict[str, Path]:
        """Generator -> the manifest file, in order of first appearance (valid rows)."""
        return dict.fromkeys((r.generator for r in self.rows), self.file)

    def families(self) -> dict[str, str]:
        """Generator -> family, for generators that have one."""
        out: dict[str, str] = {}
        for r in self.rows:
            if r.family:
                out.setdefault(r.generator, r.family)
        return out


def manifest_file(root: str | Path) -> Path | None:
    """The manifest ``root`` names: the file itself, or the one ``manifest.csv`` /
    ``manifest.parquet`` in the folder ``root``; None when there is none."""
    root = Path(root)
    if root.is_file():
        return root
    if root.is_dir():
        candidates = [root / f"manifest{s}" for s in MANIFEST_SUFFIXES]
        found = [p for p in candidates if p.is_file()]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise UsageError(f"'{root}' holds several manifests ({names}): point data.root at one")
    return None


def _records(file: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The manifest's columns and rows, parsed once per version of the file: one command reads
    the manifest several times (generators, families, each split, the data notes)."""
    st = file.stat()
    return _parsed(str(file.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[list[str], list[dict[str, Any]]]:
    file = Path(path)  # mtime_ns and size key the cache: a changed manifest is read again
    if file.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            try:
                import pandas as pd
            except ImportError:
                raise UsageError(
                    f"{file}: reading a Parquet manifest needs the 'pyarrow' package "
                    "(pip install pyarrow), or write the manifest as CSV"
                ) from None
            frame = pd.read_parquet(file)
            return list(frame.columns), frame.to_dict("records")
        table = pq.read_table(file)
        return list(table.column_names), table.to_pylist()
    try:
        with open(file, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read the manifest {file}: {exc}") from None


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None / NaN
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_manifest(root: str | Path, *, stat: bool = True) -> Manifest:
    """The rows of the manifest at ``root`` (a file or a folder holding one), with the rows left
    out as :class:`Problem` s. ``stat``: check that each file exists (and record its size and
    mtime for cache keys)."""
    file = manifest_file(root)
    if file is None:
        raise UsageError(
            f"no manifest at '{root}'",
            hint="point data.root at a CSV/Parquet file with columns path,label"
            "[,generator,family,split], or a folder holding exactly one manifest.csv",
        )
    columns, records = _records(file)
    names = {c.strip().lower(): c for c in columns if c}
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise UsageError(
            f"manifest {file} has no column {', '.join(missing)} (columns: "
            f"{', '.join(columns) or 'none'})",
            hint="columns: path,label[,generator,family,split]",
        )
    base = file.parent
    default_gen = base.resolve().name.lower() or "manifest"
    out = Manifest(file, has_split="split" in names)
    for i, rec in enumerate(records, start=2):
        get = {k: _text(rec.get(orig)) for k, orig in names.items()}
        path_text, label_text = get.get("path", ""), get.get("label", "").lower()
        if not path_text:
            out.problems.append(Problem(i, "", "empty path"))
            continue
        if label_text not in LABELS:
            out.problems.append(
                Problem(i, path_text, f"bad label '{get.get('label', '')}' (0/1 or real/fake)")
            )
            continue
        split = get.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            out.problems.append(Problem(i, path_text, f"unknown split '{split}' (train/val/test)"))
            continue
        path = Path(path_text) if os.path.isabs(path_text) else base / path_text
        size = mtime = None
        if stat:
            try:
                st = os.stat(path)
            except OSError:
                out.problems.append(Problem(i, path_text, "file not found"))
                continue
            if not stat_mod.S_ISREG(st.st_mode):  # the stat just made, not a second one
                out.problems.append(Problem(i, path_text, "not a file"))
                continue
            size, mtime = st.st_size, st.st_mtime_ns
        generator = get.get("generator") or default_gen
        row = Row(i, path, LABELS[label_text], generator, get.get("family") or None,
                  split, size, mtime)  # fmt: skip
        out.rows.append(row)
    return out


def rows_for(manifest: Manifest, generator: str, split: str) -> list[Row]:
    """``generator``'s rows read as ``split`` (``"val"``: val rows, else test rows, else, for a
    manifest without a split column, every row)."""
    own = [r for r in manifest.rows if r.generator == generator]
    if not manifest.has_split:
        if split == "train":
            raise UsageError(
                f"manifest {manifest.file} has no split column: its images are evaluation data "
                "only, so nothing can be trained on them",
                hint="add a column split with train/val/test per row",
            )
        return own
    if split == "train":
        return [r for r in own if r.split == "train"]
    for wanted in (split, "test") if split == "val" else (split,):
        chosen = [r for r in own if r.split == wanted]
        if chosen:
            return chosen
    return []
