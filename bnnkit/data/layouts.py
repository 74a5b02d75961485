"""Data layouts (``data.layout``): the one entry point the rest of bnnkit reads images through.

- ``genimage``: ``<root>/<generator folder>/{train,val}/{ai,nature}`` (:mod:`bnnkit.data.genimage`);
- ``binary``: ``{0_real,1_fake}`` trees at any depth (:mod:`bnnkit.data.binary`);
- ``manifest``: a CSV/Parquet file ``path,label[,generator,family,split]``
  (:mod:`bnnkit.data.manifest`);
- ``auto``: :func:`resolve_layout` decides per root: a file, or a folder holding one
  ``manifest.csv``/``manifest.parquet`` -> manifest; GenImage generator folders with
  ``{train,val}/{ai,nature}`` -> genimage; any ``0_real``/``1_fake`` folder -> binary.

API (every function takes ``layout=`` and resolves ``"auto"`` for the root it is given, so
several roots with different layouts can be read side by side):

- :func:`resolve_layout` ``(root, layout="auto") -> str``;
- :func:`list_generators` ``(root, layout="auto") -> {generator: folder or manifest file}``;
- :func:`require_generators` ``(root, names, layout="auto")``: a clear error listing what exists;
- :func:`index_split` ``(root, generators, split, *, limit, balance, seed, cache_dir, layout)``;
- :func:`generator_families` ``(root, layout="auto") -> {generator: family}`` (manifests);
- :func:`describe` ``(root, layout="auto") -> str``: the one line "what was found".

The dataset index (:mod:`bnnkit.data.index`) serves genimage and binary trees (keyed by class
folder); a manifest is its own file list (each file stat'ed on reading, see
:mod:`bnnkit.data.manifest`).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from bnnkit.data import binary, genimage, manifest
from bnnkit.data.genimage import MISSING_ROOT_HINT, Sample
from bnnkit.errors import UsageError

__all__ = [
    "LAYOUTS",
    "Sample",
    "data_notes",
    "describe",
    "generator_families",
    "index_split",
    "layout_record",
    "list_generators",
    "require_generators",
    "resolve_layout",
]

LAYOUTS: tuple[str, ...] = ("auto", "genimage", "binary", "manifest")
log = logging.getLogger("bnnkit.data")


def resolve_layout(root: str | Path, layout: str = "auto") -> str:
    """``layout``, or for ``"auto"`` the layout the data at ``root`` is in (see the module
    docstring); a :class:`~bnnkit.errors.UsageError` naming what was looked for when neither."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown data layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    path = Path(root)
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except OSError:
        raise UsageError(f"data root '{root}' does not exist", hint=MISSING_ROOT_HINT) from None
    if key not in _DETECTED:
        _DETECTED[key] = _detect(path, root)
    return _DETECTED[key]


#: (resolved root, its mtime) -> detected layout: one detection per root and process
_DETECTED: dict[tuple[str, int], str] = {}


def _detect(path: Path, root: str | Path) -> str:
    if manifest.manifest_file(path) is not None:
        return "manifest"
    if genimage.class_folders(genimage.find_generators(path)):
        return "genimage"
    if binary.find_pairs(path):
        return "binary"
    raise UsageError(
        f"cannot tell the layout of '{root}': it has no GenImage generator folders "
        "(<generator>/{train,val}/{ai,nature}), no {0_real,1_fake} folders and no manifest.csv",
        hint=MISSING_ROOT_HINT,
    )


def list_generators(root: str | Path, layout: str = "auto") -> dict[str, Path]:
    """The generators present under ``root``: name -> its folder (the manifest file for a
    manifest), in discovery order."""
    kind = resolve_layout(root, layout)
    if kind == "genimage":
        return genimage.find_generators(root)
    if kind == "binary":
        return binary.binary_generators(root)
    return manifest.read_manifest(root, stat=False).generators()


def generator_families(root: str | Path, layout: str = "auto") -> dict[str, str]:
    """Generator -> family: a manifest's ``family`` column; empty for the other layouts."""
    if resolve_layout(root, layout) != "manifest":
        return {}
    return manifest.read_manifest(root, stat=False).families()


def require_generators(root: str | Path, names: list[str], layout: str = "auto") -> dict[str, Path]:
    """``{name: folder}`` for ``names``; a clear error naming the missing ones, what exists and
    the closest existing name."""
    kind = resolve_layout(root, layout)
    if kind == "genimage":
        return genimage.require_generators(root, names)
    found = list_generators(root, kind)
    missing = [n for n in names if n not in found]
    if missing:
        close = difflib.get_close_matches(missing[0], list(found), n=1, cutoff=0.6)
        raise UsageError(
            f"data root '{root}' ({kind} layout) has no generator {', '.join(missing)} "
            f"(found: {', '.join(found) or 'none'})",
            hint=f"did you mean '{close[0]}'?"
            if close
            else "set data.train_generators and data.holdout to generators the data has",
        )
    return {n: found[n] for n in names}


def layout_record(root: str | Path, layout: str, generators: list[str]) -> dict[str, object]:
    """What ``metrics.json`` records of the data: ``layout`` (resolved) and, when the data has
    families (a manifest), ``families`` {generator: family} of ``generators``."""
    kind = resolve_layout(root, layout)
    families = generator_families(root, kind)
    chosen = {g: families[g] for g in generators if g in families}
    return {"layout": kind, **({"families": chosen} if chosen else {})}


def describe(root: str | Path, layout: str = "auto") -> str:
    """One line: the layout (and whether it was detected) and the generators found."""
    kind = resolve_layout(root, layout)
    gens = list(list_generators(root, kind))
    how = "detected" if layout == "auto" else "data.layout"
    shown = ", ".join(gens[:12]) + (f", ... ({len(gens)} in all)" if len(gens) > 12 else "")
    return f"data: {root}: {kind} layout ({how}); generators: {shown or 'none'}"


def data_notes(root: str | Path, layout: str = "auto") -> list[str]:
    """What train/evaluate print at startup: :func:`describe`'s line and, for a manifest, the
    rows it skips (missing files, bad labels), the first few by row number."""
    notes = [describe(root, layout)]
    if resolve_layout(root, layout) == "manifest":
        m = manifest.read_manifest(root)
        if m.problems:
            first = "; ".join(str(p) for p in m.problems[:3])
            more = f"; ... ({len(m.problems) - 3} more)" if len(m.problems) > 3 else ""
            notes.append(
                f"skipping {len(m.problems)} manifest row(s) of {m.file.name}: {first}{more} "
                f"(`bnnkit data check {root}` lists them)"
            )
    return notes


def _binary_listing(
    root: str | Path, generators: list[str], split: str, cache_dir: str | Path | None
) -> dict[str, dict[int, list[Sample]]]:
    from bnnkit.data.images import list_images

    tops, labels = binary.binary_tops(root, generators, split)
    out: dict[str, dict[int, list[Sample]]] = {g: {0: [], 1: []} for g in generators}
    if cache_dir is None:
        for (gen, _, key), folder in tops.items():
            out[gen][labels[key]].extend(Sample(p, labels[key], gen) for p in list_images(folder))
    else:
        from bnnkit.data.index import DatasetIndex

        with DatasetIndex(root, cache_dir) as index:
            index.refresh(tops, labels)
            for (gen, _, key), folder in tops.items():
                out[gen][labels[key]].extend(
                    Sample(e.path, labels[key], gen, e.size, e.mtime_ns)
                    for e in index.entries(folder)
                )
    for per_class in out.values():
        for items in per_class.values():
            items.sort(key=lambda s: s.path)
    return out


def _manifest_listing(
    root: str | Path, generators: list[str], split: str
) -> dict[str, dict[int, list[Sample]]]:
    m = manifest.read_manifest(root)
    if m.problems:
        log.info("manifest %s: skipped %d row(s)", m.file, len(m.problems))
    out: dict[str, dict[int, list[Sample]]] = {g: {0: [], 1: []} for g in generators}
    for gen in generators:
        for r in manifest.rows_for(m, gen, split):
            out[gen][r.label].append(Sample(r.path, r.label, gen, r.size, r.mtime_ns))
    return out


def index_split(
    root: str | Path,
    generators: list[str],
    split: str,
    *,
    limit: int = 0,
    balance: bool = True,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    layout: str = "auto",
) -> list[Sample]:
    """Samples of ``split`` (``"train"`` or ``"val"``) for ``generators`` in the data at ``root``
    (any layout): per generator both classes, balanced (the larger class subsampled to the
    smaller) and capped at ``limit`` per class when ``limit > 0``. Subsampling is seeded, so the
    same recipe always sees the same files. With ``cache_dir``, a GenImage or binary tree's
    file list comes from the dataset index there (:mod:`bnnkit.data.index`), refreshed first,
    instead of a walk of the folders; the samples are the same either way."""
    kind = resolve_layout(root, layout)
    if kind == "genimage":
        listed = genimage.split_listing(root, generators, split, cache_dir)
    else:
        require_generators(root, generators, kind)
        listed = (
            _binary_listing(root, generators, split, cache_dir)
            if kind == "binary"
            else _manifest_listing(root, generators, split)
        )
    return genimage.select_samples(listed, split, limit, balance, seed)
