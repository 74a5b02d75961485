"""The synthetic stand-in's fingerprint families behave like GenImage's: within a family a
fingerprint transfers, across families it does not.

A cheap, model-free check: the high-pass residual of each image folded modulo 8 (the mean
residual at each of the 64 positions of an 8x8 grid, which is where a latent decoder's pattern
lives; a JPEG's block grid too, so fakes are re-encoded like the reals to remove that shortcut),
then

- the mean folded residual of a generator's fakes is its "decoder tile" estimate: sdv4's must be
  close to sdv5's and wukong's and far from everyone else's;
- a matched filter trained on sdv4 fakes vs reals (projection on sdv4's tile minus the reals',
  threshold half-way between the two training means) must detect sdv4 and sdv5 and stay near
  chance on biggan, adm and midjourney: the shape of GenImage's Table 3 for a detector trained on
  SD1.4.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnnkit.data.synth import generator_dir, synthesize

GENS = ["sdv4", "sdv5", "wukong", "biggan", "adm", "midjourney"]
OTHERS = ["biggan", "adm", "midjourney"]
SIZE = 64
PERIOD = 8


def _folded_residual(path: Path, recompress: bool) -> np.ndarray:
    """High-pass residual of the grey top-left SIZE crop, averaged modulo PERIOD (64 values)."""
    im = Image.open(path).convert("RGB")
    if recompress:  # as the reals: JPEG q96, so the JPEG grid is no fake/real cue
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=96)
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    x = np.asarray(im, dtype=np.float64)[:SIZE, :SIZE].mean(axis=2)
    blur = sum(np.roll(x, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    r = x - blur
    k = SIZE // PERIOD
    return r.reshape(k, PERIOD, k, PERIOD).mean(axis=(0, 2)).ravel()


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], np.ndarray]:
    root = tmp_path_factory.mktemp("families")
    synthesize(root, seed=0, train_per_class=16, val_per_class=16, size=SIZE, generators=GENS)
    out = {}
    for g in GENS:
        for split in ("train", "val"):
            for cls in ("ai", "nature"):
                paths = sorted((generator_dir(root, g) / split / cls).iterdir())
                out[g, split, cls] = np.stack([_folded_residual(p, cls == "ai") for p in paths])
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def test_decoder_tiles_are_shared_within_the_latent_family(feats) -> None:
    real = np.concatenate([feats[g, "train", "nature"] for g in GENS]).mean(axis=0)
    tile = {g: feats[g, "train", "ai"].mean(axis=0) - real for g in GENS}
    sims = {g: _cos(tile["sdv4"], tile[g]) for g in GENS if g != "sdv4"}
    print(
        "\ncosine similarity of folded residuals to sdv4's:",
        {g: round(s, 2) for g, s in sims.items()},
    )
    assert sims["sdv5"] >= 0.9, sims  # same decoder
    assert sims["wukong"] >= 0.6, sims  # related decoder
    assert max(abs(sims[g]) for g in OTHERS) <= 0.4, sims  # other families
    assert sims["sdv5"] > sims["wukong"] > max(abs(sims[g]) for g in OTHERS)


def test_sdv4_matched_filter_transfers_to_its_family_only(feats) -> None:
    fake, real = feats["sdv4", "train", "ai"], feats["sdv4", "train", "nature"]
    w = fake.mean(axis=0) - real.mean(axis=0)
    threshold = 0.5 * (fake @ w).mean() + 0.5 * (real @ w).mean()

    def accuracy(g: str) -> float:
        hits = np.r_[
            feats[g, "val", "ai"] @ w > threshold, feats[g, "val", "nature"] @ w <= threshold
        ]
        return float(hits.mean())

    acc = {g: accuracy(g) for g in GENS}
    print("\nsdv4-trained matched filter, val accuracy:", {g: round(a, 3) for g, a in acc.items()})
    assert acc["sdv4"] >= 0.9 and acc["sdv5"] >= 0.9 and acc["wukong"] >= 0.75, acc
    assert all(acc[g] <= 0.7 for g in OTHERS), acc
