"""Tests of the synthetic GenImage stand-in (``bnnkit.data.synth``)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnnkit.data import synth
from bnnkit.data.layout import GENERATOR_FOLDERS, GENERATORS, SPLITS
from bnnkit.data.synth import SynthSummary, generator_dir, synthesize
from bnnkit.errors import UsageError

SMALL = {"train_per_class": 4, "val_per_class": 2, "size": 32}
# The fingerprint tests use the default image size, where the demo runs.
FP_SIZE = 64
FP_COUNTS = {"train_per_class": 12, "val_per_class": 8}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def _files(root: Path, generator: str, split: str, cls: str) -> list[Path]:
    return sorted((generator_dir(root, generator) / split / cls).iterdir())


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthSummary, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    root = tmp_path_factory.mktemp("synth_small")
    summary = synthesize(root, seed=0, progress=lambda d, t: calls.append((d, t)), **SMALL)
    print(f"\nsynth: {summary.total} images at 32 px in {summary.seconds:.2f} s")
    return summary, calls


# --------------------------------------------------------------------------- layout


def test_layout_and_counts(small: tuple[SynthSummary, list[tuple[int, int]]]) -> None:
    summary, calls = small
    root = summary.root
    assert set(summary.counts) == set(GENERATORS)
    assert (root / "stable_diffusion_v_1_4" / GENERATOR_FOLDERS["sdv4"]).is_dir()
    assert not (root / GENERATOR_FOLDERS["sdv4"]).exists()
    for g in GENERATORS:
        if g != "sdv4":
            assert (root / GENERATOR_FOLDERS[g]).is_dir()
        for split in SPLITS:
            expected = SMALL[f"{split}_per_class"]
            for cls in ("ai", "nature"):
                on_disk = len(_files(root, g, split, cls))
                assert on_disk == expected == summary.counts[g][split][cls], (g, split, cls)
    total = sum(1 for p in root.rglob("*") if p.is_file())
    assert total == summary.total == len(GENERATORS) * 2 * (4 + 2)
    assert calls == [(i + 1, total) for i in range(total)]


def test_names_and_sizes(small: tuple[SynthSummary, list[tuple[int, int]]]) -> None:
    root, size = small[0].root, SMALL["size"]
    fake_patterns = {
        "adm": r"\d+_adm_\d+\.PNG",
        "biggan": r"\d+_biggan_\d{5}\.png",
        "glide": r"GLIDE_1000_200_\d\d_\d+_glide_\d{5}\.png",
    }
    for g in GENERATORS:
        pattern = fake_patterns.get(g, rf"\d+_{g}_\d+\.png")
        side = 2 * size if g == "midjourney" else size
        for split in SPLITS:
            for p in _files(root, g, split, "ai"):
                assert re.fullmatch(pattern, p.name), p
                with Image.open(p) as im:
                    assert im.size == (side, side)
                    assert im.mode == "RGB"
            real = r"n\d{8}_\d+\.JPEG" if split == "train" else r"ILSVRC2012_val_\d{8}\.JPEG"
            for p in _files(root, g, split, "nature"):
                assert re.fullmatch(real, p.name), p
                with Image.open(p) as im:
                    assert im.format == "JPEG"
                    assert all(size <= s <= round(1.5 * size) for s in im.size), im.size


def test_quirks(small: tuple[SynthSummary, list[tuple[int, int]]]) -> None:
    root = small[0].root
    adm = [p for s in SPLITS for p in _files(root, "adm", s, "ai")]
    assert adm and all(p.suffix == ".PNG" for p in adm)
    disguised = 0
    for g in GENERATORS:
        for split in SPLITS:
            for p in _files(root, g, split, "ai"):
                head = p.read_bytes()[:8]
                if head.startswith(JPEG_MAGIC):
                    assert g == "glide" and p.suffix == ".png", p
                    disguised += 1
                else:
                    assert head == PNG_MAGIC, p
            for p in _files(root, g, split, "nature"):
                assert p.read_bytes().startswith(JPEG_MAGIC), p
    assert disguised >= 2  # one per split with these counts


# --------------------------------------------------------------------------- determinism


def test_deterministic(tmp_path: Path) -> None:
    kw = {**SMALL, "generators": ["adm", "glide", "sdv4"]}
    a = _all_files(synthesize(tmp_path / "a", seed=3, **kw).root)
    b = _all_files(synthesize(tmp_path / "b", seed=3, **kw).root)
    assert a and a == b
    c = _all_files(synthesize(tmp_path / "c", seed=4, **kw).root)
    assert a != c
    assert len(set(a.values()) & set(c.values())) == 0  # every image differs
    # Changing a count or the generator subset does not reshuffle the other files.
    d = _all_files(
        synthesize(
            tmp_path / "d",
            seed=3,
            train_per_class=5,
            val_per_class=2,
            size=32,
            generators=["sdv4", "adm"],
        ).root
    )
    assert {k: v for k, v in a.items() if "glide" not in k}.items() <= d.items()
    # Rewriting into a non-empty root gives the same files.
    again = _all_files(synthesize(tmp_path / "a", seed=3, **kw).root)
    assert again == a


# --------------------------------------------------------------------------- fingerprints


def _feature(path: Path, size: int, recompress: bool = False) -> np.ndarray:
    """Normalised autocorrelation (lags -8..8) of the high-pass residual of the grey crop.

    A generic texture/periodicity descriptor (the spatial counterpart of the power spectrum),
    invariant to the image's contrast. ``recompress`` re-encodes as JPEG q96 first, so that fakes
    are compared with the JPEG reals without the format shortcut.
    """
    im = Image.open(path).convert("RGB")
    if recompress:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=96)
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    x = np.asarray(im, dtype=np.float64)[:size, :size].mean(axis=2)
    blur = sum(np.roll(x, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    power = np.abs(np.fft.fft2(x - blur)) ** 2
    acf = np.fft.fftshift(np.fft.ifft2(power).real)
    c, m = size // 2, 8
    return (acf / acf[c, c])[c - m : c + m + 1, c - m : c + m + 1].ravel()


def _nearest_centroid_accuracy(train: list[np.ndarray], val: list[np.ndarray]) -> float:
    """Accuracy of a Euclidean nearest-centroid classifier; class k is ``train[k]`` / ``val[k]``."""
    centroids = np.stack([t.mean(axis=0) for t in train])
    correct = total = 0
    for k, v in enumerate(val):
        pred = ((v[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
        correct += int((pred == k).sum())
        total += len(v)
    return correct / total


def _fingerprint_scores(root: Path) -> tuple[float, dict[str, float]]:
    """(generator-identification accuracy over 8 classes, fake-vs-real accuracy per generator)."""

    def feats(g: str, split: str, cls: str, recompress: bool = False) -> np.ndarray:
        return np.stack([_feature(p, FP_SIZE, recompress) for p in _files(root, g, split, cls)])

    ident = _nearest_centroid_accuracy(
        [feats(g, "train", "ai") for g in GENERATORS], [feats(g, "val", "ai") for g in GENERATORS]
    )
    fake_real = {
        g: _nearest_centroid_accuracy(
            [feats(g, "train", "ai", True), feats(g, "train", "nature")],
            [feats(g, "val", "ai", True), feats(g, "val", "nature")],
        )
        for g in GENERATORS
    }
    return ident, fake_real


def test_fingerprints_are_distinct_and_detectable(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, seed=0, size=FP_SIZE, **FP_COUNTS)
    print(f"\nsynth: {summary.total} images at {FP_SIZE} px in {summary.seconds:.2f} s")
    ident, fake_real = _fingerprint_scores(tmp_path)
    print(f"generator identification accuracy (8 classes, chance 0.125): {ident:.3f}")
    print("fake-vs-real accuracy:", {g: round(a, 3) for g, a in fake_real.items()})
    assert ident >= 0.6
    assert min(fake_real.values()) >= 0.8, fake_real
    assert np.mean(list(fake_real.values())) >= 0.9


def test_fingerprint_test_is_meaningful(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: with the fingerprints switched off, the same measures fall to chance."""
    monkeypatch.setattr(synth, "_fingerprint", lambda generator, img, rng, strength=1.0: img)
    synthesize(tmp_path, seed=0, size=FP_SIZE, **FP_COUNTS)
    ident, fake_real = _fingerprint_scores(tmp_path)
    print(
        f"\nwithout fingerprints: identification {ident:.3f}, fake-vs-real "
        f"{np.mean(list(fake_real.values())):.3f}"
    )
    assert ident < 0.35
    assert np.mean(list(fake_real.values())) < 0.75


# --------------------------------------------------------------------------- arguments


def test_unknown_generator_suggests(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        synthesize(tmp_path, generators=["adm", "midjorney"], **SMALL)
    assert "midjorney" in str(err.value)
    assert "did you mean 'midjourney'" in str(err.value)
    assert not any(tmp_path.iterdir())  # validated before anything is written


def test_generator_subset_and_folder_names(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, generators=["imagenet_ai_0419_biggan", "wukong"], **SMALL)
    assert list(summary.counts) == ["biggan", "wukong"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [GENERATOR_FOLDERS["biggan"], GENERATOR_FOLDERS["wukong"]]
    )


@pytest.mark.parametrize(
    "kwargs", [{"train_per_class": -1}, {"val_per_class": 1.5}, {"size": 8}, {"generators": []}]
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        synthesize(tmp_path, **kwargs)  # type: ignore[arg-type]
