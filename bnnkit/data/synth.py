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

Fakes (``ai``) are base pictures of a fixed size per generator plus a generator-specific
*fingerprint*, saved as PNG. The fingerprints are small (a few grey levels) next to the image
content, but distinct in the Fourier spectrum of the high-pass residual, which is where real
detectors find generation artifacts:

- ``adm``: period-2 upsampling artifacts: a checkerboard plus column alternation (peaks at the
  Nyquist frequencies).
- ``biggan``: a period-4 grid (transposed-convolution artifact) and a slight red/blue colour shift;
  the smallest images (``size``), as BigGAN's 128 px are the smallest in GenImage.
- ``glide``: Gaussian smoothing (loss of fine detail) plus a period-8 vertical ripple.
- ``midjourney``: strong unsharp-mask sharpening plus a period-3 high-frequency texture; twice
  the size of the others. Deliberately unlike the rest, as Midjourney is the usual held-out
  generator and the hardest to transfer to.
- ``sdv4`` / ``sdv5``: latent-decoder structure: a fixed 8x8 tile repeated over the image, with
  a different tile and amplitude for each (they share a VAE in reality, so they are related).
- ``vqdm``: vector-quantisation blockiness (blend with 4x4 patch means) and colour quantisation
  (levels in steps of 8).
- ``wukong``: a green/red colour shift and period-8 peaks on the diagonal (an orientation no other
  generator uses).

Fingerprint amplitudes vary a little per image (x0.8 to x1.2). They are tuned for the default
64 px: there a nearest-centroid classifier on residual autocorrelations tells the eight apart
(~98 %) and fakes from reals; at 32 px the period-8 ones (``sdv4``, ``wukong``) get harder.

Quirks of real copies are reproduced so that the loader is exercised: ``sdv4`` is nested under an
extra folder (``stable_diffusion_v_1_4/imagenet_ai_0419_sdv4``); ``adm`` fakes have an upper-case
``.PNG`` extension; a few ``glide`` fakes are JPEG inside despite their ``.png`` name. Note the
format/size shortcut of the real dataset is reproduced too (fakes PNG and fixed-size, reals JPEG
of varying size).

Determinism: every file is drawn from its own ``numpy.random.default_rng`` seeded with
``(seed, generator index, split index, class index, i)``, so the same arguments give byte-identical
files and changing one count or the generator subset does not reshuffle the other files. The
fingerprint constants (the 8x8 tiles) do not depend on ``seed``: a generator keeps its fingerprint
across seeds, as a real model would.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bnnkit.data.layout import GENERATOR_FOLDERS, GENERATORS, SPLITS
from bnnkit.errors import UsageError

__all__ = ["FINGERPRINTS", "SynthSummary", "generator_dir", "synthesize"]

# Short description of each generator's fingerprint (for help texts and reports).
FINGERPRINTS: dict[str, str] = {
    "adm": "period-2 checkerboard upsampling peaks",
    "biggan": "period-4 grid + red/blue colour shift",
    "glide": "Gaussian smoothing + period-8 vertical ripple",
    "midjourney": "strong sharpening + period-3 texture, 2x size",
    "sdv4": "8x8 latent-decoder tile (weak)",
    "sdv5": "8x8 latent-decoder tile (other tile, stronger)",
    "vqdm": "4x4 patch blockiness + colour quantisation",
    "wukong": "green/red colour shift + diagonal period-8 peaks",
}

# Generators written under an extra folder, as some real copies do.
_NESTED: dict[str, str] = {"sdv4": "stable_diffusion_v_1_4"}
# Order of the class folders in the seed (independent of layout.CLASS_FOLDERS' dict order).
_CLASSES: tuple[str, str] = ("ai", "nature")
_JPEG_QUALITY = 96
# Seed namespace of the fingerprint constants (fixed, independent of the user's seed).
_FINGERPRINT_SEED = 20231108

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


# --------------------------------------------------------------------------- fingerprints


def _blur(img: _Array, sigma: float) -> _Array:
    """Separable Gaussian blur with reflected borders."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = img.shape[:2]
    pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(k[i] * pad[i : i + h] for i in range(k.size))
    return sum(k[i] * rows[:, i : i + w] for i in range(k.size))


def _grid(h: int, w: int) -> tuple[_Array, _Array]:
    return np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]


def _tile(generator_index: int) -> _Array:
    t = np.random.default_rng([_FINGERPRINT_SEED, generator_index]).standard_normal((8, 8))
    t -= t.mean()
    return t / t.std()


def _fingerprint(generator: str, img: _Array, rng: np.random.Generator) -> _Array:
    """Apply ``generator``'s artifact fingerprint to a base image (float, (h, w, 3))."""
    h, w = img.shape[:2]
    yy, xx = _grid(h, w)
    a = rng.uniform(0.8, 1.2)
    if generator == "adm":
        pattern = 2.5 * (-1.0) ** (yy + xx) + 1.5 * (-1.0) ** xx
        return img + a * pattern[:, :, None]
    if generator == "biggan":
        pattern = 4.0 * (np.cos(np.pi * yy / 2.0) + np.cos(np.pi * xx / 2.0))
        return img + a * pattern[:, :, None] + np.array([6.0, 0.0, -6.0])
    if generator == "glide":
        img = _blur(img, 0.9)
        ripple = 4.0 * np.cos(2.0 * np.pi * xx / 8.0 + rng.uniform(0.0, 2.0 * np.pi))
        return img + a * np.broadcast_to(ripple, (h, w))[:, :, None]
    if generator == "midjourney":
        img = img + 1.5 * (img - _blur(img, 1.0))
        texture = 4.0 * np.cos(2.0 * np.pi * yy / 3.0) * np.cos(2.0 * np.pi * xx / 3.0)
        return img + a * texture[:, :, None]
    if generator in ("sdv4", "sdv5"):
        tile = _tile(GENERATORS.index(generator))
        amp = 2.5 if generator == "sdv4" else 4.0
        pattern = np.tile(tile, (h // 8 + 1, w // 8 + 1))[:h, :w]
        return img + a * amp * pattern[:, :, None]
    if generator == "vqdm":
        hb, wb = -(-h // 4) * 4, -(-w // 4) * 4
        pad = np.pad(img, ((0, hb - h), (0, wb - w), (0, 0)), mode="edge")
        means = pad.reshape(hb // 4, 4, wb // 4, 4, 3).mean(axis=(1, 3))
        blocks = np.repeat(np.repeat(means, 4, axis=0), 4, axis=1)[:h, :w]
        img = (1.0 - 0.75 * a) * img + 0.75 * a * blocks
        return np.round(img / 8.0) * 8.0
    if generator == "wukong":
        pattern = 5.0 * np.cos(2.0 * np.pi * (yy + xx) / 8.0)
        return img + a * pattern[:, :, None] + np.array([-5.0, 5.0, 0.0])
    raise KeyError(generator)  # pragma: no cover - guarded by _resolve_generators


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
) -> Path:
    split_index = SPLITS.index(split)
    rng = np.random.default_rng([seed, gen_index, split_index, _CLASSES.index(cls), i])
    folder = generator_dir(root, generator) / split / cls
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
        marked = _fingerprint(generator, base, rng)
        # ``strength`` scales the artifact residual (works for additive and filtering prints)
        image = _to_image(base + strength * (marked - base))
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
) -> SynthSummary:
    """Write a synthetic GenImage-layout dataset under ``root``; see the module docstring.

    ``generators`` takes short names (``"adm"``, ...) or official folder names; ``None`` means all
    eight. ``progress(done, total)`` is called after each file. ``strength`` multiplies every
    fingerprint's residual: 1 is subtle (a few grey levels); the default 3 lets a tiny CNN learn
    the artifacts from cropped pixels in a one-minute CPU demo (at 1 it stays at chance).
    Existing files with the same names are overwritten; other files under ``root`` are left
    alone.
    """
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
                (generator_dir(root, generator) / split / cls).mkdir(parents=True, exist_ok=True)
                for i in range(per_split[split]):
                    _make_file(
                        root, generator, gen_index, split, cls, i, int(seed), int(size), strength
                    )
                    done += 1
                    if progress is not None:
                        progress(done, total)
                counts[generator][split][cls] = per_split[split]
    return SynthSummary(root=root, counts=counts, seconds=time.perf_counter() - start)
