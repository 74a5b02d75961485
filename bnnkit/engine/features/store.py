"""Sharded, verified, memory-mapped storage of pooled features: one cache entry per generator
folder and split (see :mod:`bnnkit.engine.features.cache` for the keys).

An entry is a folder holding ``manifest.json`` and ``shard-NNNNN.safetensors`` files. Shard ``s``
holds the features of the entry's samples ``[s * R, (s + 1) * R)`` (``R = shard_rows``, fixed
when the entry is created), unreadable files left out, as three tensors: ``features``
(``rows x dim``, float32 or float16), ``labels`` and ``index`` (each row's sample position in the
entry). Each shard is written atomically (:mod:`bnnkit.run.fileio`) as soon as its samples are
done, then recorded in the manifest with its size and sha256; so a killed extraction resumes
from the shards already written, and a shard that is missing, truncated, has a bad header or
does not hash to its recorded digest is recomputed, never used.

Reading maps the shards into memory (``numpy.memmap`` over the safetensors data section): the
head phase gathers its batches' rows from the page cache and the cache is never loaded whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bnnkit.data.dataset import Broken
from bnnkit.run.fileio import atomic_write_bytes, atomic_write_json, file_sha256

MANIFEST = "manifest.json"
FORMAT = 1
#: target size of one shard file (rows = this / (dim * itemsize)); tests make it small
SHARD_BYTES = 64 * 2**20
#: fault injection for tests: SIGKILL this process after writing that many shards
KILL_ENV = "BNNKIT_FEATURES_KILL_AFTER"
#: feature_dtype -> (torch dtype, numpy dtype, safetensors dtype tag)
DTYPES: dict[str, tuple[torch.dtype, type, str]] = {
    "float32": (torch.float32, np.float32, "F32"),
    "float16": (torch.float16, np.float16, "F16"),
}
#: shards already hashed by this process: (path, size, mtime_ns) -> sha256
_VERIFIED: dict[tuple[str, int, int], str] = {}


class CorruptShard(Exception):
    """A shard file that must not be used; the message says why."""


def shard_rows_for(dim: int, dtype: str) -> int:
    """Samples per shard for features of ``dim`` values in ``dtype``."""
    itemsize = np.dtype(DTYPES[dtype][1]).itemsize
    return max(1, SHARD_BYTES // max(1, dim * itemsize))


def shard_name(sid: int) -> str:
    return f"shard-{sid:05d}.safetensors"


def write_shard(path: Path, features: Tensor, labels: Tensor, index: Tensor, dtype: str) -> dict:
    """Write one shard atomically; its manifest record (size, sha256, rows)."""
    from safetensors.torch import save

    data = save(
        {
            "features": features.to(DTYPES[dtype][0]).contiguous(),
            "labels": labels.to(torch.int64).contiguous(),
            "index": index.to(torch.int64).contiguous(),
        }
    )
    atomic_write_bytes(path, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": len(labels)}


def read_header(path: Path, size: int) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, tensor table) of a safetensors file of ``size`` bytes."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CorruptShard("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise CorruptShard("header longer than the file")
        try:
            table = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptShard("unreadable safetensors header") from None
    if not isinstance(table, dict):
        raise CorruptShard("unreadable safetensors header")
    table.pop("__metadata__", None)
    return 8 + n, table


@dataclass
class Shard:
    """One verified shard: labels and positions in memory, features mapped on first use."""

    path: Path
    rows: int
    dim: int
    dtype: str
    offset: int  # of the features tensor's bytes in the file
    labels: Tensor
    index: Tensor
    _array: np.ndarray | None = field(default=None, repr=False)

    @property
    def array(self) -> np.ndarray:
        """The ``rows x dim`` features, memory-mapped read-only."""
        if self._array is None:
            np_dtype = DTYPES[self.dtype][1]
            if self.rows == 0:
                self._array = np.zeros((0, self.dim), dtype=np_dtype)
            else:
                self._array = np.memmap(
                    self.path, np_dtype, mode="r", offset=self.offset, shape=(self.rows, self.dim)
                )
        return self._array


def open_shard(path: Path, record: dict, dim: int, dtype: str) -> Shard:
    """Check ``path`` against its manifest ``record`` (size, header, sha256) and open it;
    :class:`CorruptShard` when it must be recomputed."""
    try:
        st = path.stat()
    except OSError:
        raise CorruptShard("missing") from None
    if st.st_size != record["size"]:
        raise CorruptShard(f"{st.st_size} bytes, {record['size']} recorded (truncated?)")
    base, table = read_header(path, st.st_size)
    rows, tag = int(record["rows"]), DTYPES[dtype][2]
    want = {"features": (tag, [rows, dim]), "labels": ("I64", [rows]), "index": ("I64", [rows])}
    for name, (kind, shape) in want.items():
        t = table.get(name)
        if not isinstance(t, dict) or t.get("dtype") != kind or t.get("shape") != shape:
            raise CorruptShard(f"tensor {name!r} is not {kind} {shape}")
        begin, end = t["data_offsets"]
        if base + end > st.st_size:
            raise CorruptShard(f"tensor {name!r} runs past the end of the file")
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(key) or file_sha256(path)
    if digest != record["sha256"]:
        raise CorruptShard("sha256 differs from the recorded one (corrupt)")
    _VERIFIED[key] = digest

    def small(name: str) -> Tensor:
        begin, end = table[name]["data_offsets"]
        with open(path, "rb") as fh:
            fh.seek(base + begin)
            raw = fh.read(end - begin)
        return torch.from_numpy(np.frombuffer(raw, dtype=np.int64).copy())

    offset = base + table["features"]["data_offsets"][0]
    return Shard(path, rows, dim, dtype, offset, small("labels"), small("index"))


class FeatureRows:
    """The features of a list of shards, read lazily: ``rows[idx]`` (a tensor of row numbers,
    a slice or an int) gathers float32 rows from the memory-mapped shards; ``.to(device)``
    materialises them all (for methods that need every feature at once).

    The shards hold raw features; ``transform`` (the detector's standardisation, fixed when
    the rows are opened) is applied to every row read: :meth:`raw` gives the untransformed
    rows, :meth:`with_transform` the same shards under another transform."""

    def __init__(
        self, shards: list[Shard], dim: int, transform: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        self.shards = shards
        self.dim = dim
        self.transform = transform
        self._starts = np.cumsum([0, *[s.rows for s in shards]])
        self.shape = torch.Size((int(self._starts[-1]), dim))
        self.dtype = torch.float32
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __getitem__(self, key: Any) -> Tensor:
        n = self.shape[0]
        if isinstance(key, slice):
            idx = np.arange(n)[key]
        elif isinstance(key, int):
            return self[np.asarray([key])][0]
        else:
            idx = np.asarray(key.cpu() if isinstance(key, Tensor) else key, dtype=np.int64)
        idx = np.where(idx < 0, idx + n, idx).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} feature rows")
        out = np.empty((idx.size, self.dim), dtype=np.float32)
        seg = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(seg):
            mask = seg == s
            out[mask] = self.shards[s].array[idx[mask] - self._starts[s]]
        rows = torch.from_numpy(out)
        return rows if self.transform is None else self.transform(rows)

    def with_transform(self, transform: Callable[[Tensor], Tensor] | None) -> FeatureRows:
        """The same shards, read through ``transform`` instead."""
        return FeatureRows(self.shards, self.dim, transform)

    def raw(self) -> FeatureRows:
        """The same shards without a transform (the stored features)."""
        return self.with_transform(None)

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        return self[:].to(*args, **kwargs)

    def materialise(self) -> Tensor:
        return self[:]


# -- one entry: manifest, verification, filling -------------------------------------------------
@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder`` while it is filled (another process extracting the same
    entry, e.g. two protocol cells at once, waits and then finds the shards done)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep the entry consistent
        yield
        return
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class FeatureEntry:
    """A cache entry (one folder): ``meta`` fixes what it holds (key, samples, dim, dtype)."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.meta = meta
        self.n, self.dim, self.dtype = int(meta["samples"]), int(meta["dim"]), meta["dtype"]
        self.records: dict[int, dict] = {}
        self.shard_rows = shard_rows_for(self.dim, self.dtype)
        self.problems: list[str] = []  # shards found bad by the last verify(), with why
        self._read_manifest()

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.shard_rows)

    def _read_manifest(self) -> None:
        try:
            m = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if m.get("format") != FORMAT or any(m.get(k) != v for k, v in self.meta.items()):
            return  # another layout or content: start over
        self.shard_rows = int(m["shard_rows"])
        self.records = {int(k): v for k, v in m["shards"].items()}

    def _write_manifest(self) -> None:
        shards = {str(k): self.records[k] for k in sorted(self.records)}
        payload = {"format": FORMAT, **self.meta, "shard_rows": self.shard_rows, "shards": shards}
        atomic_write_json(self.folder / MANIFEST, payload)

    def verify(self) -> dict[int, Shard]:
        """The shards that are recorded and intact; bad ones are dropped (and noted)."""
        good: dict[int, Shard] = {}
        self.problems = []
        for sid, rec in sorted(self.records.items()):
            try:
                good[sid] = open_shard(self.folder / rec["file"], rec, self.dim, self.dtype)
            except CorruptShard as exc:
                self.problems.append(f"{rec['file']}: {exc}")
        self.records = {sid: self.records[sid] for sid in good}
        return good

    def missing(self, good: dict[int, Shard]) -> list[int]:
        return [s for s in range(self.num_shards) if s not in good]

    def span(self, sid: int) -> range:
        return range(sid * self.shard_rows, min(self.n, (sid + 1) * self.shard_rows))

    def broken(self) -> list[Broken]:
        return [Broken(**b) for s in sorted(self.records) for b in self.records[s]["broken"]]

    def fill(self, compute: Callable[[list[list[int]]], Iterator[tuple]], batch_size: int) -> int:
        """Compute and write the missing shards under a lock; returns how many were written.
        ``compute(batches)`` yields ``(features, labels, positions, broken)`` for each batch of
        sample positions. Batches never straddle shards and start at the shard's start, so a
        shard's batches (and hence its floats) are the same whether or not it was resumed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with _locked(self.folder):
            self._read_manifest()  # another process may have filled it meanwhile
            todo = self.missing(self.verify())
            if not todo:
                return 0
            self._write_manifest()  # without the bad shards
            kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
            pending = {sid: _Acc() for sid in todo}
            written = 0
            batches = [
                list(self.span(sid)[j : j + batch_size])
                for sid in todo
                for j in range(0, len(self.span(sid)), batch_size)
            ]
            for feats, labels, pos, broken in compute(batches):
                for b, p in broken:
                    pending[p // self.shard_rows].add_broken(b, p)
                sids = pos // self.shard_rows
                for sid in torch.unique(sids).tolist():
                    m = sids == sid
                    pending[sid].add(feats[m], labels[m], pos[m])
                for sid in [s for s, acc in pending.items() if acc.seen == len(self.span(s))]:
                    self._write(sid, pending.pop(sid))
                    written += 1
                    if kill_after and written == kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
            for sid in sorted(pending):  # only if compute yielded less than asked
                self._write(sid, pending.pop(sid))
                written += 1
            return written

    def _write(self, sid: int, acc: _Acc) -> None:
        feats, labels, pos = acc.tensors(self.dim)
        start = self.span(sid).start
        rec = write_shard(self.folder / shard_name(sid), feats, labels, pos - start, self.dtype)
        broken = [b for _, b in sorted(acc.broken, key=lambda item: item[0])]
        self.records[sid] = {"file": shard_name(sid), **rec, "start": start,
                             "stop": self.span(sid).stop, "broken": broken}  # fmt: skip
        self._write_manifest()


class _Acc:
    """The rows of one shard gathered so far."""

    def __init__(self) -> None:
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []
        self.broken: list[tuple[int, dict]] = []
        self.seen = 0

    def add(self, feats: Tensor, labels: Tensor, pos: Tensor) -> None:
        self.parts.append((feats, labels, pos))
        self.seen += len(labels)

    def add_broken(self, b: Broken, pos: int) -> None:
        self.broken.append((pos, {"path": b.path, "reason": b.reason}))
        self.seen += 1

    def tensors(self, dim: int) -> tuple[Tensor, Tensor, Tensor]:
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.long)
            return torch.zeros(0, dim), empty, empty
        f, y, p = (torch.cat(t) for t in zip(*self.parts, strict=True))
        order = torch.argsort(p)
        return f[order], y[order], p[order]
