"""The GenImage loader on GenImage-shaped trees: folder names, nesting, quirks, balance, limits."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART
from PIL import Image

from bnnkit.data.dataset import ImageDataset, build_transform, collate
from bnnkit.data.genimage import find_generators, require_generators
from bnnkit.data.layouts import index_split
from bnnkit.errors import UsageError


def _png(path: Path, size=(40, 40), color=(200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")


def _jpeg_bytes(size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format="JPEG", quality=96)
    return buf.getvalue()


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """Official folder names, a nested copy, upper-case extensions, a JPEG named .PNG, a
    greyscale real, a broken file, and unbalanced classes."""
    root = tmp_path / "genimage"
    adm = root / "imagenet_ai_0508_adm"
    for i in range(3):
        _png(adm / "train" / "ai" / f"{i}_adm_{i}.PNG")
    for i in range(5):
        (adm / "train" / "nature").mkdir(parents=True, exist_ok=True)
        (adm / "train" / "nature" / f"n0144076{i}_{i}.JPEG").write_bytes(_jpeg_bytes())
    # a .PNG that is JPEG inside, and a greyscale real
    (adm / "val" / "ai").mkdir(parents=True)
    (adm / "val" / "ai" / "7_adm_7.PNG").write_bytes(_jpeg_bytes())
    (adm / "val" / "nature").mkdir(parents=True)
    Image.new("L", (50, 50), 128).save(adm / "val" / "nature" / "ILSVRC2012_val_00000001.JPEG",
                                       format="JPEG")  # fmt: skip
    sd = root / "stable_diffusion_v_1_4" / "imagenet_ai_0419_sdv4"
    for cls in ("ai", "nature"):
        for i in range(2):
            _png(sd / "train" / cls / f"{i}_sdv4_{i}.png")
    (sd / "train" / "ai" / "broken_sdv4.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (sd / "train" / "ai" / ".DS_Store").write_bytes(b"junk")
    return root


def test_find_generators_by_suffix_and_nesting(tree):
    found = find_generators(tree)
    assert set(found) == {"adm", "sdv4"}
    assert found["sdv4"].parent.name == "stable_diffusion_v_1_4"
    with pytest.raises(UsageError, match="no folder for generator"):
        require_generators(tree, ["adm", "midjourney"])
    with pytest.raises(UsageError) as info:
        find_generators(tree / "missing")
    assert "bnnkit data synth" in str(info.value)


def test_index_split_balances_and_limits(tree):
    samples = index_split(tree, ["adm"], "train", balance=True, seed=0)
    labels = [s.label for s in samples]
    assert labels.count(0) == labels.count(1) == 3  # 5 reals subsampled to the 3 fakes
    assert all(s.path.suffix in (".PNG", ".JPEG") for s in samples)
    assert index_split(tree, ["adm"], "train", balance=True, seed=0) == samples  # seeded
    unbalanced = index_split(tree, ["adm"], "train", balance=False)
    assert len(unbalanced) == 8
    limited = index_split(tree, ["adm"], "train", limit=2, balance=False)
    assert [s.label for s in limited].count(0) == 2 and len(limited) == 4
    sd = index_split(tree, ["sdv4"], "train", balance=False)
    assert not any(s.path.name == ".DS_Store" for s in sd)
    assert len(sd) == 5  # 2 + broken + 2 reals


def test_dataset_reads_quirks_and_skips_broken(tree):
    samples = index_split(tree, ["adm", "sdv4"], "val", balance=False) + index_split(
        tree, ["sdv4"], "train", balance=False
    )
    ds = ImageDataset(samples, build_transform(32, "crop", train=False), ["adm", "sdv4"])
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.images.shape[1:] == (3, 32, 32)
    assert batch.images.dtype == torch.float32
    assert len(batch) == len(samples) - 1
    assert [Path(b.path).name for b in batch.broken] == ["broken_sdv4.png"]
    assert batch.broken[0].reason


def test_crop_pads_small_images_and_resize_scales(tree):
    small = index_split(tree, ["adm"], "val", balance=False)
    for preprocess in ("crop", "resize"):
        for train in (True, False):
            ds = ImageDataset(small, build_transform(64, preprocess, train), ["adm"])
            assert ds[0][0].shape == (3, 64, 64)


def test_inventory_counts_and_broken_files(tree):
    from bnnkit.data.inventory import take_inventory

    seen: list[tuple[int, int]] = []
    inv = take_inventory(tree, progress=lambda done, total: seen.append((done, total)))
    assert list(inv.generators) == ["adm", "sdv4"] and "midjourney" in inv.missing
    assert inv.counts["adm"]["train"]["nature"].cell() == "5"
    sd = inv.counts["sdv4"]["train"]["ai"]
    assert (sd.files, sd.readable, sd.cell()) == (3, 2, "2/3")  # .DS_Store is not an image
    assert [Path(b.path).name for b in inv.broken] == ["broken_sdv4.png"]
    assert inv.total == 3 + 5 + 1 + 1 + 3 + 2 and seen[-1] == (inv.total, inv.total)
    counted = take_inventory(tree, decode=False)
    assert not counted.broken and counted.counts["sdv4"]["train"]["ai"].cell() == "3"
    assert counted.to_json()["decoded"] is False
    with pytest.raises(UsageError, match="no GenImage generator folders"):
        take_inventory(tree / "imagenet_ai_0508_adm" / "train")


def test_jpeg_draft_only_for_resize_never_below_target(tmp_path):
    from torchvision.transforms import v2 as T

    from bnnkit.data.dataset import draft_size
    from bnnkit.data.images import open_rgb

    path = tmp_path / "big.jpg"
    Image.effect_noise((400, 300), 40).convert("RGB").save(path, format="JPEG", quality=90)
    assert draft_size("crop", 64) is None and draft_size("resize", 64) == (64, 64)
    full, drafted = open_rgb(path), open_rgb(path, draft=draft_size("resize", 64))
    assert full.size == (400, 300) and drafted.size == (100, 75)  # 1/4 scale, still >= 64
    resize = T.Compose([T.ToImage(), T.Resize((64, 64), antialias=True)])
    diff = (resize(full).int() - resize(drafted).int()).abs()
    assert diff.float().mean() < 8  # what the recipe asks for, within a few levels
    png = tmp_path / "p.png"
    Image.new("RGB", (400, 300)).save(png)
    assert open_rgb(png, draft=(64, 64)).size == (400, 300)  # only JPEGs have a draft mode
    ds = ImageDataset([], build_transform(64, "resize", False), ["adm"], draft=(64, 64))
    assert ds.draft == (64, 64)


def test_loader_settings_follow_the_device():
    from bnnkit.engine.features.loop import loader_settings, usable_cpus, worker_count

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_settings(0, cpu) == {"pin_memory": False}
    assert loader_settings(3, cuda) == {"pin_memory": True, "prefetch_factor": 4}
    assert worker_count("auto", cpu) == 0 and worker_count(2, cpu) == 2
    assert worker_count("auto", cuda) == max(0, min(16, usable_cpus() - 1))


def test_recipe_jpeg_draft_reaches_the_datasets_and_the_cache_key(synth_root):
    from bnnkit.data.dataset import draft_size
    from bnnkit.engine.build import build
    from bnnkit.engine.features.cache import model_digest
    from bnnkit.recipe import load_recipe

    sets = [f"data.root='{synth_root}'", "data.preprocess='resize'", "data.image_size=32",
            "model.backbone.name='test_resnet'", "model.backbone.pretrained=false"]  # fmt: skip
    plain = load_recipe(QUICKSTART, sets)
    drafted = load_recipe(QUICKSTART, [*sets, "data.jpeg_draft=true"])
    assert plain.data.jpeg_draft is False and drafted.data.jpeg_draft is True
    assert draft_size("resize", 32, False) is None and draft_size("resize", 32, True) == (32, 32)
    detector, _ = build(plain, num_train=10)
    assert model_digest(detector, plain) != model_digest(detector, drafted)
