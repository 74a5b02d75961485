"""Generator fingerprints of the synthetic stand-in, grouped in families as in GenImage.

A fingerprint is what a generator's architecture leaves in every image it makes, independent of
the content. Generators that share the part that draws the pixels share a fingerprint family,
and a detector trained on one generator transfers to its family and not to the others, which is
the pattern of GenImage's cross-generator tables (a ResNet-50 trained on SD1.4 gets 99.9 % on
SD1.5, 98.2 % on Wukong and 52-62 % on the rest). The families, their members and why:

- ``latent`` (``sdv4``, ``sdv5``, ``wukong``): latent diffusion. The pixels come out of a VAE
  decoder that upsamples a latent 8x in each direction, which leaves a fixed period-8 pattern
  (peaks at multiples of 1/8 cycle per pixel). SD1.4 and SD1.5 use the *same* decoder, so they
  share one 8x8 tile (sdv5 adds a faint own component, it was trained longer); Wukong is a
  Stable-Diffusion-style model with a retrained decoder: the shared tile, weaker, plus an own
  8x8 component and a slight colour cast.
- ``gan`` (``biggan``): transposed-convolution upsampling of a GAN: a checkerboard at the Nyquist
  frequency plus a period-4 grid (two stride-2 layers), no denoising, full sensor-like noise.
- ``pixel-diffusion`` (``adm``, ``glide``): diffusion in pixel space. The final denoising step
  removes the camera noise (smoothing) and leaves its own aperiodic noise residual; the two differ
  in spectrum: ADM (256 px, direct) keeps little smoothing and a fine, high-frequency luminance
  residual, GLIDE (64 px content brought to 256 px by a diffusion upsampler) is much smoother
  (little detail above a quarter of the Nyquist frequency) with a weak mid-band residual,
  independent per colour channel. No spectral peaks, so a period-8 detector does not fire on
  them.
- ``vector-quantised`` (``vqdm``): VQ-diffusion decodes a grid of codebook tokens: 4x4 patch
  blockiness and a quantised colour palette (levels in steps of ~8).
- ``upscaler`` (``midjourney``): Midjourney's 1024 px images come out of an upscaler: content
  rendered at half resolution (no detail above half the Nyquist frequency, camera noise averaged
  away), interpolated 2x (bicubic: the period-2 resampling correlations of Popescu & Farid) and
  sharpened (unsharp mask, a mid-band boost). It shares nothing with the other families and is the
  usual held-out generator.

Amplitudes are in grey levels at ``strength`` 1 (subtle next to the image content) and scale
linearly with ``strength``; the filtering parts (smoothing, block averaging, resampling) are
applied in full from ``strength`` 3 (the default of ``bnnkit data synth``) and blended in
proportionally below it. Fingerprint amplitudes also vary per image (x0.8 to x1.2). The constant
parts (the 8x8 tiles) come from a fixed seed, not the user's: a generator keeps its fingerprint
across seeds, as a real model would.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["FAMILIES", "FINGERPRINTS", "family_of", "fingerprint"]

# Family -> its generators (short names); every generator belongs to exactly one.
FAMILIES: dict[str, tuple[str, ...]] = {
    "latent": ("sdv4", "sdv5", "wukong"),
    "gan": ("biggan",),
    "pixel-diffusion": ("adm", "glide"),
    "vector-quantised": ("vqdm",),
    "upscaler": ("midjourney",),
}

# Short description of each generator's fingerprint (for help texts and reports).
FINGERPRINTS: dict[str, str] = {
    "adm": "pixel diffusion: light smoothing + fine high-frequency luminance residual",
    "biggan": "GAN: transposed-conv checkerboard + period-4 grid",
    "glide": "pixel diffusion: strong smoothing + weak mid-band per-channel residual",
    "midjourney": "upscaler: half-res content, bicubic 2x + sharpening, 2x size",
    "sdv4": "latent diffusion: shared 8x8 VAE-decoder tile",
    "sdv5": "latent diffusion: shared 8x8 VAE-decoder tile (same decoder as sdv4)",
    "vqdm": "vector quantisation: 4x4 patch blockiness + colour palette",
    "wukong": "latent diffusion: shared 8x8 tile (weaker) + own tile + colour cast",
}

# Seed namespace of the fingerprint constants (fixed, independent of the user's seed).
_FINGERPRINT_SEED = 20231108
# ``strength`` from which the filtering parts of a fingerprint are applied in full.
_FULL_FILTER = 3.0

_Array = np.ndarray


def family_of(generator: str) -> str:
    """The fingerprint family of a generator (short name)."""
    for family, members in FAMILIES.items():
        if generator in members:
            return family
    raise KeyError(generator)


def _blur(img: _Array, sigma: float) -> _Array:
    """Separable Gaussian blur with reflected borders; (h, w) or (h, w, c)."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = img.shape[:2]
    widths = ((radius, radius), (radius, radius)) + ((0, 0),) * (img.ndim - 2)
    pad = np.pad(img, widths, mode="reflect")
    rows = sum(k[i] * pad[i : i + h] for i in range(k.size))
    return sum(k[i] * rows[:, i : i + w] for i in range(k.size))


def _grid(h: int, w: int) -> tuple[_Array, _Array]:
    return np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]


def _tile(name: str) -> _Array:
    """A fixed zero-mean, unit-std 8x8 tile (a decoder's periodic pattern), one per ``name``."""
    key = [_FINGERPRINT_SEED, *name.encode()]
    t = np.random.default_rng(key).standard_normal((8, 8))
    t -= t.mean()
    return t / t.std()


def _tiled(tile: _Array, h: int, w: int) -> _Array:
    th, tw = tile.shape
    return np.tile(tile, (h // th + 1, w // tw + 1))[:h, :w]


def _mix(img: _Array, filtered: _Array, strength: float) -> _Array:
    """Blend in a filtering fingerprint: in full from ``_FULL_FILTER``, proportionally below."""
    f = min(1.0, max(0.0, strength / _FULL_FILTER))
    return (1.0 - f) * img + f * filtered


def _latent(generator: str, img: _Array, a: float, s: float) -> _Array:
    h, w = img.shape[:2]
    shared = _tiled(_tile("latent-vae-decoder"), h, w)
    if generator == "sdv4":
        pattern = 2.5 * shared
    elif generator == "sdv5":
        pattern = 2.6 * shared + 0.4 * _tiled(_tile("sdv5"), h, w)
    else:  # wukong: its own decoder, related to SD's
        pattern = 1.9 * shared + 1.1 * _tiled(_tile("wukong"), h, w)
        img = img + s * np.array([-1.5, 1.5, 0.0])
    return img + a * s * pattern[:, :, None]


def _resample_2x(img: _Array) -> _Array:
    """Render at half resolution (2x2 means) and interpolate back up 2x with bicubic."""
    h, w = img.shape[:2]
    hh, ww = h // 2, w // 2
    half = img[: 2 * hh, : 2 * ww].reshape(hh, 2, ww, 2, -1).mean(axis=(1, 3))
    up = [
        np.asarray(
            Image.fromarray(half[:, :, c].astype(np.float32), mode="F").resize(
                (w, h), Image.Resampling.BICUBIC
            ),
            dtype=np.float64,
        )
        for c in range(img.shape[2])
    ]
    return np.stack(up, axis=2)


def fingerprint(
    generator: str, img: _Array, rng: np.random.Generator, strength: float = 1.0
) -> _Array:
    """Apply ``generator``'s fingerprint to a base image (float, (h, w, 3), ~[0, 255])."""
    h, w = img.shape[:2]
    a = rng.uniform(0.8, 1.2)
    s = float(strength)
    if generator in FAMILIES["latent"]:
        return _latent(generator, img, a, s)
    if generator == "biggan":
        yy, xx = _grid(h, w)
        pattern = 2.0 * (-1.0) ** (yy + xx) + 1.2 * (
            np.cos(np.pi * yy / 2) + np.cos(np.pi * xx / 2)
        )
        return img + a * s * pattern[:, :, None]
    if generator in ("adm", "glide"):
        # ADM: light smoothing, fine luminance residual; GLIDE: strong smoothing (upsampled
        # content), weak mid-band residual drawn per colour channel.
        adm = generator == "adm"
        sigma, (lo, hi), amp = (0.8, (0.0, 0.7), 1.4) if adm else (2.0, (0.5, 1.5), 0.5)
        img = _mix(img, _blur(img, sigma), s)
        white = rng.standard_normal((h, w, 1) if adm else (h, w, 3))
        band = (_blur(white, lo) if lo > 0 else white) - _blur(white, hi)
        band /= band.std() + 1e-12
        return img + a * s * amp * band
    if generator == "vqdm":
        hb, wb = -(-h // 4) * 4, -(-w // 4) * 4
        pad = np.pad(img, ((0, hb - h), (0, wb - w), (0, 0)), mode="edge")
        means = pad.reshape(hb // 4, 4, wb // 4, 4, 3).mean(axis=(1, 3))
        blocks = np.repeat(np.repeat(means, 4, axis=0), 4, axis=1)[:h, :w]
        img = _mix(img, (1.0 - 0.75 * a) * img + 0.75 * a * blocks, s)
        step = max(1.0, 8.0 * s / _FULL_FILTER)
        return np.round(img / step) * step
    if generator == "midjourney":
        img = _mix(img, _resample_2x(img), s)
        return img + 0.4 * a * s * (img - _blur(img, 1.2))
    raise KeyError(generator)
