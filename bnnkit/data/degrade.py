"""Degradations of GenImage's robustness protocol (JPEG re-encoding, Gaussian blur, low
resolution) and laundering (noise, WebP, grayscale, a social-media chain, JPEG + blur, severity
sweeps).

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

Laundering, as images reach a detector after sharing (the pixel operations, the severity table
and the ``laundering`` set are in :mod:`bnnkit.data.laundering`):

- ``noise:S`` adds Gaussian noise of standard deviation ``S`` on the 0-1 pixel scale
  (0 < S <= 1), clips to [0, 1] and rounds to 8 bits; the draw is seeded by a hash of the image's
  pixels, so re-evaluating gives the same images.
- ``webp:Q`` re-encodes as lossy WebP at quality ``Q`` (1-100) with Pillow and decodes it again
  (a Pillow built without WebP is refused when the spec is parsed).
- ``grayscale`` (no value): Pillow's ITU-R 601-2 luma, copied to three channels.
- ``chain:Q1,SCALE,Q2`` is a social-media pipeline, precisely: JPEG at quality ``Q1`` (the
  upload), both sides times ``SCALE`` (0 < SCALE <= 1; bicubic, antialiased: the platform's
  resize), JPEG at quality ``Q2`` (the platform's re-encode). The image stays at the reduced size
  the platform delivers, with the last JPEG's 8x8 grid intact; under ``crop`` preprocessing an
  image whose shorter side falls below ``image_size`` is then zero-padded by the centre crop
  (``resize`` preprocessing scales it as any other image).
- ``jpegblur:Q,S`` is SIDBench's combined degradation: Gaussian blur of sigma ``S`` (as
  ``blur:S``), then JPEG at quality ``Q`` (as ``jpeg:Q``): blur first, as CNNDetection's
  augmentation orders them.

All are deterministic: the same image gives the same bytes every time.

White-box adversarial attacks (they need the model's gradients, so they are no image operation:
the image passes through unchanged here and :mod:`bnnkit.engine.evaluate.attack` perturbs each
batch on the device; ``metrics.json`` adds an ``attack`` block to their entry):

- ``fgsm:EPS``: one signed-gradient step of L-inf size ``EPS`` on the 0-1 pixel scale
  (0 < EPS <= 1), e.g. ``fgsm:0.03``. ``/`` lists alternatives, as for every kind, so a fraction
  such as 8/255 is written as its decimal, ``0.0314``.
- ``pgd:EPS,STEPS``: ``STEPS`` (1-1000) projected signed-gradient steps of size
  ``2.5 * EPS / STEPS`` inside the L-inf ball of radius ``EPS``, e.g. ``pgd:0.0157,10``.

Spec syntax (:func:`parse_degradations`; comma-separated, a bare number after a comma is the next
value of the item before it):

- ``KIND:V`` or ``KIND:V1,V2,...``: one degradation, named by its canonical spec (numbers in
  ``%g`` form): ``jpeg:65``, ``chain:95,0.75,80``, ``jpegblur:50,2``, ``grayscale``. The name is
  its key in ``metrics.json`` and its ``condition`` in ``predictions.csv``.
- ``A/B/C`` in place of a value lists alternatives; several such values expand to their grid
  (Cartesian product, the first value varying slowest): ``jpegblur:30/50/70,1/2`` is the six
  ``jpegblur:30,1``, ``jpegblur:30,2``, ..., ``jpegblur:70,2``; ``jpeg:95/90/50/30`` is four.
- ``KIND@LEVELS``: severity levels 1-5 of :data:`~bnnkit.data.laundering.SEVERITIES` (``jpeg``,
  ``webp``, ``blur``, ``noise``, ``resize``); LEVELS is a level (``3``), a range (``1-5``) or a
  slash list (``1/3/5``). Each level is named ``KIND@LEVEL`` (``jpeg@3``), a key that stays the
  same whatever the level's value, which ``metrics.json`` records beside it.
- ``genimage``: the paper's six; ``laundering``: :data:`~bnnkit.data.laundering.LAUNDERING`
  (``jpeg@1-5,webp@1-5,blur@1-5,noise@1-5,resize@1-5,chain:95,0.75,80,grayscale,jpegblur:50,2``,
  28 degradations).

A wrong spec raises :class:`~bnnkit.errors.UsageError` with what is accepted. Duplicates (by
name) are dropped, order kept.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from PIL import Image

from bnnkit.data.laundering import (
    LAUNDERING,
    SEVERITIES,
    downscale,
    gaussian_noise,
    grayscale,
    reencode,
    webp_available,
)
from bnnkit.errors import UsageError

__all__ = [
    "ATTACKS",
    "GENIMAGE_PROTOCOL",
    "KINDS",
    "LAUNDERING",
    "SEVERITIES",
    "Degradation",
    "parse_degradations",
]

#: The six degradations of the GenImage paper, in the paper's order.
GENIMAGE_PROTOCOL = "jpeg:65,jpeg:30,blur:3,blur:5,resize:112,resize:64"


class Param(NamedTuple):
    """One value of a degradation: its description, bounds and whether it is an integer (an
    integer lies in [low, high]; a number in (low, high])."""

    what: str
    low: float
    high: float
    integer: bool


_JPEG_Q = Param("JPEG quality, an integer from 1 to 100", 1, 100, True)
_SIGMA = Param("Gaussian sigma in pixels, a number > 0 and <= 50", 0, 50, False)
_EPS = Param(
    "L-inf radius on the 0-1 pixel scale, a number > 0 and <= 1 (8/255 is written 0.0314: "
    "'/' lists alternatives)", 0, 1, False,
)  # fmt: skip

#: the white-box attacks: run per batch by :mod:`bnnkit.engine.evaluate.attack`, not on the image
ATTACKS = ("fgsm", "pgd")

#: kind -> its values, in the order the spec gives them (``grayscale`` has none).
KINDS: dict[str, tuple[Param, ...]] = {
    "jpeg": (_JPEG_Q,),
    "blur": (_SIGMA,),
    "resize": (Param("shorter side in pixels, an integer from 8 to 4096", 8, 4096, True),),
    "noise": (Param("noise sigma on the 0-1 scale, a number > 0 and <= 1", 0, 1, False),),
    "webp": (Param("WebP quality, an integer from 1 to 100", 1, 100, True),),
    "grayscale": (),
    "chain": (_JPEG_Q, Param("scale, a number > 0 and <= 1", 0, 1, False), _JPEG_Q),
    "jpegblur": (_JPEG_Q, _SIGMA),
    "fgsm": (_EPS,),
    "pgd": (_EPS, Param("PGD steps, an integer from 1 to 1000", 1, 1000, True)),
}
_USAGE = {
    "jpeg": "jpeg:QUALITY",
    "blur": "blur:SIGMA",
    "resize": "resize:SHORT_SIDE",
    "noise": "noise:SIGMA",
    "webp": "webp:QUALITY",
    "grayscale": "grayscale",
    "chain": "chain:Q1,SCALE,Q2",
    "jpegblur": "jpegblur:QUALITY,SIGMA",
    "fgsm": "fgsm:EPS",
    "pgd": "pgd:EPS,STEPS",
}
_SETS = {"genimage": GENIMAGE_PROTOCOL, "laundering": LAUNDERING}
_EXAMPLE = "e.g. --degrade jpeg:65,blur:3,resize:112, --degrade jpeg@1-5 or --degrade laundering"
_LEVELS = "a level from 1 to 5, a range such as 1-5 or a list such as 1/3/5"


@dataclass(frozen=True)
class Degradation:
    """One degradation, callable on a PIL image (picklable, so DataLoader workers can use it).
    ``value`` is its first value (None for ``grayscale``), ``more`` the others (``chain``,
    ``jpegblur``), ``severity`` the level 1-5 of a sweep (None otherwise)."""

    kind: str
    value: float | None = None
    more: tuple[float, ...] = ()
    severity: int | None = None

    @property
    def values(self) -> tuple[float, ...]:
        """Every value, in the spec's order."""
        return () if self.value is None else (self.value, *self.more)

    @property
    def name(self) -> str:
        """Canonical spec, e.g. ``jpeg:65``, ``blur:2.5``, ``chain:95,0.75,80``, ``grayscale``,
        ``jpeg@3`` (a severity level); the key used in ``metrics.json``."""
        if self.severity is not None:
            return f"{self.kind}@{self.severity}"
        if self.value is None:
            return self.kind
        return f"{self.kind}:" + ",".join(f"{v:g}" for v in self.values)

    def describe(self) -> str:
        v = [f"{x:g}" for x in self.values] + ["", "", ""]  # padded: every text is built
        text = {
            "jpeg": f"JPEG re-encoded at quality {v[0]}",
            "blur": f"Gaussian blur, sigma {v[0]} px",
            "resize": f"low resolution: shorter side {v[0]} px, then back to full size",
            "noise": f"Gaussian noise, sigma {v[0]} on the 0-1 scale, clipped",
            "webp": f"WebP re-encoded at quality {v[0]}",
            "grayscale": "grayscale (ITU-R 601-2 luma in all three channels)",
            "chain": (
                f"social-media chain: JPEG quality {v[0]}, downscaled x{v[1]}, JPEG quality {v[2]}"
            ),
            "jpegblur": f"Gaussian blur sigma {v[1]} px, then JPEG quality {v[0]}",
            "fgsm": f"FGSM white-box attack, L-inf eps {v[0]} on the 0-1 pixel scale",
            "pgd": f"PGD white-box attack, L-inf eps {v[0]} on the 0-1 pixel scale, {v[1]} steps",
        }[self.kind]
        return text if self.severity is None else f"severity {self.severity} of 5: {text}"

    def record(self) -> dict[str, Any]:
        """What ``metrics.json``'s ``degradations`` entry says about the degradation itself."""
        return {
            "kind": self.kind,
            "value": self.value,
            "values": list(self.values),
            "severity": self.severity,
            "description": self.describe(),
        }

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image if image.mode == "RGB" else image.convert("RGB")
        kind, v = self.kind, self.values
        if kind in ATTACKS:  # per batch, with the model's gradients (engine.evaluate.attack)
            return image
        if kind == "jpeg":
            return _jpeg(image, int(v[0]))
        if kind == "blur":
            return _blur(image, float(v[0]))
        if kind == "resize":
            return _low_resolution(image, int(v[0]))
        if kind == "noise":
            return gaussian_noise(image, float(v[0]))
        if kind == "webp":
            return reencode(image, "WEBP", int(v[0]))
        if kind == "grayscale":
            return grayscale(image)
        if kind == "chain":
            return _jpeg(downscale(_jpeg(image, int(v[0])), float(v[1])), int(v[2]))
        if kind == "jpegblur":
            return _jpeg(_blur(image, float(v[1])), int(v[0]))
        raise ValueError(f"unknown degradation kind {kind!r}")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    return reencode(image, "JPEG", quality)


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


def _check_kind(kind: str, item: str) -> None:
    if kind in KINDS:
        return
    close = difflib.get_close_matches(kind, [*KINDS, *_SETS], n=1, cutoff=0.6)
    known = f"known: {', '.join(KINDS)}, and the sets {', '.join(_SETS)}"
    hint = f"did you mean '{close[0]}'? ({known})" if close else known
    raise UsageError(f"--degrade {item!r}: unknown degradation '{kind}'; {hint}", hint=_EXAMPLE)


def _number(item: str, raw: str, param: Param) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--degrade {item!r}: '{raw}' is not a number ({param.what})") from None
    bad = not math.isfinite(value) or (param.integer and value != int(value))
    bad = bad or value > param.high
    bad = bad or (value < param.low if param.integer else value <= param.low)
    if bad:
        raise UsageError(f"--degrade {item!r}: expected {param.what}")
    return float(int(value)) if param.integer else value


def _severities(item: str) -> list[Degradation]:
    kind, _, raw = item.partition("@")
    kind = kind.strip().lower()
    _check_kind(kind, item)
    if kind not in SEVERITIES:
        raise UsageError(
            f"--degrade {item!r}: '{kind}' has no severity levels; they exist for "
            f"{', '.join(SEVERITIES)}",
            hint=f"give its values instead: {_USAGE[kind]}",
        )
    levels: list[int] = []
    for part in raw.split("/"):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise UsageError(f"--degrade {item!r}: a severity is {_LEVELS}") from None
        if not 1 <= low <= high <= len(SEVERITIES[kind]):
            raise UsageError(f"--degrade {item!r}: a severity is {_LEVELS}")
        levels += range(low, high + 1)
    table = SEVERITIES[kind]
    return [Degradation(kind, float(table[s - 1]), (), s) for s in dict.fromkeys(levels)]


def _parse_item(item: str) -> list[Degradation]:
    """The degradations of one item: a set's name, ``KIND@LEVELS`` or ``KIND[:V1,...]``."""
    if item.lower() in _SETS:
        return parse_degradations(_SETS[item.lower()])
    if "@" in item:
        return _severities(item)
    kind, sep, raw = item.partition(":")
    kind = kind.strip().lower()
    _check_kind(kind, item)
    params, usage = KINDS[kind], _USAGE[kind]
    if not params:
        if sep:
            raise UsageError(
                f"--degrade {item!r}: '{kind}' takes no value", hint=f"--degrade {kind}"
            )
        return [Degradation(kind)]
    what = "; ".join(p.what for p in params)
    if not sep or not raw.strip():
        raise UsageError(f"--degrade {item!r}: '{kind}' needs a value: {usage} ({what})")
    fields = [f.strip() for f in raw.split(",")]
    if len(fields) != len(params):
        n = len(params)
        raise UsageError(
            f"--degrade {item!r}: '{kind}' takes {n} value{'s' if n > 1 else ''}: {usage} ({what})",
            hint="several degradations of a kind: repeat it (jpeg:65,jpeg:30) or list "
            "alternatives with '/' (jpeg:65/30)",
        )
    choices = [
        [_number(item, alt.strip(), p) for alt in f.split("/")]
        for f, p in zip(fields, params, strict=True)
    ]
    return [Degradation(kind, c[0], tuple(c[1:])) for c in itertools.product(*choices)]


def _items(spec: str) -> list[str]:
    """A spec split at commas, a bare number (or '/' list) joined to the item before it."""
    items: list[str] = []
    for token in spec.split(","):
        token = token.strip()
        if not token:
            continue
        if items and token[0] in "0123456789.+-":
            items[-1] += "," + token
        else:
            items.append(token)
    return items


def parse_degradations(specs: str | Iterable[str] | None) -> list[Degradation]:
    """Degradations from specs like ``"jpeg:65,blur:3"``, ``"chain:95,0.75,80"``,
    ``"jpeg@1-5"`` or ``"laundering"`` (one string or several, e.g. a repeated option; the
    syntax is in the module's docstring). ``genimage`` expands to the paper's six,
    ``laundering`` to :data:`LAUNDERING`. Duplicates (by name) are dropped, order kept."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, Degradation] = {}
    for spec in specs:
        for item in _items(spec):
            for d in _parse_item(item):
                out.setdefault(d.name, d)
    if any(d.kind == "webp" for d in out.values()) and not webp_available():
        raise UsageError(
            "--degrade webp: this Pillow was built without WebP support "
            "(PIL.features.check('webp') is False)",
            hint="install a Pillow wheel with libwebp (the PyPI wheels have it), or leave the "
            "webp degradations out (e.g. list the laundering kinds one by one)",
        )
    return list(out.values())
