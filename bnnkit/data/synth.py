"""A deterministic synthetic stand-in for GenImage, so that tests and demos need no download.

:func:`synthesize` writes the real GenImage layout
``<root>/<generator folder>/{train,val}/{ai,nature}/*`` for the eight generators of
:data:`bnnkit.data.layout.GENERATORS`, with file names, formats and size conventions that mimic the
real release (see ``REFERENCE.md``), so that the loader, the datasets and the cross-generator
protocol (train on seven generators, test on the held-out eighth) can run end to end in seconds.

Every image starts from a "natural" base picture: a mean colour plus smooth random colour fields
at three scales (low-resolution random grids upsampled bilinearly), a few soft colour blobs, mild
1/f noise and a little white "sensor" noise. The base statistics are defined in pixel units
(relative to ``size``), so a larger image is a larger view of the same kind of scene rather than a
smoother one.

Reals (``nature``) are base pictures of varying size (``size`` to ~1.5 * ``size`` per side), saved
as JPEG quality 96 and named like ImageNet (``n01440764_1003.JPEG`` in train,
``ILSVRC2012_val_00000001.JPEG`` in val).

Fakes (``ai``) are base pictures of a fixed size per generator (``size``; ``midjourney`` twice
that, as its 1024 px are the largest in GenImage) plus a generator-specific *fingerprint*, saved
as PNG. Fingerprints come in **families** (:data:`FAMILIES`, defined and argued in
:mod:`bnnkit.data.fingerprints`) so that cross-generator transfer has GenImage's shape:

- ``latent`` (``sdv4``, ``sdv5``, ``wukong``): a shared period-8 VAE-decoder tile (sdv4 and sdv5
  the same decoder, wukong a related one plus its own tile and a colour cast);
- ``gan`` (``biggan``): transposed-convolution checkerboard and period-4 grid;
- ``pixel-diffusion`` (``adm``, ``glide``): no periodic pattern; denoising smoothing plus an
  aperiodic noise residual, of different spectra (ADM fine and light, GLIDE smooth with a weak
  mid-band residual);
- ``vector-quantised`` (``vqdm``): 4x4 patch blockiness and a quantised colour palette;
- ``upscaler`` (``midjourney``): half-resolution content interpolated 2x (bicubic) and sharpened.

A detector trained on ``sdv4`` then detects ``sdv5`` and ``wukong`` and calls the other families'
fakes real (about 50 % accuracy, as GenImage's ResNet-50 gets 52-62 % there), and a detector
trained on seven generators misses the held-out one's fakes instead of finding it easier than
the seen ones. ``tests/test_synth_families.py`` checks the families without a network (matched
filter on the residual folded modulo 8). The fingerprints are small next to the image content
(``strength`` 1: a few grey levels; ``bnnkit data synth`` uses 3, which a tiny CNN learns from
cropped pixels in about a hundred optimiser steps).

Quirks of real copies are reproduced so that the loader is exercised: ``sdv4`` is nested under an
extra folder (``stable_diffusion_v_1_4/imagenet_ai_0419_sdv4``); ``adm`` fakes have an upper-case
``.PNG`` extension; a few ``glide`` fakes are JPEG inside despite their ``.png`` name. Note the
format/size shortcut of the real dataset is reproduced too (fakes PNG and fixed-size, reals JPEG
of varying size). With the default ``strength`` a detector learns the fingerprints, which survive
``data.debias = ["jpeg96"]`` (:mod:`bnnkit.data.debias`); ``strength = 0`` (``bnnkit data synth
--strength 0``) writes no fingerprint at all, so the format (and size) is the only cue: the
stand-in on which a detector that learned the shortcut collapses under ``jpeg96``
(``tests/test_debias.py``).

Determinism: every file is drawn from its own ``numpy.random.default_rng`` seeded with
``(seed, generator index, split index, class index, i)``, so the same arguments give byte-identical
files and changing one count or the generator subset does not reshuffle the other files. The
fingerprint constants (the 8x8 tiles) do not depend on ``seed``: a generator keeps its fingerprint
across seeds, as a real model would. :data:`SYNTH_VERSION` changes whenever the same arguments
would write different images (``bnnkit data synth --exist-ok`` rewrites a tree of another
version).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bnnkit.data.fingerprints import FAMILIES, FINGERPRINTS, family_of
from bnnkit.data.fingerprints import fingerprint as _fingerprint
from bnnkit.data.layout import GENERATOR_FOLDERS, GENERATORS, SPLITS
from bnnkit.errors import UsageError

__all__ = [
    "FAMILIES",
    "FINGERPRINTS",
    "SYNTH_LAYOUTS",
    "SYNTH_VERSION",
    "SynthSummary",
    "family_of",
    "class_dir",
    "generator_dir",
    "synthesize",
]

#: Version of the images :func:`synthesize` writes for given arguments (2: fingerprint families).
SYNTH_VERSION = 2

# Generators written under an extra folder, as some real copies do.
_NESTED: dict[str, str] = {"sdv4": "stable_diffusion_v_1_4"}
# Order of the class folders in the seed (independent of layout.CLASS_FOLDERS' dict order).
_CLASSES: tuple[str, str] = ("ai", "nature")
_JPEG_QUALITY = 96

_Array = np.ndarray


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote."""

    root: Path
    # generator short name -> split -> class folder ("ai"/"nature") -> number of files
    counts: dict[str, dict[str, dict[str, int]]]
    seconds: float

    @property
    def total(self) -> int:
        """Total number of files written."""
        return sum(sum(c.values()) for splits in self.counts.values() for c in splits.values())


def generator_dir(root: str | Path, generator: str) -> Path:
    """The folder :func:`synthesize` writes ``generator`` to (``sdv4`` is nested)."""
    root = Path(root)
    folder = GENERATOR_FOLDERS[generator]
    parent = _NESTED.get(generator)
    return root / parent / folder if parent else root / folder


#: ``layout="binary"``: the class folder of each GenImage class folder
_BINARY_CLASS: dict[str, str] = {"ai": "1_fake", "nature": "0_real"}
SYNTH_LAYOUTS: tuple[str, ...] = ("genimage", "binary")


def class_dir(
    root: str | Path, generator: str, split: str, cls: str, layout: str = "genimage"
) -> Path:
    """The folder :func:`synthesize` writes ``generator``'s ``split``/``cls`` images to:
    ``<generator folder>/<split>/<ai|nature>`` (genimage) or
    ``<split>/<generator>/<1_fake|0_real>`` (binary)."""
    if layout == "binary":
        return Path(root) / split / generator / _BINARY_CLASS[cls]
    return generator_dir(root, generator) / split / cls


def _fake_size(generator: str, size: int) -> int:
    return 2 * size if generator == "midjourney" else size


def _resolve_generators(generators: Sequence[str] | None) -> list[str]:
    if generators is None:
        return list(GENERATORS)
    if isinstance(generators, str):
        generators = [generators]
    by_folder = {folder: short for short, folder in GENERATOR_FOLDERS.items()}
    out: list[str] = []
    for raw in generators:
        name = str(raw).strip()
        key = name.lower()
        short = key if key in GENERATOR_FOLDERS else by_folder.get(key)
        if short is None:
            close = difflib.get_close_matches(key, list(GENERATORS) + list(by_folder), n=1)
            suggestion = f" (did you mean {by_folder.get(close[0], close[0])!r}?)" if close else ""
            raise UsageError(
                f"unknown generator {name!r}{suggestion}",
                hint=f"known generators: {', '.join(GENERATORS)}",
            )
        if short not in out:
            out.append(short)
    if not out:
        raise UsageError("no generators given", hint=f"known generators: {', '.join(GENERATORS)}")
    return out


# --------------------------------------------------------------------------- base images


def _interp_matrix(n_out: int, n_grid: int, cell: float, phase: float) -> _Array:
    """(n_out, n_grid) bilinear interpolation weights from a grid with ``cell`` px spacing."""
    pos = np.arange(n_out, dtype=np.float64) / cell + phase
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_grid - 2)
    frac = pos - i0
    m = np.zeros((n_out, n_grid), dtype=np.float64)
    rows = np.arange(n_out)
    m[rows, i0] = 1.0 - frac
    m[rows, i0 + 1] = frac
    return m


def _smooth_field(rng: np.random.Generator, h: int, w: int, cell: float, std: float) -> _Array:
    """A random colour field varying on a ``cell``-pixel scale, upsampled bilinearly."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.normal(0.0, std, size=(gh, gw, 3))
    my = _interp_matrix(h, gh, cell, rng.uniform())
    mx = _interp_matrix(w, gw, cell, rng.uniform())
    return (my @ grid.transpose(2, 0, 1) @ mx.T).transpose(1, 2, 0)


def _pink_noise(rng: np.random.Generator, h: int, w: int) -> _Array:
    """Greyscale noise with a ~1/f amplitude spectrum, unit standard deviation."""
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    spec = np.fft.rfft2(white) / np.maximum(f, 1.0 / max(h, w))
    spec[0, 0] = 0.0
    noise = np.fft.irfft2(spec, s=(h, w))
    return noise / (noise.std() + 1e-12)


def _base_image(rng: np.random.Generator, h: int, w: int, size: int) -> _Array:
    """A smooth "natural" colour picture, float64 (h, w, 3) in roughly [0, 255]."""
    img = np.broadcast_to(rng.uniform(70.0, 185.0, size=3), (h, w, 3)).copy()
    for frac, std in ((0.5, 28.0), (0.25, 14.0), (0.125, 6.0)):
        img += _smooth_field(rng, h, w, max(frac * size, 2.0), std)
    yy = np.arange(h, dtype=np.float64)[:, None]
    xx = np.arange(w, dtype=np.float64)[None, :]
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(0.08, 0.3) * size
        blob = np.exp(-((yy - cy) ** 2) / (2.0 * sigma * sigma)) * np.exp(
            -((xx - cx) ** 2) / (2.0 * sigma * sigma)
        )
        img += blob[:, :, None] * rng.normal(0.0, 40.0, size=3)
    img += (rng.uniform(3.0, 7.0) * _pink_noise(rng, h, w))[:, :, None]
    img += rng.normal(0.0, 1.5, size=(h, w, 3))  # sensor noise
    return img


# --------------------------------------------------------------------------- writing


def _to_image(img: _Array) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- file names


def _real_name(rng: np.random.Generator, split: str, gen_index: int, i: int) -> str:
    if split == "val":
        return f"ILSVRC2012_val_{gen_index * 6250 + i + 1:08d}.JPEG"
    wnid = int(rng.integers(1_440_764, 15_075_142))
    return f"n{wnid:08d}_{i + 1}.JPEG"


def _fake_name(rng: np.random.Generator, generator: str, i: int) -> str:
    cls = int(rng.integers(0, 1000))
    if generator == "adm":
        return f"{cls}_adm_{i}.PNG"
    if generator == "biggan":
        return f"{cls}_biggan_{i:05d}.png"
    if generator == "glide":
        return f"GLIDE_1000_200_{int(rng.integers(0, 100)):02d}_{cls}_glide_{i:05d}.png"
    return f"{cls}_{generator}_{i}.png"


def _is_jpeg_in_disguise(generator: str, i: int) -> bool:
    """A few glide fakes are JPEG inside a ``.png`` name, as in real copies."""
    return generator == "glide" and i % 8 == 1


# --------------------------------------------------------------------------- writer


def _write_one(path: Path, image: Image.Image, fmt: str) -> None:
    if fmt == "JPEG":
        image.save(path, format="JPEG", quality=_JPEG_QUALITY)
    else:
        image.save(path, format="PNG", compress_level=6)


def _make_file(
    root: Path,
    generator: str,
    gen_index: int,
    split: str,
    cls: str,
    i: int,
    seed: int,
    size: int,
    strength: float = 1.0,
    layout: str = "genimage",
) -> Path:
    split_index = SPLITS.index(split)
    rng = np.random.default_rng([seed, gen_index, split_index, _CLASSES.index(cls), i])
    folder = class_dir(root, generator, split, cls, layout)
    if cls == "nature":
        name = _real_name(rng, split, gen_index, i)
        hi = max(size, int(round(1.5 * size)))
        h, w = (int(v) for v in rng.integers(size, hi + 1, size=2))
        image = _to_image(_base_image(rng, h, w, size))
        fmt = "JPEG"
    else:
        name = _fake_name(rng, generator, i)
        side = _fake_size(generator, size)
        base = _base_image(rng, side, side, size)
        image = _to_image(_fingerprint(generator, base, rng, strength))
        fmt = "JPEG" if _is_jpeg_in_disguise(generator, i) else "PNG"
    path = folder / name
    _write_one(path, image, fmt)
    return path


def synthesize(
    root: str | Path,
    *,
    seed: int = 0,
    train_per_class: int = 40,
    val_per_class: int = 16,
    size: int = 64,
    generators: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    strength: float = 3.0,
    layout: str = "genimage",
) -> SynthSummary:
    """Write a synthetic GenImage-layout dataset under ``root``; see the module docstring.

    ``generators`` takes short names (``"adm"``, ...) or official folder names; ``None`` means all
    eight. ``progress(done, total)`` is called after each file. ``strength`` multiplies every
    fingerprint's additive amplitude (1 is subtle: a few grey levels) and blends in its filtering
    parts (smoothing, blocks, resampling: in full from 3); the default 3 lets a tiny CNN learn the
    artifacts from cropped pixels in a CPU demo.
    Existing files with the same names are overwritten; other files under ``root`` are left
    alone. ``layout="binary"`` writes the same images as ``<split>/<generator>/{0_real,1_fake}``
    (a ``data.layout = "binary"`` tree) instead of GenImage's folders.
    """
    if layout not in SYNTH_LAYOUTS:
        raise UsageError(f"unknown layout '{layout}' for synthetic data; choose genimage or binary")
    for label, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if int(value) != value or value < 0:
            raise UsageError(f"{label} must be a non-negative integer, got {value!r}")
    if int(size) != size or size < 16:
        raise UsageError(f"size must be an integer of at least 16 pixels, got {size!r}")
    gens = _resolve_generators(generators)
    root = Path(root)
    per_split = {"train": int(train_per_class), "val": int(val_per_class)}
    total = len(gens) * len(_CLASSES) * sum(per_split.values())

    start = time.perf_counter()
    counts: dict[str, dict[str, dict[str, int]]] = {}
    done = 0
    for generator in gens:
        gen_index = GENERATORS.index(generator)
        counts[generator] = {}
        for split in SPLITS:
            counts[generator][split] = {}
            for cls in _CLASSES:
                class_dir(root, generator, split, cls, layout).mkdir(parents=True, exist_ok=True)
                for i in range(per_split[split]):
                    _make_file(
                        root,
                        generator,
                        gen_index,
                        split,
                        cls,
                        i,
                        int(seed),
                        int(size),
                        strength,
                        layout,
                    )
                    done += 1
                    if progress is not None:
                        progress(done, total)
                counts[generator][split][cls] = per_split[split]
    return SynthSummary(root=root, counts=counts, seconds=time.perf_counter() - start)
