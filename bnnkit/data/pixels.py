"""Pixel modes to 8-bit RGB: alpha onto white, 16/32-bit and float images scaled (not clipped),
EXIF orientation. Used by :func:`bnnkit.data.images.open_rgb` after decoding."""

from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image, ImageOps

_WHITE = (255, 255, 255)


def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _premultiplied_on_white(im: Image.Image) -> Image.Image:
    # "La"/"RGBa" hold colour already multiplied by alpha: on white, out = c + (255 - alpha).
    arr = np.asarray(im, dtype=np.int32)
    colour, alpha = arr[..., :-1], arr[..., -1:]
    out = np.clip(colour + (255 - alpha), 0, 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return Image.fromarray(out, "RGB")


def _scale_to_uint8(arr: np.ndarray, *, integer: bool) -> np.ndarray:
    """Map a single-channel high-depth array to 0..255.

    Integers within 0..65535 are taken as 16-bit data (value / 257, so 65535 -> 255). Floats within
    0..1 are scaled by 255, floats within 0..255 are kept. Anything else is min-max stretched.
    """
    data = arr.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        fill = float(data[finite].min()) if finite.any() else 0.0
        data = np.where(finite, data, fill)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if integer and lo >= 0 and hi <= 65535:
        scaled = data / 257.0
    elif not integer and lo >= 0 and hi <= 1:
        scaled = data * 255.0
    elif not integer and lo >= 0 and hi <= 255:
        scaled = data
    elif hi > lo:
        scaled = (data - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        try:
            arr = np.asarray(im)
        except (TypeError, ValueError):
            arr = np.asarray(im.convert("I"))
    else:
        arr = np.asarray(im.convert("I"))
    grey = _scale_to_uint8(arr, integer=im.mode != "F")
    return Image.fromarray(grey, "L").convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 3-channel 8-bit RGB; alpha and transparency composited onto white."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        return _high_depth_to_rgb(im)  # any single-value transparency key is ignored here
    if mode in ("La", "RGBa"):
        return _premultiplied_on_white(im)
    palette_alpha = mode == "P" and im.palette is not None and im.palette.mode == "RGBA"
    if mode in ("RGBA", "LA", "PA") or palette_alpha or "transparency" in im.info:
        # Converting a palette image with transparency straight to RGB makes Pillow warn (and
        # drop the transparency); going through RGBA is silent and correct.
        return _composite_on_white(im)
    if mode == "RGB":
        return im
    # 1, L, P, CMYK (Pillow already undoes Adobe's inverted CMYK in JPEGs), YCbCr, LAB, HSV.
    return im.convert("RGB")


def apply_orientation(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a new image), or return ``im`` itself if there is none."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(im)
    except Exception:  # corrupt EXIF: keep the pixels, ignore the orientation
        pass
    return im
