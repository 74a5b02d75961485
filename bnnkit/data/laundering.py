"""Laundering: what happens to an image on its way to a detector, and the severity levels.

The pixel operations behind the laundering kinds of ``bnnkit evaluate --degrade`` (parsed, named
and composed in :mod:`bnnkit.data.degrade`), the severity levels 1-5 of the sweeps (``jpeg@1-5``)
and the documented ``laundering`` set. Every operation is deterministic: the same image gives the
same bytes every time, whatever the batch, worker or order.

- :func:`gaussian_noise` adds ``N(0, sigma^2)`` to every channel of every pixel on the 0-1 scale,
  clips to [0, 1] and rounds back to 8 bits. The noise is drawn by
  ``numpy.random.default_rng(seed).standard_normal((H, W, 3))`` with ``seed`` =
  :func:`pixel_seed` of the image (a hash of its pixels): re-evaluation is identical, and the
  levels of a sweep share one draw (the same noise pattern, scaled), so they differ only in
  sigma.
- :func:`reencode` writes the image as JPEG or WebP (Pillow, lossy, default encoder settings:
  JPEG baseline with 4:2:0 chroma subsampling; WebP method 4) at a quality and decodes it again.
- :func:`grayscale` is Pillow's ``convert("L")`` (ITU-R 601-2 luma,
  ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16``) copied back to three channels, so the
  detector's input shape is unchanged.
- :func:`downscale` multiplies both sides by ``scale`` (rounded, at least 1 px; bicubic,
  antialiased by Pillow) and keeps the smaller size: the ``chain`` pipeline's platform resize.

Severity levels (``KIND@LEVEL``, ``KIND@1-5``), milder to harsher, in the range laundering
benchmarks use (AI-GenBench: JPEG 50-100, noise sigma 0.015-0.075; SIDBench: JPEG 95/90/50/30,
blur 2/4; GenImage: JPEG 65/30, blur 3/5, 112/64 px), ImageNet-C's five-level layout:

======== =========================== ===== ===== ===== ===== =====
kind     parameter                     1     2     3     4     5
======== =========================== ===== ===== ===== ===== =====
jpeg     quality                        95    85    70    50    30
webp     quality                        95    85    70    50    30
blur     sigma (px)                      1     2     3     4     5
noise    sigma (0-1 scale)           0.015 0.030 0.045 0.060 0.075
resize   shorter side (px)             224   160   112    80    64
======== =========================== ===== ===== ===== ===== =====
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

__all__ = [
    "LAUNDERING",
    "SEVERITIES",
    "downscale",
    "gaussian_noise",
    "grayscale",
    "pixel_seed",
    "reencode",
    "webp_available",
]

#: kind -> its parameter at severity 1..5 (index 0 is severity 1); see the module's table.
SEVERITIES: dict[str, tuple[float, ...]] = {
    "jpeg": (95, 85, 70, 50, 30),
    "webp": (95, 85, 70, 50, 30),
    "blur": (1, 2, 3, 4, 5),
    "noise": (0.015, 0.03, 0.045, 0.06, 0.075),
    "resize": (224, 160, 112, 80, 64),
}

#: ``--degrade laundering``: the five sweeps, a social-media chain (a phone's quality-95 JPEG,
#: a platform's 3/4 downscale and its quality-80 re-encode), grayscale and SIDBench's combined
#: JPEG 50 + blur sigma 2. Its 28 keys in metrics.json are these names, in this order.
LAUNDERING = (
    "jpeg@1-5,webp@1-5,blur@1-5,noise@1-5,resize@1-5,chain:95,0.75,80,grayscale,jpegblur:50,2"
)


def pixel_seed(image: Image.Image) -> int:
    """A 64-bit seed from the image's pixels: BLAKE2b (8-byte digest) of ``b"WxH:MODE:"``
    followed by ``image.tobytes()``, read little-endian."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{image.width}x{image.height}:{image.mode}:".encode())
    h.update(image.tobytes())
    return int.from_bytes(h.digest(), "little")


def gaussian_noise(image: Image.Image, sigma: float) -> Image.Image:
    """Additive Gaussian noise of std ``sigma`` on the 0-1 scale, clipped, seeded by the pixels."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    noise = np.random.default_rng(pixel_seed(rgb)).standard_normal(x.shape) * sigma
    out = np.clip(x + noise, 0.0, 1.0)
    return Image.fromarray(np.rint(out * 255.0).astype(np.uint8), "RGB")


def webp_available() -> bool:
    """Whether this Pillow can write WebP (it needs libwebp at build time)."""
    from PIL import features

    return bool(features.check("webp"))


def reencode(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    """``image`` written as ``fmt`` (``"JPEG"`` or ``"WEBP"``) at ``quality`` and decoded again."""
    if fmt == "WEBP" and not webp_available():
        raise RuntimeError(
            "this Pillow was built without WebP support (PIL.features.check('webp') is False)"
        )
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def grayscale(image: Image.Image) -> Image.Image:
    """Pillow's luma (ITU-R 601-2) as three equal channels."""
    return image.convert("L").convert("RGB")


def downscale(image: Image.Image, scale: float) -> Image.Image:
    """Both sides times ``scale`` (rounded, at least 1 px), bicubic; a copy when nothing changes."""
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image.copy()
    return image.resize(size, Image.Resampling.BICUBIC)
