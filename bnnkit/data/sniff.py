"""Image formats by content: magic bytes, header dimensions and what a non-image file is.

Used by :mod:`bnnkit.data.images` before any pixel is decoded (GenImage has ``.PNG`` files that
are JPEGs inside; a decompression bomb is refused from its header size alone).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import IO

# Formats recognised by content; the names are Pillow's format identifiers.
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SNIFF_BYTES = 64

# JPEG start-of-frame markers (C4 = DHT, C8 = reserved, CC = DAC are not frames).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


class CorruptHeader(Exception):
    """Raised by the header readers; the message is the reason."""


def sniff_bytes(head: bytes) -> str | None:
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
        return sniff_bytes(fh.read(SNIFF_BYTES))


def describe_non_image(head: bytes) -> str:
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


def header_size(fmt: str, head: bytes, fh: IO[bytes]) -> tuple[int, int] | None:
    """(width, height) as claimed by the file header, or None where not cheaply known."""
    try:
        if fmt == "PNG":
            if head[12:16] != b"IHDR" or len(head) < 33:
                return None  # Pillow will report the broken header
            if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
                raise CorruptHeader("corrupt PNG header (IHDR checksum mismatch)")
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


def riff_truncated(head: bytes, fh: IO[bytes]) -> bool:
    """Whether a RIFF (WebP) file is shorter than its header says."""
    try:
        declared = struct.unpack("<I", head[4:8])[0] + 8
        return os.fstat(fh.fileno()).st_size < declared
    except (OSError, struct.error, ValueError):
        return False
