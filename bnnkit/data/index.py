"""The dataset index: one SQLite file per data root, so the tree is walked and sniffed once.

The first command on a root (``data check``, ``train``, ``evaluate``) records every image file
of the class folders it reads (``<generator>/<split>/<ai|nature>``, recursively) in
``<cache_dir>/index/<root name>-<hash>.sqlite``: path, generator, split, label, size, mtime,
the format and dimensions read from the header, and whether the file is broken (from the header,
or from a full decode once ``data check`` has decoded it). Later commands refresh it: a folder
whose mtime is unchanged is not listed again (its files and sub-folders come from the index); in
a changed folder each file is stat'ed and only new or changed files (size or mtime) are sniffed
again. A folder or file modified within :data:`RACY_SECONDS` of a scan is re-checked next time
(coarse timestamps); ``rescan=True`` stats every file even in unchanged folders (a file
rewritten in place leaves its folder's mtime alone).

Why SQLite (stdlib ``sqlite3``) rather than Parquet: the refresh updates, inserts and deletes a
few rows in place, where a Parquet file has to be rewritten whole; and WAL mode lets several
processes (DDP ranks, two terminals) read while one writes, each refresh being one transaction.
Open it with ``sqlite3`` or ``pandas.read_sql("SELECT * FROM files", con)``. A corrupt index
is rebuilt; an unwritable cache folder gives an index in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnkit.data.images import DEFAULT_MAX_PIXELS, is_image_name
from bnnkit.data.sniff import (
    SNIFF_BYTES,
    CorruptHeader,
    describe_non_image,
    header_size,
    sniff_bytes,
)

SCHEMA_VERSION = 1
DEFAULT_CACHE_DIR = Path(".bnnkit-cache")
#: a folder or file modified this recently before a scan is not trusted at the next one
RACY_SECONDS = 2.0
HIDDEN = "(hidden)"
NO_EXTENSION = "(no extension)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS folders (
    rel TEXT PRIMARY KEY, top TEXT NOT NULL, mtime_ns INTEGER,
    subdirs TEXT NOT NULL, skipped TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    rel TEXT PRIMARY KEY, folder TEXT NOT NULL, top TEXT NOT NULL,
    generator TEXT NOT NULL, split TEXT NOT NULL, label INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, racy INTEGER NOT NULL,
    format TEXT, width INTEGER, height INTEGER,
    broken INTEGER NOT NULL, reason TEXT, decoded INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_top ON files (top);
CREATE INDEX IF NOT EXISTS files_folder ON files (folder);
CREATE INDEX IF NOT EXISTS folders_top ON folders (top);"""
_FILE_COLUMNS = "rel, size, mtime_ns, format, width, height, broken, reason, decoded"


@dataclass(frozen=True)
class Sniffed:
    """What the first bytes of a file say: Pillow's format name, header dimensions, and the
    reason it cannot be an image (None when the header looks fine)."""

    format: str | None
    width: int | None
    height: int | None
    reason: str | None


def sniff_file(path: str) -> Sniffed:
    """Format, header size and header-level problems of one file (no pixel is decoded)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except PermissionError:
        return Sniffed(None, None, None, "permission denied")
    except OSError as exc:
        return Sniffed(None, None, None, f"cannot open file: {exc.strerror or exc}")
    with fh:
        try:
            head = fh.read(SNIFF_BYTES)
            if not head:
                return Sniffed(None, None, None, "empty file (0 bytes)")
            fmt = sniff_bytes(head)
            if fmt is None:
                return Sniffed(None, None, None, describe_non_image(head))
            size = header_size(fmt, head, fh)
        except CorruptHeader as exc:
            return Sniffed(fmt, None, None, str(exc))
        except OSError as exc:
            return Sniffed(None, None, None, f"read error: {exc.strerror or exc}")
    if size is None:
        return Sniffed(fmt, None, None, None)
    width, height = size
    if width * height > DEFAULT_MAX_PIXELS:
        limit = f"exceeds the {DEFAULT_MAX_PIXELS}-pixel limit"
        return Sniffed(fmt, width, height, f"too large: {width}x{height} pixels {limit}")
    return Sniffed(fmt, width, height, None)


@dataclass(frozen=True)
class Entry:
    """One indexed image file."""

    path: Path  # the root as given / the relative path (what list_images would return)
    rel: str  # relative to the root, '/'-separated
    size: int
    mtime_ns: int
    format: str | None
    width: int | None
    height: int | None
    broken: bool
    reason: str | None
    decoded: bool  # fully decoded by `data check`, so `broken` is final


@dataclass
class RefreshStats:
    """What one :meth:`DatasetIndex.refresh` did."""

    folders_listed: int = 0
    folders_reused: int = 0
    files_sniffed: int = 0
    files_removed: int = 0
    seconds: float = 0.0


def index_file(root: str | Path, cache_dir: str | Path) -> Path:
    """Where the index of ``root`` lives under ``cache_dir`` (one file per resolved root)."""
    resolved = Path(root).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    return Path(cache_dir) / "index" / f"{resolved.name or 'root'}-{digest}.sqlite"


def _connect(db: str) -> sqlite3.Connection:
    con = sqlite3.connect(db, timeout=120.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 120000")
    if db != ":memory:":
        # Readers never wait for a writer. Where WAL is refused (some network filesystems)
        # the default rollback journal is still safe.
        with contextlib.suppress(sqlite3.OperationalError):
            con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
    con.execute("BEGIN IMMEDIATE")
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):  # another layout: start afresh
                for table in ("meta", "folders", "files"):
                    con.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            con.execute(statement)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return con


class DatasetIndex:
    """The index of one data root (see the module docstring). ``cache_dir=None`` keeps it in
    memory (nothing written; every open starts cold)."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None) -> None:
        self.root = Path(root)
        self.file: Path | None = None
        if cache_dir is not None:
            try:
                self.file = index_file(root, cache_dir)
                self.file.parent.mkdir(parents=True, exist_ok=True)
                self.con = self._open_file(self.file)
                return
            except (OSError, sqlite3.Error):
                self.file = None  # unwritable cache folder: work without a saved index
        self.con = _connect(":memory:")

    @staticmethod
    def _open_file(file: Path) -> sqlite3.Connection:
        try:
            return _connect(str(file))
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc):
                raise
            for suffix in ("", "-wal", "-shm"):  # not a database (corrupt): it is a cache
                Path(f"{file}{suffix}").unlink(missing_ok=True)
            return _connect(str(file))

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> DatasetIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(
        self,
        tops: Mapping[tuple[str, str, str], Path],
        labels: Mapping[str, int],
        *,
        rescan: bool = False,
        prune: bool = False,
    ) -> RefreshStats:
        """Bring the entries of the class folders ``tops`` ((generator, split, class) -> folder)
        up to date with the filesystem. ``prune`` also drops folders no longer among ``tops``."""
        t0 = time.perf_counter()
        stats = RefreshStats()
        writes: list[tuple[str, list[tuple[Any, ...]]]] = []
        tops_rel = {}
        for (gen, split, cls), folder in tops.items():
            top = self._rel(folder)
            tops_rel[top] = True
            meta = (top, gen, split, labels[cls])
            self._walk(Path(folder), meta, rescan, stats, writes)
        if prune:
            known = [r[0] for r in self.con.execute("SELECT DISTINCT top FROM folders")]
            gone = [(t,) for t in known if t not in tops_rel]
            writes.append(("DELETE FROM files WHERE top = ?", gone))
            writes.append(("DELETE FROM folders WHERE top = ?", gone))
        self._write(writes)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def _walk(self, top_dir: Path, meta: tuple[str, str, str, int], rescan: bool,
              stats: RefreshStats, writes: list) -> None:  # fmt: skip
        top = meta[0]
        seen: set[tuple[int, int]] = set()
        visited: set[str] = set()
        pending = [(top, str(top_dir))]
        while pending:
            rel, folder = pending.pop()
            try:
                st = os.stat(folder)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue  # a symbolic-link cycle, or a folder reached twice
            seen.add((st.st_dev, st.st_ino))
            visited.add(rel)
            row = self.con.execute(
                "SELECT mtime_ns, subdirs FROM folders WHERE rel = ?", (rel,)
            ).fetchone()
            if row is not None and row[0] == st.st_mtime_ns and not rescan:
                stats.folders_reused += 1
                subdirs = json.loads(row[1])
            else:
                stats.folders_listed += 1
                subdirs = self._scan(rel, folder, st, meta, row is None, stats, writes)
            pending.extend((f"{rel}/{name}", os.path.join(folder, name)) for name in subdirs)
        known = self.con.execute("SELECT rel FROM folders WHERE top = ?", (top,)).fetchall()
        gone = [(r[0],) for r in known if r[0] not in visited]
        writes.append(("DELETE FROM files WHERE folder = ?", gone))
        writes.append(("DELETE FROM folders WHERE rel = ?", gone))

    def _scan(self, rel: str, folder: str, st: os.stat_result, meta: tuple[str, str, str, int],
              new: bool, stats: RefreshStats, writes: list) -> list[str]:  # fmt: skip
        """List one folder: re-sniff new and changed files, forget removed ones."""
        existing: dict[str, tuple[int, int, int]] = {}
        if not new:
            existing = {
                r[0]: (r[1], r[2], r[3])
                for r in self.con.execute(
                    "SELECT rel, size, mtime_ns, racy FROM files WHERE folder = ?", (rel,)
                )
            }
        now_ns = time.time_ns()
        racy_ns = int(RACY_SECONDS * 1e9)
        subdirs: list[str] = []
        skipped: Counter[str] = Counter()
        rows: list[tuple[Any, ...]] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        skipped[HIDDEN] += 1
                        continue
                    try:
                        if entry.is_dir():
                            subdirs.append(entry.name)
                            continue
                        if not entry.is_file():
                            continue
                        if not is_image_name(entry.name):
                            skipped[os.path.splitext(entry.name)[1].lower() or NO_EXTENSION] += 1
                            continue
                        fst = entry.stat()
                    except OSError:
                        continue
                    frel = f"{rel}/{entry.name}"
                    old = existing.pop(frel, None)
                    key = (fst.st_size, fst.st_mtime_ns, 0)
                    if old == key:
                        continue  # unchanged, and was not racy when recorded
                    stats.files_sniffed += 1
                    s = sniff_file(entry.path)
                    racy = int(now_ns - fst.st_mtime_ns < racy_ns)
                    rows.append((frel, rel, *meta, fst.st_size, fst.st_mtime_ns, racy,
                                 s.format, s.width, s.height, int(s.reason is not None),
                                 s.reason, 0))  # fmt: skip
        except OSError:
            pass
        stats.files_removed += len(existing)
        writes.append(("DELETE FROM files WHERE rel = ?", [(r,) for r in existing]))
        writes.append(("INSERT OR REPLACE INTO files VALUES (" + ",".join("?" * 15) + ")", rows))
        trusted = st.st_mtime_ns if now_ns - st.st_mtime_ns >= racy_ns else None
        record = (rel, meta[0], trusted, json.dumps(sorted(subdirs)), json.dumps(skipped))
        writes.append(("INSERT OR REPLACE INTO folders VALUES (?, ?, ?, ?, ?)", [record]))
        return subdirs

    def _write(self, writes: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """All changes of a refresh in one transaction (another process sees all or none)."""
        if not any(rows for _, rows in writes):
            return
        self.con.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in writes:
                if rows:
                    self.con.executemany(sql, rows)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def entries(self, folder: Path, where: str = "") -> list[Entry]:
        """The indexed image files under the class folder ``folder``, sorted by path (the order
        of :func:`~bnnkit.data.images.list_images`); ``where``: an extra SQL condition."""
        rows = self.con.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE top = ? {where}", (self._rel(folder),)
        ).fetchall()
        rows.sort(key=lambda r: r[0].split("/"))  # Path order, without building Paths to sort
        root = str(self.root)
        return [
            Entry(
                Path(os.path.join(root, r[0])),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                bool(r[6]),
                r[7],
                bool(r[8]),
            )  # fmt: skip
            for r in rows
        ]

    def counts(self, folder: Path) -> tuple[int, int]:
        """(image files, of which broken) under the class folder ``folder``."""
        n, bad = self.con.execute(
            "SELECT count(*), total(broken) FROM files WHERE top = ?", (self._rel(folder),)
        ).fetchone()
        return int(n), int(bad)

    def skipped(self, folders: Iterable[Path]) -> dict[str, int]:
        """Files under ``folders`` left out as not images: extension (or ``(hidden)``) -> count."""
        total: Counter[str] = Counter()
        for folder in folders:
            for (counts,) in self.con.execute(
                "SELECT skipped FROM folders WHERE top = ?", (self._rel(folder),)
            ):
                total.update(json.loads(counts))
        return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))

    def record_decoded(self, results: list[tuple[str, str | None]]) -> None:
        """Store full-decode results: (relative path, reason or None when it decodes)."""
        rows = [(int(reason is not None), reason, rel) for rel, reason in results]
        self._write([("UPDATE files SET broken = ?, reason = ?, decoded = 1 WHERE rel = ?", rows)])


def samples_digest(samples: Iterable[Any]) -> str:
    """A digest of a file list for cache keys: path, label, generator, size and mtime of each
    sample. Samples from an indexed :func:`~bnnkit.data.layouts.index_split` carry their size
    and mtime (``Sample.size``/``Sample.mtime_ns``), so this costs no ``stat``; others are
    stat'ed. Same files, same digest, whether or not they came through the index."""
    h = hashlib.sha256()
    for s in samples:
        size, mtime = getattr(s, "size", None), getattr(s, "mtime_ns", None)
        if size is None or mtime is None:
            try:
                st = os.stat(s.path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                h.update(f"{s.path}|missing\n".encode())
                continue
        h.update(f"{s.path}|{s.label}|{s.generator}|{size}|{mtime}\n".encode())
    return h.hexdigest()
