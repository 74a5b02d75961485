"""Robust image reading for scraped and benchmark folders (GenImage and the like).

One bad file must never kill an epoch: :func:`open_rgb` either returns a fully decoded 8-bit RGB
image or raises :class:`UnreadableImage` carrying the path and a short, specific reason, so a
dataset can skip the file, count it and report it by name.

What is handled:

* format by *content*, not extension (GenImage has ``.PNG`` files that are JPEGs inside);
* EXIF orientation; first frame of animated GIF/PNG/WebP;
* every common pixel mode to RGB: 1-bit, greyscale, palette (with transparency), greyscale+alpha,
  RGBA (alpha composited onto white), CMYK (incl. Adobe-inverted JPEG), 16-bit greyscale (scaled to
  8 bit, not clipped) and 32-bit integer/float images;
* decompression bombs: width x height is checked from the header before any pixel is decoded;
* empty, truncated, corrupt, mis-named and non-image files (text, HTML error pages, Git LFS
  pointers, random bytes), directories, missing files and unreadable permissions.

Pillow keeps two relevant settings in module globals (``Image.MAX_IMAGE_PIXELS`` and
``ImageFile.LOAD_TRUNCATED_IMAGES``). This module does not change the first; the second is forced
to ``False`` only while a file is being decoded, and only if someone had set it to ``True``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from bnnkit.errors import BnnkitError, UsageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "UnreadableImage",
    "is_image_name",
    "list_images",
    "open_rgb",
    "sniff_format",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
# Decompression-bomb guard: the largest width * height accepted. Equal to the size at which Pillow
# itself raises DecompressionBombError (2 * Image.MAX_IMAGE_PIXELS with Pillow's defaults).
DEFAULT_MAX_PIXELS: int = 178_956_970

# Formats recognised by content; the names are Pillow's format identifiers.
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")

_WHITE = (255, 255, 255)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SNIFF_BYTES = 64
# JPEG start-of-frame markers (C4 = DHT, C8 = reserved, CC = DAC are not frames).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


class _CorruptHeader(Exception):
    """Raised by the header readers; the message is the reason."""


class UnreadableImage(BnnkitError):
    """A file that cannot be read as an image; ``path`` and a short human ``reason``."""

    def __init__(self, path: os.PathLike[str] | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable, so it survives being sent back from a DataLoader worker process.
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------
# Names and folders


def is_image_name(path: os.PathLike[str] | str) -> bool:
    """Whether ``path`` has an image extension (case-insensitive: GenImage uses ``.PNG``)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    # Dot files: .DS_Store, AppleDouble "._foo.png", .ipynb_checkpoints, .git, ...
    return name.startswith(".")


def list_images(folder: os.PathLike[str] | str, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted, selected by case-insensitive extension.

    Hidden files and everything under hidden folders are skipped. Symbolic links to files and
    folders are followed (once each, so link cycles are harmless); unreadable sub-folders are
    skipped. Raises :class:`~bnnkit.errors.UsageError` if ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.exists():
        raise UsageError(f"{root}: no such folder")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder")

    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending: list[Path] = [root]
    while pending:
        current = pending.pop()
        try:
            st = current.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if _is_hidden(entry.name):
                        continue
                    try:
                        if entry.is_dir():
                            if recursive:
                                pending.append(Path(entry.path))
                        elif entry.is_file() and is_image_name(entry.name):
                            found.append(Path(entry.path))
                    except OSError:
                        continue
        except OSError:
            continue
    return sorted(found)


# --------------------------------------------------------------------------------------------
# Content sniffing


def _sniff_bytes(head: bytes) -> str | None:
    """Format from the first bytes of a file, or None."""
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    # "BM" alone is too weak (a text file may start with it): also check the DIB header size.
    if head[:2] == b"BM" and len(head) >= 18:
        dib_header_size = struct.unpack("<I", head[14:18])[0]
        if dib_header_size in _BMP_HEADER_SIZES:
            return "BMP"
    return None


def sniff_format(path: os.PathLike[str] | str) -> str | None:
    """Image format by content (magic bytes), whatever the extension says.

    Returns one of ``"PNG"``, ``"JPEG"``, ``"GIF"``, ``"WEBP"``, ``"BMP"``, ``"TIFF"`` (Pillow's
    names), or None if the content is none of them. Raises ``OSError`` if the file cannot be read.
    """
    with open(path, "rb") as fh:
        return _sniff_bytes(fh.read(_SNIFF_BYTES))


def _describe_non_image(head: bytes) -> str:
    """A short reason for content that is not a supported image."""
    if any(sig.startswith(head) for sig in (_PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF89a")):
        return f"truncated image header ({len(head)} bytes)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"version https://git-lfs"):
        return "Git LFS pointer file, not the image (run `git lfs pull`)"
    if text.startswith(b"<"):
        if b"<svg" in text:
            return "SVG vector image (not supported)"
        if b"html" in text or text.startswith(b"<!doctype"):
            return "not an image (HTML page)"
        return "not an image (XML/HTML text)"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        return f"unsupported container format (ISO-BMFF '{brand}', e.g. HEIC/AVIF)"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut off at the end is still text
        decoded = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if decoded and all(ch.isprintable() or ch in "\t\r\n" for ch in decoded):
        return "not an image (text file)"
    supported = "/".join(SUPPORTED_FORMATS)
    return f"not an image (unrecognised content, not {supported}; starts with {head[:8].hex()})"


# --------------------------------------------------------------------------------------------
# Header dimensions (read before Pillow decodes anything)


def _jpeg_size(fh: IO[bytes]) -> tuple[int, int] | None:
    """(width, height) from the first JPEG start-of-frame segment, or None if not found."""
    fh.seek(2)
    for _ in range(10_000):  # segments; a real file has a few dozen
        byte = fh.read(1)
        if byte != b"\xff":
            return None
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            return None
        code = marker[0]
        if code == 0x01 or code == 0xD8 or 0xD0 <= code <= 0xD7:  # stand-alone markers
            continue
        if code in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        length = struct.unpack(">H", raw)[0]
        if length < 2:
            return None
        if code in _JPEG_SOF:
            frame = fh.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        fh.seek(length - 2, io.SEEK_CUR)
    return None


def _header_size(fmt: str, head: bytes, fh: IO[bytes]) -> tuple[int, int] | None:
    """(width, height) as claimed by the file header, or None where not cheaply known."""
    try:
        if fmt == "PNG":
            if head[12:16] != b"IHDR" or len(head) < 33:
                return None  # Pillow will report the broken header
            if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
                raise _CorruptHeader("corrupt PNG header (IHDR checksum mismatch)")
            return struct.unpack(">II", head[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", head[6:10])
        if fmt == "BMP":
            if struct.unpack("<I", head[14:18])[0] == 12:
                width, height = struct.unpack("<HH", head[18:22])
            else:
                width, height = struct.unpack("<ii", head[18:26])
            return abs(width), abs(height)
        if fmt == "WEBP":
            chunk = head[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(head[24:27], "little") + 1
                h = int.from_bytes(head[27:30], "little") + 1
                return w, h
            if chunk == b"VP8L" and head[20] == 0x2F:
                bits = int.from_bytes(head[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", head[26:30])
                return w & 0x3FFF, h & 0x3FFF
            return None
        if fmt == "JPEG":
            return _jpeg_size(fh)
    except (struct.error, IndexError):
        return None
    return None


def _too_large(width: int, height: int, max_pixels: int) -> str | None:
    if width * height > max_pixels:
        return f"too large: {width}x{height} pixels exceeds the {max_pixels}-pixel limit"
    return None


def _bomb_reason(exc: Exception) -> str:
    """Reason for Pillow's own DecompressionBombError (its limit is a Pillow global)."""
    numbers = re.findall(r"\d+", str(exc))
    if len(numbers) >= 2:
        return (
            f"too large: {numbers[0]} pixels exceeds Pillow's {numbers[1]}-pixel limit "
            "(PIL.Image.MAX_IMAGE_PIXELS)"
        )
    return f"too large: {exc}"


# --------------------------------------------------------------------------------------------
# Global Pillow state, touched only while decoding


_state_lock = threading.Lock()
_strict_depth = 0
_saved_load_truncated = False


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make Pillow refuse truncated files for the duration, then restore its setting.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a module global that other code may have set to True
    (it makes Pillow return half-grey images silently). Nested and concurrent uses are counted so
    the setting is restored only when the last one ends; nothing is written if it was False.
    """
    global _strict_depth, _saved_load_truncated
    with _state_lock:
        if _strict_depth == 0:
            _saved_load_truncated = bool(ImageFile.LOAD_TRUNCATED_IMAGES)
            if _saved_load_truncated:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_depth += 1
    try:
        yield
    finally:
        with _state_lock:
            _strict_depth -= 1
            if _strict_depth == 0 and _saved_load_truncated:
                ImageFile.LOAD_TRUNCATED_IMAGES = True


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow's warnings: the bomb warning (we enforce our own limit) and metadata chatter
    such as "Corrupt EXIF data" or palette-transparency hints."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        warnings.filterwarnings("ignore", category=UserWarning, module=re.escape(__name__))
        yield


# --------------------------------------------------------------------------------------------
# Pixel-mode conversion


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


def _to_rgb(im: Image.Image) -> Image.Image:
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


# --------------------------------------------------------------------------------------------
# Reading


def _apply_orientation(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a new image), or return ``im`` itself if there is none."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(im)
    except Exception:  # corrupt EXIF: keep the pixels, ignore the orientation
        pass
    return im


def _stat_reason(path: Path) -> str | None:
    """Reason the path cannot be an image file, from ``stat`` alone; None if it may be one."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "no such file (or a broken link)" if path.is_symlink() else "no such file"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return f"cannot access file: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"  # FIFO, socket or device: opening could block
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _decode_reason(fmt: str, exc: Exception, *, opened: bool) -> str:
    """Short reason for an exception raised by Pillow while opening or decoding ``fmt``."""
    message = str(exc).strip() or type(exc).__name__
    lowered = message.lower()
    if "truncated" in lowered or isinstance(exc, EOFError):
        return f"truncated {fmt}" if opened else f"truncated {fmt} header"
    if isinstance(exc, UnidentifiedImageError) or not opened:
        if "not installed" in lowered:
            return f"{fmt} support is not installed in Pillow"
        return f"corrupt {fmt} header"
    return f"corrupt {fmt} data ({type(exc).__name__}: {message[:120]})"


def _riff_truncated(head: bytes, fh: IO[bytes]) -> bool:
    """Whether a RIFF (WebP) file is shorter than its header says."""
    try:
        declared = struct.unpack("<I", head[4:8])[0] + 8
        return os.fstat(fh.fileno()).st_size < declared
    except (OSError, struct.error, ValueError):
        return False


def _read(path: Path, max_pixels: int) -> Image.Image:
    try:
        fh = path.open("rb")
    except PermissionError:
        raise UnreadableImage(path, "permission denied") from None
    except IsADirectoryError:
        raise UnreadableImage(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise UnreadableImage(path, f"cannot open file: {exc.strerror or exc}") from None

    with fh:
        try:
            head = fh.read(_SNIFF_BYTES)
        except OSError as exc:
            raise UnreadableImage(path, f"read error: {exc.strerror or exc}") from None
        if not head:
            raise UnreadableImage(path, "empty file (0 bytes)")
        fmt = _sniff_bytes(head)
        if fmt is None:
            raise UnreadableImage(path, _describe_non_image(head))

        # Bomb guard from the raw header, before Pillow parses or allocates anything.
        try:
            size = _header_size(fmt, head, fh)
        except _CorruptHeader as exc:
            raise UnreadableImage(path, str(exc)) from None
        except OSError as exc:
            raise UnreadableImage(path, f"read error: {exc.strerror or exc}") from None
        if size is not None and (reason := _too_large(*size, max_pixels)):
            raise UnreadableImage(path, reason)

        fh.seek(0)
        opened = False
        try:
            with _quiet_pillow(), _strict_truncation():
                im = Image.open(fh, formats=[fmt])
                opened = True
                width, height = im.size
                if width <= 0 or height <= 0:
                    raise UnreadableImage(path, f"zero-size {fmt} ({width}x{height})")
                # Pillow's parsed size (covers TIFF, and GIF frames larger than the screen).
                if reason := _too_large(width, height, max_pixels):
                    raise UnreadableImage(path, reason)
                im.load()  # full decode now: truncation must fail here, not later
                oriented = _apply_orientation(im)
                rgb = _to_rgb(oriented)
                # Always hand back a plain Image, never the ImageFile tied to the closed file.
                return rgb.copy() if rgb is im else rgb
        except UnreadableImage:
            raise
        except Image.DecompressionBombError as exc:
            raise UnreadableImage(path, _bomb_reason(exc)) from None
        except MemoryError:
            raise UnreadableImage(path, f"out of memory decoding {fmt}") from None
        except Exception as exc:  # Pillow raises many exception types on corrupt input
            reason = _decode_reason(fmt, exc, opened=opened)
            if fmt == "WEBP" and _riff_truncated(head, fh):
                reason = "truncated WEBP"  # libwebp refuses it at open: "corrupt header"
            raise UnreadableImage(path, reason) from None


def open_rgb(path: os.PathLike[str] | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file as a fully decoded 8-bit RGB image, or raise :class:`UnreadableImage`.

    The format is taken from the content, not the extension. EXIF orientation is applied; an
    animated file gives its first frame; transparency is composited onto white; 16-bit and float
    images are scaled (not clipped) to 8 bit. Images whose header claims more than ``max_pixels``
    pixels are refused before decoding (Pillow's own limit, ``PIL.Image.MAX_IMAGE_PIXELS``, still
    applies on top: raise it yourself to accept more than twice its value). The file is closed
    when this returns; the image holds no file handle.
    """
    p = Path(path)
    if reason := _stat_reason(p):
        raise UnreadableImage(p, reason)
    return _read(p, max_pixels)
