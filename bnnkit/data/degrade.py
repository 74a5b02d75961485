"""Degradations of GenImage's robustness protocol: JPEG re-encoding, Gaussian blur, low resolution.

The GenImage paper (Zhu et al., 2023) evaluates detectors on degraded test images: low resolution
112 and 64 px, JPEG quality 65 and 30, Gaussian blur sigma 3 and 5. ``bnnkit evaluate --degrade
jpeg:65,jpeg:30,blur:3,blur:5,resize:112,resize:64`` reproduces it. A degradation is applied to the
decoded RGB image, *before* the usual evaluation transform (crop or resize to ``image_size`` and
normalisation), so the detector sees its ordinary input size:

- ``jpeg:Q`` re-encodes the image as a baseline JPEG at quality ``Q`` (1-100) with Pillow
  (libjpeg, Pillow's default 4:2:0 chroma subsampling) and decodes it again.
- ``blur:S`` convolves with a Gaussian of standard deviation ``S`` pixels (0 < S <= 50), using
  torchvision's ``gaussian_blur``: an exact sampled kernel of size ``2 * ceil(3 S) + 1`` (+-3 sigma)
  with reflect padding. Pillow's ``GaussianBlur`` is not used because it approximates the Gaussian
  with repeated box blurs. On images smaller than the kernel, the kernel is cut to the largest odd
  size that reflect padding allows (``2 * min(width, height) - 1``).
- ``resize:R`` lowers the resolution: the image is downscaled (bicubic, antialiased by Pillow) so
  that its *shorter* side is ``R`` pixels, aspect ratio kept, and then scaled back up (bicubic) to
  its original size. Images whose shorter side is already at most ``R`` are left unchanged. The
  detail lost is that of an ``R``-pixel image, as in the paper; scaling back keeps the geometry
  the detector was trained on, so the ``crop`` preprocessing does not zero-pad an image smaller
  than ``image_size`` and ``resize`` preprocessing gives the paper's "resize to R, then to the
  input size" up to one extra interpolation.

All three are deterministic: the same image gives the same bytes every time.

Specs are parsed by :func:`parse_degradations`; a wrong spec raises
:class:`~bnnkit.errors.UsageError` with what is accepted.
"""

from __future__ import annotations

import difflib
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image

from bnnkit.errors import UsageError

__all__ = ["GENIMAGE_PROTOCOL", "KINDS", "Degradation", "parse_degradations"]

#: The six degradations of the GenImage paper, in the paper's order.
GENIMAGE_PROTOCOL = "jpeg:65,jpeg:30,blur:3,blur:5,resize:112,resize:64"

#: kind -> (description of the parameter, lowest, highest, integer?)
KINDS: dict[str, tuple[str, float, float, bool]] = {
    "jpeg": ("JPEG quality, an integer from 1 to 100", 1, 100, True),
    "blur": ("Gaussian sigma in pixels, a number > 0 and <= 50", 0, 50, False),
    "resize": ("shorter side in pixels, an integer from 8 to 4096", 8, 4096, True),
}

_EXAMPLE = "e.g. --degrade jpeg:65,blur:3,resize:112"


@dataclass(frozen=True)
class Degradation:
    """One degradation, callable on a PIL image (picklable, so DataLoader workers can use it)."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        """Canonical spec, e.g. ``jpeg:65``, ``blur:2.5``; the key used in ``metrics.json``."""
        return f"{self.kind}:{self.value:g}"

    def describe(self) -> str:
        v = f"{self.value:g}"
        return {
            "jpeg": f"JPEG re-encoded at quality {v}",
            "blur": f"Gaussian blur, sigma {v} px",
            "resize": f"low resolution: shorter side {v} px, then back to full size",
        }[self.kind]

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self.kind == "jpeg":
            return _jpeg(image, int(self.value))
        if self.kind == "blur":
            return _blur(image, float(self.value))
        return _low_resolution(image, int(self.value))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def _blur(image: Image.Image, sigma: float) -> Image.Image:
    from torchvision.transforms.v2 import functional as F

    size = 2 * math.ceil(3 * sigma) + 1
    largest = 2 * min(image.size) - 1  # reflect padding needs padding < the image's side
    size = max(1, min(size, largest if largest % 2 else largest - 1))
    if size == 1:
        return image.copy()
    return F.gaussian_blur(image, kernel_size=[size, size], sigma=[sigma, sigma])


def _low_resolution(image: Image.Image, short_side: int) -> Image.Image:
    width, height = image.size
    short = min(width, height)
    if short <= short_side:
        return image.copy()
    scale = short_side / short
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = image.resize(small_size, Image.Resampling.BICUBIC)
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _parse_one(item: str) -> Degradation:
    kind, sep, raw = item.partition(":")
    kind = kind.strip().lower()
    raw = raw.strip()
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, list(KINDS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(KINDS)}"
        raise UsageError(f"--degrade {item!r}: unknown degradation '{kind}'; {hint}", hint=_EXAMPLE)
    what, low, high, integer = KINDS[kind]
    if not sep or not raw:
        raise UsageError(f"--degrade {item!r}: '{kind}' needs a value: {kind}:N ({what})")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--degrade {item!r}: '{raw}' is not a number ({what})") from None
    bad = not math.isfinite(value) or (integer and value != int(value))
    bad = bad or value > high or (value < low if integer else value <= low)
    if bad:
        raise UsageError(f"--degrade {item!r}: expected {what}")
    return Degradation(kind, float(int(value)) if integer else value)


def parse_degradations(specs: str | Iterable[str] | None) -> list[Degradation]:
    """Degradations from specs like ``"jpeg:65,blur:3"`` (one string or several, e.g. a
    repeated option). ``genimage`` expands to the paper's six. Duplicates are dropped, order kept.
    """
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, Degradation] = {}
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            if item.lower() == "genimage":
                for d in parse_degradations(GENIMAGE_PROTOCOL):
                    out.setdefault(d.name, d)
                continue
            d = _parse_one(item)
            out.setdefault(d.name, d)
    return list(out.values())
