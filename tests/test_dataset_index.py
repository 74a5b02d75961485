"""The dataset index (bnnkit.data.index): built once, reused, refreshed only where the tree
changed, readable with sqlite3 itself, safe with two processes; and `data check` reporting the
non-image files it skipped."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import bnnkit.data.index as index_mod
from bnnkit.cli import main
from bnnkit.data.genimage import class_folders, find_generators
from bnnkit.data.index import DatasetIndex, index_file, samples_digest
from bnnkit.data.inventory import take_inventory
from bnnkit.data.layout import CLASS_FOLDERS
from bnnkit.data.layouts import index_split

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, size: tuple[int, int] = (20, 12), value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 0, 0)).save(path, format="PNG")


def _age(root: Path, seconds: float = 30.0) -> None:
    """Move every mtime under ``root`` into the past (outside the racy window)."""
    past = time.time() - seconds
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), (past, past))
        os.utime(folder, (past, past))


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "gi"
    for gen in ("imagenet_ai_0508_adm", "imagenet_ai_0419_sdv4"):
        for split in ("train", "val"):
            for cls in ("ai", "nature"):
                for i in range(3):
                    _png(root / gen / split / cls / f"{i}.png", value=10 * i)
    nested = root / "imagenet_ai_0508_adm" / "train" / "ai" / "sub"
    _png(nested / "deep.PNG", size=(30, 40))
    (root / "imagenet_ai_0508_adm" / "val" / "ai" / "bad.png").write_bytes(b"hello, not a png")
    _age(root)
    return root


class SniffCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = index_mod.sniff_file

        def counting(path: str):
            self.paths.append(path)
            return real(path)

        monkeypatch.setattr(index_mod, "sniff_file", counting)


def _refresh(root: Path, cache: Path, **kw):
    with DatasetIndex(root, cache) as idx:
        stats = idx.refresh(class_folders(find_generators(root)), CLASS_FOLDERS, **kw)
        rows = {e.rel: e for f in class_folders(find_generators(root)).values()
                for e in idx.entries(f)}  # fmt: skip
    return stats, rows


def test_cold_builds_then_warm_reuses_without_sniffing(tree, tmp_path, monkeypatch):
    sniffs = SniffCounter(monkeypatch)
    cache = tmp_path / "cache"
    stats, rows = _refresh(tree, cache)
    assert len(sniffs.paths) == 26 == stats.files_sniffed == len(rows)
    deep = rows["imagenet_ai_0508_adm/train/ai/sub/deep.PNG"]
    assert (deep.format, deep.width, deep.height, deep.broken) == ("PNG", 30, 40, False)
    bad = rows["imagenet_ai_0508_adm/val/ai/bad.png"]
    assert bad.broken and "text file" in (bad.reason or "") and bad.format is None

    sniffs.paths.clear()
    stats, again = _refresh(tree, cache)
    assert sniffs.paths == [] and stats.files_sniffed == 0 and stats.folders_listed == 0
    assert again == rows

    # Readable by the library itself, with the documented columns.
    con = sqlite3.connect(index_file(tree, cache))
    got = con.execute(
        "SELECT generator, split, label, format, width, height, broken FROM files WHERE rel = ?",
        ("imagenet_ai_0508_adm/train/ai/sub/deep.PNG",),
    ).fetchone()
    assert got == ("adm", "train", 1, "PNG", 30, 40, 0)
    assert con.execute("SELECT count(*) FROM files").fetchone() == (26,)
    con.close()


def test_changed_added_removed_files_are_picked_up(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _refresh(tree, cache)
    sniffs = SniffCounter(monkeypatch)
    folder = tree / "imagenet_ai_0419_sdv4" / "val" / "nature"
    (folder / "0.png").unlink()
    _png(folder / "new.png", size=(8, 9))
    _png(folder / "tmp", size=(50, 60))
    os.replace(folder / "tmp", folder / "1.png")  # replaced: new size, new mtime
    stats, rows = _refresh(tree, cache)
    assert sorted(Path(p).name for p in sniffs.paths) == ["1.png", "new.png"]
    assert stats.files_removed == 1 and stats.folders_listed == 1
    prefix = "imagenet_ai_0419_sdv4/val/nature/"
    assert prefix + "0.png" not in rows
    assert (rows[prefix + "new.png"].width, rows[prefix + "1.png"].width) == (8, 50)

    # Rewritten in place (the folder's mtime does not move): found by a rescan.
    _age(tree)
    _refresh(tree, cache)
    sniffs.paths.clear()
    before = folder.stat().st_mtime_ns
    (folder / "2.png").write_bytes(b"")
    os.utime(folder, ns=(before, before))
    _, rows = _refresh(tree, cache)
    assert sniffs.paths == [] and not rows[prefix + "2.png"].broken  # trusted folder
    _, rows = _refresh(tree, cache, rescan=True)
    assert [Path(p).name for p in sniffs.paths] == ["2.png"]
    assert rows[prefix + "2.png"].broken and "empty" in (rows[prefix + "2.png"].reason or "")

    # A folder removed with its files, and a recent (racy) file checked again next time.
    for p in (tree / "imagenet_ai_0508_adm" / "train" / "ai" / "sub").iterdir():
        p.unlink()
    (tree / "imagenet_ai_0508_adm" / "train" / "ai" / "sub").rmdir()
    _, rows = _refresh(tree, cache)
    assert not any("/sub/" in r for r in rows)
    _png(folder / "fresh.png")
    _refresh(tree, cache)
    sniffs.paths.clear()
    _refresh(tree, cache)
    # Modified less than RACY_SECONDS before the last scan: checked again (2.png too).
    assert sorted(Path(p).name for p in sniffs.paths) == ["2.png", "fresh.png"]


def test_index_split_and_digest_match_a_plain_walk(tree, tmp_path):
    for split in ("train", "val"):
        plain = index_split(tree, ["adm", "sdv4"], split, balance=True, seed=3)
        indexed = index_split(tree, ["adm", "sdv4"], split, seed=3, cache_dir=tmp_path / "c")
        assert indexed == plain and [s.path for s in indexed] == [s.path for s in plain]
        assert all(s.size and s.mtime_ns for s in indexed)
        assert samples_digest(indexed) == samples_digest(plain)
    limited = index_split(tree, ["adm"], "train", limit=2, cache_dir=tmp_path / "c")
    assert limited == index_split(tree, ["adm"], "train", limit=2)


def test_check_records_decode_results_and_warm_check_decodes_nothing(tree, tmp_path):
    cache = tmp_path / "cache"
    # A PNG whose header is fine but whose data is cut off: only a full decode finds it.
    good = tree / "imagenet_ai_0419_sdv4" / "train" / "ai" / "0.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(good, format="PNG")
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    _age(tree)
    cold = take_inventory(tree, cache_dir=cache)
    assert cold.decoded_now == 26 and cold.index == index_file(tree, cache)
    names = sorted(Path(b.path).name for b in cold.broken)
    assert names == ["0.png", "bad.png"]
    warm = take_inventory(tree, cache_dir=cache, progress=lambda *_: pytest.fail("decoded"))
    assert warm.decoded_now == 0 and warm.to_json() == cold.to_json()
    assert warm.refresh.files_sniffed == 0
    con = sqlite3.connect(index_file(tree, cache))
    assert con.execute("SELECT count(*) FROM files WHERE broken = 1 AND decoded = 1").fetchone()
    assert (
        con.execute("SELECT reason FROM files WHERE rel LIKE '%sdv4/train/ai/0.png'")
        .fetchone()[0]
        .startswith("truncated")
    )
    con.close()


def test_corrupt_index_file_is_rebuilt(tree, tmp_path):
    cache = tmp_path / "cache"
    file = index_file(tree, cache)
    file.parent.mkdir(parents=True)
    file.write_bytes(b"this is not a database" * 100)
    _, rows = _refresh(tree, cache)
    assert len(rows) == 26


_WORKER = """
import sys
from bnnkit.data.inventory import take_inventory
inv = take_inventory(sys.argv[1], cache_dir=sys.argv[2])
print(inv.total, len(inv.broken))
"""


def test_two_processes_index_the_same_root_at_once(tmp_path):
    root = tmp_path / "gi"
    for split in ("train", "val"):
        for cls in ("ai", "nature"):
            for i in range(150):
                _png(root / "imagenet_ai_0508_adm" / split / cls / f"{i}.png", size=(8, 8))
    _age(root)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(root), str(cache)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.split() == ["600", "0"]
    con = sqlite3.connect(index_file(root, cache))
    assert con.execute("SELECT count(*), sum(decoded) FROM files").fetchone() == (600, 600)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


def test_data_check_reports_skipped_files(tree, tmp_path):
    folder = tree / "imagenet_ai_0508_adm" / "train" / "nature"
    (folder / "notes.txt").write_text("x")
    (folder / "labels.txt").write_text("x")
    (folder / "README").write_text("x")
    (folder / ".DS_Store").write_bytes(b"junk")
    args = ["data", "check", str(tree), "--cache-dir", str(tmp_path / "c")]
    report = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    assert report["skipped"] == {".txt": 2, "(hidden)": 1, "(no extension)": 1}
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "skipped 4 non-image file(s): 2 .txt" in result.output
