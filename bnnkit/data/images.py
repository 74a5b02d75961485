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
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from bnnkit.data.pixels import apply_orientation, to_rgb
from bnnkit.data.sniff import (
    SNIFF_BYTES,
    CorruptHeader,
    describe_non_image,
    header_size,
    riff_truncated,
    sniff_bytes,
    sniff_format,
)
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


# --------------------------------------------------------------------------------------------
# Header dimensions (read before Pillow decodes anything)


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


# --------------------------------------------------------------------------------------------
# Reading


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


def _read(path: Path, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
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
            head = fh.read(SNIFF_BYTES)
        except OSError as exc:
            raise UnreadableImage(path, f"read error: {exc.strerror or exc}") from None
        if not head:
            raise UnreadableImage(path, "empty file (0 bytes)")
        fmt = sniff_bytes(head)
        if fmt is None:
            raise UnreadableImage(path, describe_non_image(head))

        # Bomb guard from the raw header, before Pillow parses or allocates anything.
        try:
            size = header_size(fmt, head, fh)
        except CorruptHeader as exc:
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
                if draft is not None and fmt == "JPEG":
                    im.draft(im.mode, draft)  # DCT-domain downscale, never below ``draft``
                im.load()  # full decode now: truncation must fail here, not later
                oriented = apply_orientation(im)
                rgb = to_rgb(oriented)
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
            if fmt == "WEBP" and riff_truncated(head, fh):
                reason = "truncated WEBP"  # libwebp refuses it at open: "corrupt header"
            raise UnreadableImage(path, reason) from None


def open_rgb(
    path: os.PathLike[str] | str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Open an image file as a fully decoded 8-bit RGB image, or raise :class:`UnreadableImage`.

    The format is taken from the content, not the extension. EXIF orientation is applied; an
    animated file gives its first frame; transparency is composited onto white; 16-bit and float
    images are scaled (not clipped) to 8 bit. Images whose header claims more than ``max_pixels``
    pixels are refused before decoding (Pillow's own limit, ``PIL.Image.MAX_IMAGE_PIXELS``, still
    applies on top: raise it yourself to accept more than twice its value). The file is closed
    when this returns; the image holds no file handle. ``draft=(w, h)`` lets a JPEG decode at
    1/2, 1/4 or 1/8 scale while staying at least ``w`` x ``h`` (for a resize that follows; off
    by default, as the pixels then differ slightly from a full decode's).
    """
    p = Path(path)
    if reason := _stat_reason(p):
        raise UnreadableImage(p, reason)
    return _read(p, max_pixels, draft)
