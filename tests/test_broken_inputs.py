"""Every kind of odd file in a GenImage-shaped tree: read correctly or skipped and reported,
and data check / train / evaluate / predict all complete."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import QUICKSTART, tiny_overrides
from PIL import Image

from bnnkit.cli import main

UNREADABLE = {"zero.png", "truncated.png", "truncated.jpg", "notes.png", "huge.png"}
READABLE = {"jpeg_named.png", "cmyk.jpg", "deep16.png", "grey.png", "palette_alpha.png",
            "animated.gif", "exif_rotated.jpg"}  # fmt: skip


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming enormous dimensions (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64)  # fmt: skip


def write_odd_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    (folder / "zero.png").write_bytes(b"")
    png = _png_bytes(rgb)
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "jpeg_named.png").write_bytes(buf.getvalue())
    (folder / "notes.png").write_text("<html>not an image</html>")
    (folder / "huge.png").write_bytes(_huge_png_header(40_000, 40_000))
    rgb.convert("CMYK").save(folder / "cmyk.jpg", format="JPEG")
    deep = np.linspace(0, 65535, 40 * 40, dtype=np.uint16).reshape(40, 40)
    Image.fromarray(deep).save(folder / "deep16.png")
    rgb.convert("L").save(folder / "grey.png")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_alpha.png", transparency=0)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    rgb.crop((0, 0, 40, 30)).save(folder / "exif_rotated.jpg", format="JPEG", exif=exif)


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory) -> Path:
    from bnnkit.data.synth import synthesize

    root = tmp_path_factory.mktemp("odd")
    synthesize(root, train_per_class=6, val_per_class=3, size=32)
    for split in ("train", "val"):
        for cls in ("ai", "nature"):
            write_odd_files(root / "imagenet_ai_0508_adm" / split / cls)
    return root


def _names(entries) -> set[str]:
    return {Path(e["path"]).name for e in entries}


def test_data_check_reports_each_bad_file(runner, odd_tree):
    result = runner.invoke(main, ["data", "check", str(odd_tree), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert _names(report["broken"]) == UNREADABLE
    reasons = {Path(b["path"]).name: b["reason"] for b in report["broken"]}
    assert "empty" in reasons["zero.png"] and "truncated" in reasons["truncated.png"]
    assert "limit" in reasons["huge.png"] and "not an image" in reasons["notes.png"]
    counts = report["counts"]["adm"]["train"]["ai"]
    assert counts["files"] - counts["readable"] == len(UNREADABLE)


def test_train_evaluate_predict_complete_and_report(runner, odd_tree, tmp_path):
    args = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path), "-q",
            *tiny_overrides(odd_tree, **{"data.balance": "false"})]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "unreadable file(s) skipped" in result.output
    (run,) = list(tmp_path.iterdir())
    broken = json.loads((run / "broken_files.json").read_text())
    assert _names(broken) == UNREADABLE
    assert len(broken) == 4 * len(UNREADABLE)  # train + val, ai + nature

    result = runner.invoke(main, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert _names(json.loads(result.output)["broken_files"]) == UNREADABLE

    folder = odd_tree / "imagenet_ai_0508_adm" / "val" / "ai"
    result = runner.invoke(main, ["predict", str(run), str(folder), "--format", "json"])
    assert result.exit_code == 0, result.output
    preds = {Path(p["path"]).name: p for p in json.loads(result.output)["predictions"]}
    assert {n for n, p in preds.items() if p["error"]} == UNREADABLE
    verdicts = ("real", "fake", "uncertain")  # "uncertain": the abstention score is above
    assert {n for n, p in preds.items() if p["verdict"] in verdicts} >= READABLE


def test_run_dirs_never_collide(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    from bnnkit.run import create_run_dir

    with ProcessPoolExecutor(max_workers=2) as pool:
        dirs = list(pool.map(create_run_dir, [tmp_path] * 8, ["same"] * 8))
    assert len(set(dirs)) == 8 and all(Path(d).parent == tmp_path for d in dirs)


def test_recipe_name_cannot_escape_runs_dir(tmp_path):
    from bnnkit.run import create_run_dir

    run = create_run_dir(tmp_path / "runs", "../../../etc/evil")
    assert run.parent == tmp_path / "runs"
