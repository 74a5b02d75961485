"""Data layouts (data.layout): {0_real,1_fake} trees, manifests, auto-detection, and the whole
train -> evaluate -> predict path on each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import QUICKSTART, invoke, train_and_evaluate
from PIL import Image

from bnnkit.data.inventory import take_inventory
from bnnkit.data.layouts import (
    describe,
    generator_families,
    index_split,
    list_generators,
    require_generators,
    resolve_layout,
)
from bnnkit.data.splits import carve_calibration
from bnnkit.errors import RecipeError, UsageError
from bnnkit.plugins import get_registry
from bnnkit.recipe import validate

pytestmark = pytest.mark.usefixtures("one_thread")

GENS = ["adm", "biggan"]


def _png(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 255 - shade, 128)).save(path)
    return path


def _pair(folder: Path, n_real: int = 2, n_fake: int = 2) -> None:
    for i in range(n_real):
        _png(folder / "0_real" / f"r{i}.png", i)
    for i in range(n_fake):
        _png(folder / "1_fake" / f"f{i}.png", 100 + i)


@pytest.fixture(scope="module")
def binary_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("binary") / "bin"
    invoke(["data", "synth", root, "--layout", "binary", "--size", "32",
            "--train-per-class", "8", "--val-per-class", "4"])  # fmt: skip
    return root


def test_synth_binary_writes_the_genimage_images(tmp_path, binary_root):
    gen = tmp_path / "gen"
    invoke(["data", "synth", gen, "--size", "32", "--train-per-class", "8",
            "--val-per-class", "4"])  # fmt: skip
    assert sorted(p.name for p in (binary_root / "train").iterdir()) == sorted(
        list_generators(gen, "genimage")
    )
    a = index_split(gen, GENS, "val", layout="genimage")
    b = index_split(binary_root, GENS, "val", layout="binary")
    assert [(s.label, s.generator, s.path.name) for s in a] == [
        (s.label, s.generator, s.path.name) for s in b
    ]
    assert all(x.path.read_bytes() == y.path.read_bytes() for x, y in zip(a, b, strict=True))
    assert b[0].path.parent.parent == binary_root / "val" / "adm"


def test_auto_detects_each_layout(tmp_path, synth_root, binary_root):
    manifest = tmp_path / "m" / "manifest.csv"
    _png(tmp_path / "m" / "a.png")
    manifest.write_text("path,label\na.png,real\n")
    assert resolve_layout(synth_root) == "genimage"
    assert resolve_layout(binary_root) == "binary"
    assert resolve_layout(manifest) == "manifest"
    assert resolve_layout(manifest.parent) == "manifest"  # a folder holding one manifest.csv
    assert resolve_layout(synth_root, "binary") == "binary"  # a given layout is not second-guessed
    assert "binary layout (detected)" in describe(binary_root)
    assert "manifest layout (data.layout)" in describe(manifest, "manifest")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="cannot tell the layout"):
        resolve_layout(tmp_path / "empty")
    with pytest.raises(UsageError, match="unknown data layout"):
        resolve_layout(synth_root, "folders")


def test_progan_style_nested_tree(tmp_path):
    root = tmp_path / "cnndetection"
    for cls in ("car", "cat"):
        _pair(root / "train" / "progan" / cls)
    _pair(root / "val" / "progan" / "car", 1, 1)
    _pair(root / "test" / "progan", 2, 2)
    _pair(root / "test" / "biggan", 3, 3)
    _pair(root / "test" / "stylegan" / "bedroom")
    _pair(root / "test" / "stylegan" / "car")
    assert resolve_layout(root) == "binary"
    assert sorted(list_generators(root)) == ["biggan", "progan", "stylegan"]
    train = index_split(root, ["progan"], "train")
    assert len(train) == 8 and {s.path.parent.parent.name for s in train} == {"car", "cat"}
    assert {s.generator for s in train} == {"progan"}
    # "val": the generator's val folder, else its test folder
    assert [s.path.parent.parent.name for s in index_split(root, ["progan"], "val")] == ["car"] * 2
    assert len(index_split(root, ["biggan"], "val")) == 6
    assert len(index_split(root, ["stylegan"], "val")) == 8  # both subsets
    assert index_split(root, ["biggan"], "train") == []  # no training images: not an error
    # the calibration split tells apart same-named files of two subsets
    _, cal = carve_calibration(train, 0.5, seed=0)
    assert len(cal) == 4 and len({str(s.path) for s in cal}) == 4
    # the dataset index gives the same samples, and data check counts every subset
    cache = tmp_path / "cache"
    assert index_split(root, ["stylegan"], "val", cache_dir=cache) == index_split(
        root, ["stylegan"], "val"
    )
    _png(root / "test" / "biggan" / "1_fake" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    inv = take_inventory(root, cache_dir=cache)
    assert inv.layout == "binary" and inv.splits == ("train", "val", "test")
    assert inv.counts["progan"]["train"]["0_real"].files == 4
    assert inv.counts["stylegan"]["test"]["1_fake"].files == 4
    assert [Path(b.path).name for b in inv.broken] == ["bad.png"]
    with pytest.raises(UsageError, match=r"(?s)no generator styleganx .*did you mean 'stylegan'"):
        require_generators(root, ["styleganx"])


def test_tree_without_split_folders_is_evaluation_data(tmp_path):
    chameleon = tmp_path / "chameleon"
    _pair(chameleon / "test")  # Chameleon: test/{0_real,1_fake}: named after the root
    assert list(list_generators(chameleon)) == ["chameleon"]
    flat = tmp_path / "flat"
    _pair(flat / "dalle")
    _pair(flat / "glide")
    assert len(index_split(flat, ["dalle", "glide"], "val")) == 8
    with pytest.raises(UsageError, match="evaluation data only"):
        index_split(flat, ["dalle"], "train")


def _manifest_data(tmp_path: Path, binary_root: Path) -> Path:
    """A manifest (relative paths, generator/family/split) over the binary tree's images, with a
    missing file (row 4) and a bad label (row 5)."""
    folder = tmp_path / "bench"
    folder.mkdir()
    lines = ["path,label,generator,family,split",
             "../missing.png,fake,adm,diffusion,train",
             "whatever.png,maybe,adm,diffusion,train"]  # fmt: skip
    for split_dir, split in (("train", "train"), ("val", "val")):
        for gen_dir in sorted((binary_root / split_dir).iterdir()):
            family = "gan" if gen_dir.name == "biggan" else "diffusion"
            for cls, label in (("0_real", "real"), ("1_fake", "1")):
                for f in sorted((gen_dir / cls).iterdir()):
                    rel = Path("..") / f.relative_to(tmp_path)
                    lines.append(f"{rel.as_posix()},{label},{gen_dir.name},{family},{split}")
    lines[1], lines[2], lines[3], lines[4] = lines[3], lines[4], lines[1], lines[2]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_manifest_check_names_bad_rows_and_training_skips_them(tmp_path, binary_root, runner):
    import shutil

    shutil.copytree(binary_root, tmp_path / "images")
    manifest = _manifest_data(tmp_path, tmp_path / "images")
    from bnnkit.cli import main

    result = runner.invoke(main, ["data", "check", str(manifest.parent)])
    out = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "layout: manifest (detected)" in out
    assert "row 4: ../missing.png: file not found" in out
    assert "row 5: whatever.png: bad label 'maybe' (0/1 or real/fake)" in out
    assert generator_families(manifest)["biggan"] == "gan"
    data = json.loads(runner.invoke(main, ["data", "check", str(manifest), "--json"]).output)
    assert [p["row"] for p in data["problems"]] == [4, 5] and data["layout"] == "manifest"
    # index_split skips them; training says so, evaluate records the families
    assert all(s.path.is_file() for s in index_split(manifest, ["adm"], "train"))
    trained = train_and_evaluate(QUICKSTART, tmp_path / "work", data=manifest, backbone=None)
    said = " ".join(trained.train_output.split())
    assert "manifest layout (detected)" in said
    skipped = "skipping 2 manifest row(s) of manifest.csv: row 4: ../missing.png: file not found"
    assert skipped in said
    assert trained.metrics["layout"] == "manifest"
    assert trained.metrics["families"]["biggan"] == "gan"
    report = (trained.run / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| generator |"))
    assert header.split("|")[2].strip() == "family"
    assert "| biggan | gan |" in report


def test_binary_tree_trains_evaluates_and_predicts(tmp_path, binary_root):
    trained = train_and_evaluate(QUICKSTART, tmp_path, data=binary_root, backbone=None)
    assert "binary layout (detected)" in " ".join(trained.train_output.split())
    assert "binary layout (detected)" in " ".join(trained.evaluate_output.split())
    assert trained.metrics["layout"] == "binary" and "families" not in trained.metrics
    assert trained.metrics["ood_generators"] == ["midjourney"]
    assert set(trained.metrics["per_generator"]) >= {"adm", "midjourney"}
    out = invoke(["predict", trained.run, binary_root / "val" / "midjourney" / "1_fake"])
    assert "uncertain" in out or "fake" in out or "real" in out


def test_generator_names_are_checked_for_genimage_only(tmp_path, binary_root):
    def problems(data: dict) -> list[str]:
        try:
            validate({"data": data, "model": {"backbone": {"name": "test_resnet"}}}, get_registry())
        except RecipeError as exc:
            return exc.problems
        return []

    other = {"train_generators": ["progan"], "holdout": ["stylegan"]}
    assert problems({**other, "layout": "binary"}) == []
    assert problems({**other, "layout": "manifest"}) == []
    assert problems({**other, "root": str(binary_root)}) == []  # auto: detected as binary
    refused = problems({**other, "layout": "genimage"})
    assert any("unknown generator 'progan'" in p and "data.layout" in p for p in refused)
    # auto on a root that is not there (yet): GenImage's names, with "did you mean"
    missing = problems({"holdout": ["midjorney"], "root": str(tmp_path / "nowhere")})
    assert any("did you mean 'midjourney'" in p for p in missing)
    # a generator the data lacks is refused when the data is read, naming what exists
    with pytest.raises(UsageError, match=r"has no generator progan \(found: adm, biggan"):
        index_split(binary_root, ["progan"], "train")


def test_protocol_cells_on_a_binary_tree(tmp_path):
    from bnnkit.engine.protocol.cells import plan_cells

    root = tmp_path / "bench"
    for gen in ("progan", "stylegan", "dalle"):
        _pair(root / "train" / gen)
        _pair(root / "val" / gen)
    sets = [f"data.root={json.dumps(str(root))}"]
    loo = plan_cells("loo", ["quickstart"], sets, tmp_path / "p")
    assert [c.unseen for c in loo] == [("dalle",), ("progan",), ("stylegan",)]
    assert loo[0].train == ("progan", "stylegan")
    cross = plan_cells(
        "cross", ["quickstart"], sets, tmp_path / "p", generators=["stylegan", "progan"]
    )
    assert [c.train for c in cross] == [("stylegan",), ("progan",)]


def test_parquet_manifest_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_parquet(name, *args, **kwargs):
        if name.split(".")[0] in ("pyarrow", "pandas"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_parquet)
    (tmp_path / "list.parquet").write_bytes(b"PAR1")
    with pytest.raises(UsageError, match="needs the 'pyarrow' package"):
        index_split(tmp_path / "list.parquet", ["x"], "val")


def test_a_manifest_is_parsed_once_per_version_and_stat_once_per_row(tmp_path, monkeypatch):
    import os

    from bnnkit.data import manifest

    (tmp_path / "a.png").write_bytes(b"x")
    file = tmp_path / "manifest.csv"
    file.write_text("path,label\na.png,real\nmissing.png,fake\n")
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(manifest.os, "stat", lambda p, *a, **k: calls.append(p) or real_stat(p))
    first = manifest.read_manifest(tmp_path)
    before = manifest._parsed.cache_info().hits
    again = manifest.read_manifest(tmp_path)
    assert manifest._parsed.cache_info().hits == before + 1  # not parsed again
    assert [r.path.name for r in again.rows] == [r.path.name for r in first.rows] == ["a.png"]
    assert [p.reason for p in again.problems] == ["file not found"]
    rows = [p for p in calls if str(p).endswith(".png")]
    assert len(rows) == 4  # two rows, two reads: one stat per row each time
    file.write_text("path,label\na.png,real\nmissing.png,fake\na.png,fake\n")  # a new version
    assert len(manifest.read_manifest(tmp_path).rows) == 2
