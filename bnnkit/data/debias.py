"""Bias-controlled data (``data.debias``): GenImage without its format and size shortcut.

GenImage's fakes are PNG of a fixed size per generator and its reals ImageNet JPEGs (mostly
quality 96) of varying size, so a detector can learn "JPEG means real" instead of generation
artifacts ("Fake or JPEG?", Grommelt et al.). Two controls, as DDA and UnbiasedGenImage use them,
selected by ``data.debias`` (a list; default ``[]``, the raw data):

``jpeg96``
    Every fake is re-encoded as JPEG **quality 96** (:data:`JPEG96_QUALITY`, Pillow's default
    4:2:0 chroma subsampling) right after it is decoded, before any transform or degradation;
    reals are left as they are. The quality is fixed rather than estimated per run: 96 is the
    quality of most ImageNet reals and the quality the published ``jpeg96`` numbers use, so
    results stay comparable across datasets and papers. :func:`jpeg_quality` estimates a JPEG's
    IJG quality from its luminance quantisation table (header only), and evaluation records the
    median over the reals it read (:func:`reals_jpeg_quality`) beside the fixed 96, so a dataset
    whose reals are not at 96 shows it.
``size_matched``
    Reals are restricted to the fakes' size band: per generator (and per split, on the list of
    samples given), only reals whose shorter side lies within the ``[min, max]`` shorter side of
    that generator's fakes are kept (pixel sizes read from the file headers). With
    ``data.balance`` the generator's fakes are then cut to as many as reals remain (the first in
    the list's order). A generator without fakes in the list keeps its reals; one whose reals
    all fall outside the band is an error naming the band (a class cannot be left empty
    silently): drop ``size_matched`` or add reals of the fakes' size. A file whose header cannot
    be read is kept, for the loader to report as broken.

Both apply to a run's training, calibration and evaluation images alike (deterministically: the
same files, the same bytes), are recorded in the resolved recipe, in the frozen-feature cache key
and in ``metrics.json``. ``bnnkit evaluate RUN --debias jpeg96`` evaluates any run under them
(its evaluation, calibration and score-fit images; a temperature from ``bnnkit calibrate`` stays
the one fitted under the run's own controls). ``bnnkit predict`` reads unlabelled files as they
are: there is no fake to re-encode.
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from PIL import Image

from bnnkit.errors import UsageError

__all__ = [
    "DEBIAS_OPTIONS",
    "JPEG96_QUALITY",
    "apply_debias",
    "debias_of",
    "debias_record",
    "jpeg_quality",
    "normalise_debias",
    "reals_jpeg_quality",
    "reencode_jpeg",
    "size_match",
]

#: the controls ``data.debias`` may list, in their canonical order
DEBIAS_OPTIONS: tuple[str, ...] = ("jpeg96", "size_matched")
#: the JPEG quality fakes are re-encoded at under ``jpeg96`` (GenImage's reals' usual quality)
JPEG96_QUALITY = 96

# The IJG (libjpeg) standard luminance quantisation table, natural order.
_IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def normalise_debias(values: Iterable[str] | None) -> list[str]:
    """``values`` checked, without repeats, in canonical order; a :class:`UsageError` names an
    unknown control."""
    given = [str(v).strip().lower() for v in (values or [])]
    unknown = [v for v in given if v not in DEBIAS_OPTIONS]
    if unknown:
        raise UsageError(
            f"unknown data.debias control {unknown[0]!r}",
            hint=f"known: {', '.join(DEBIAS_OPTIONS)}",
        )
    return [v for v in DEBIAS_OPTIONS if v in given]


def debias_of(recipe: Any) -> tuple[str, ...]:
    """The recipe's ``data.debias`` (empty for a recipe from before the key existed)."""
    return tuple(getattr(recipe.data, "debias", None) or ())


# --------------------------------------------------------------------------- jpeg96


def reencode_jpeg(image: Image.Image, quality: int = JPEG96_QUALITY) -> Image.Image:
    """``image`` (RGB) saved as JPEG at ``quality`` and decoded again (deterministic)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _ijg_table(quality: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((q * scale + 50) // 100, 1), 255) for q in _IJG_LUMA]


_IJG_SORTED = {q: sorted(_ijg_table(q)) for q in range(1, 101)}


def jpeg_quality(path: Any) -> int | None:
    """The IJG quality (1-100) whose luminance table is closest to the JPEG's at ``path`` (read
    from the header; order-independent, so zigzag or natural order alike); ``None`` for a file
    that is not a readable JPEG."""
    try:
        with Image.open(path) as im:
            tables = getattr(im, "quantization", None)
            if im.format != "JPEG" or not tables:
                return None
            luma = sorted(int(v) for v in tables[min(tables)])
    except (OSError, ValueError, SyntaxError):
        return None
    if len(luma) != 64:
        return None
    return min(
        _IJG_SORTED,
        key=lambda q: (sum(abs(a - b) for a, b in zip(luma, _IJG_SORTED[q], strict=True)), -q),
    )


def reals_jpeg_quality(samples: Sequence[Any], limit: int = 64) -> dict[str, Any]:
    """Median estimated quality (:func:`jpeg_quality`) of up to ``limit`` reals of ``samples``
    (evenly spaced over the list), with how many were JPEG: ``{"median": Q | None, "jpeg": n,
    "read": m}``."""
    reals = [s for s in samples if s.label == 0]
    step = max(1, len(reals) // max(limit, 1))
    picked = reals[::step][:limit]
    found = [q for q in (jpeg_quality(s.path) for s in picked) if q is not None]
    median = int(statistics.median_low(found)) if found else None
    return {"median": median, "jpeg": len(found), "read": len(picked)}


# --------------------------------------------------------------------------- size_matched


def _short_side(path: Any) -> int | None:
    try:
        with Image.open(path) as im:
            return int(min(im.size))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def size_match(samples: Sequence[Any], balance: bool = True) -> list[Any]:
    """``samples`` with each generator's reals restricted to its fakes' shorter-side band (see
    the module docstring); the order of ``samples`` is kept."""
    by_gen: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_gen[s.generator].append(i)
    drop: set[int] = set()
    for gen, rows in by_gen.items():
        fakes = [i for i in rows if samples[i].label == 1]
        reals = [i for i in rows if samples[i].label == 0]
        sides = [v for v in (_short_side(samples[i].path) for i in fakes) if v is not None]
        if not sides or not reals:
            continue
        lo, hi = min(sides), max(sides)
        real_sides = {i: _short_side(samples[i].path) for i in reals}
        kept = [i for i, v in real_sides.items() if v is None or lo <= v <= hi]
        if not kept:
            known = [v for v in real_sides.values() if v is not None]
            raise UsageError(
                f"data.debias size_matched: no real image of {gen} has a shorter side within its "
                f"fakes' band [{lo}, {hi}] px (reals: {min(known)}-{max(known)} px)",
                hint="drop size_matched from data.debias, or add reals of the fakes' size",
            )
        drop.update(set(reals) - set(kept))
        if balance and len(fakes) > len(kept):
            drop.update(fakes[len(kept) :])
    return [s for i, s in enumerate(samples) if i not in drop]


def apply_debias(recipe: Any, samples: Sequence[Any]) -> list[Any]:
    """The sample list a run reads under its ``data.debias`` (``size_matched`` filters it;
    ``jpeg96`` acts at load time, :class:`bnnkit.data.dataset.ImageDataset`)."""
    if "size_matched" not in debias_of(recipe):
        return list(samples)
    return size_match(samples, balance=bool(recipe.data.balance))


def debias_record(debias: Sequence[str], samples: Sequence[Any] = ()) -> dict[str, Any]:
    """What ``metrics.json`` records under ``debias``: the controls, the re-encoding quality
    and (with ``jpeg96``) the reals' estimated quality."""
    record: dict[str, Any] = {"controls": list(debias)}
    if "jpeg96" in debias:
        record["fake_jpeg_quality"] = JPEG96_QUALITY
        record["reals_estimated_quality"] = reals_jpeg_quality(samples)
    return record
