"""Tests for bnnkit.data.images: every file kind is built in tmp_path with Pillow and numpy."""

from __future__ import annotations

import gc
import io
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from bnnkit.data import images
from bnnkit.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    UnreadableImage,
    is_image_name,
    list_images,
    open_rgb,
    sniff_format,
)
from bnnkit.errors import BnnkitError


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _save(im: Image.Image, path: Path, **kwargs: object) -> Path:
    im.save(path, **kwargs)
    return path


def _refused(path: Path, **kwargs: int) -> str:
    with pytest.raises(UnreadableImage) as info:
        open_rgb(path, **kwargs)
    assert info.value.path == path
    assert str(path) in str(info.value)
    return info.value.reason


@pytest.fixture(autouse=True)
def _warnings_are_errors() -> object:
    # No PIL warning spam and no ResourceWarning from any test in this file.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
        gc.collect()


# ---------------------------------------------------------------- refusals


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert _refused(path) == "empty file (0 bytes)"


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("WEBP", ".webp"), ("BMP", ".bmp")],
)
def test_truncated_file_is_refused_not_half_grey(tmp_path: Path, fmt: str, suffix: str) -> None:
    full = _save(_noise(), tmp_path / f"full{suffix}", format=fmt)
    data = full.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    assert _refused(path) == f"truncated {fmt}"


def test_truncated_header(tmp_path: Path) -> None:
    data = _save(_noise(), tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:40])
    assert _refused(path) == "truncated JPEG header"
    path.write_bytes(data[:2])
    assert "truncated image header" in _refused(path)


def test_truncated_even_when_pillow_is_told_to_accept_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _save(_noise(), tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _refused(path) == "truncated JPEG"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_corrupt_pixel_data(tmp_path: Path) -> None:
    data = bytearray(_save(_noise(), tmp_path / "x.png").read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 400] = bytes(390)  # zeros inside the zlib stream
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    assert _refused(path).startswith("corrupt PNG data (OSError: broken data stream")


def test_corrupt_png_header_checksum(tmp_path: Path) -> None:
    data = bytearray(_save(_noise(), tmp_path / "x.png").read_bytes())
    data[20] = 0xFF  # height's top byte, CRC not updated
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    assert _refused(path) == "corrupt PNG header (IHDR checksum mismatch)"


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\njust some text\n")
    assert _refused(path) == "not an image (text file)"


def test_html_error_page_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "download.jpg"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    assert _refused(path) == "not an image (HTML page)"


def test_git_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "img.PNG"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    assert "Git LFS pointer" in _refused(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpeg"
    path.write_bytes(b"\x00\x9a" + np.random.default_rng(1).bytes(4096))
    reason = _refused(path)
    assert reason.startswith("not an image (unrecognised content"), reason
    assert "009a" in reason


def test_directory_and_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "looks_like.png"
    folder.mkdir()
    assert "directory" in _refused(folder)
    assert _refused(tmp_path / "gone.png") == "no such file"


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_noise(), tmp_path / "x.png")

    def deny(self: Path, *args: object, **kwargs: object) -> io.BufferedReader:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", deny)
    assert _refused(path) == "permission denied"


# ---------------------------------------------------------------- decompression bombs


def _png_claiming(path: Path, width: int, height: int) -> Path:
    data = bytearray(_save(_noise(8, 8), path).read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _no_pillow_open(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("Image.open must not be reached")

    monkeypatch.setattr(images.Image, "open", fail)


def test_enormous_png_header_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _png_claiming(tmp_path / "bomb.png", 40_000, 40_000)
    _no_pillow_open(monkeypatch)
    limit = DEFAULT_MAX_PIXELS
    assert _refused(path) == f"too large: 40000x40000 pixels exceeds the {limit}-pixel limit"


def test_small_max_pixels_on_normal_jpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_noise(48, 64), tmp_path / "x.jpg", exif=b"Exif\x00\x00" + bytes(100))
    assert open_rgb(path, max_pixels=64 * 48).size == (64, 48)
    _no_pillow_open(monkeypatch)
    assert _refused(path, max_pixels=1000) == (
        "too large: 64x48 pixels exceeds the 1000-pixel limit"
    )


def test_max_pixels_for_format_without_header_parser(tmp_path: Path) -> None:
    path = _save(_noise(48, 64), tmp_path / "x.tif")
    assert _refused(path, max_pixels=1000) == (
        "too large: 64x48 pixels exceeds the 1000-pixel limit"
    )


def test_pillow_bomb_warning_is_silenced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 64x48 = 3072 pixels: above Pillow's warning limit (2000), below its error limit (4000).
    path = _save(_noise(48, 64), tmp_path / "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert open_rgb(path).size == (64, 48)  # warnings are errors in this file
    assert Image.MAX_IMAGE_PIXELS == 2000  # not modified


def test_pillow_own_limit_still_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_noise(48, 64), tmp_path / "x.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    reason = _refused(path, max_pixels=10**9)
    assert reason == (
        "too large: 3072 pixels exceeds Pillow's 2000-pixel limit (PIL.Image.MAX_IMAGE_PIXELS)"
    )


# ---------------------------------------------------------------- formats and modes


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "real_png.jpg"), ("JPEG", "real_jpeg.PNG")])
def test_wrong_extension_reads_by_content(tmp_path: Path, fmt: str, name: str) -> None:
    src = Image.new("RGB", (20, 10), (200, 40, 10))
    path = _save(src, tmp_path / name, format=fmt, quality=95)
    assert sniff_format(path) == fmt
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (20, 10)
    assert np.abs(np.asarray(out, dtype=int) - (200, 40, 10)).max() <= 3


def test_returned_image_is_plain_and_loaded(tmp_path: Path) -> None:
    out = open_rgb(_save(_noise(), tmp_path / "x.png"))
    assert type(out) is Image.Image  # not an ImageFile holding a file handle
    assert getattr(out, "fp", None) is None
    assert np.array_equal(np.asarray(out), np.asarray(_noise()))


def test_cmyk_jpeg_adobe_inverted(tmp_path: Path) -> None:
    # Pillow writes CMYK JPEGs with an Adobe marker and inverted values, like Photoshop.
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK" and "adobe" in raw.info
    out = open_rgb(path)
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out, dtype=int) - (255, 0, 0)).max() <= 4


def test_16bit_greyscale_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    path = _save(Image.fromarray(ramp), tmp_path / "g16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    out = np.asarray(open_rgb(path))
    grey = out[..., 0].ravel()
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert grey[0] == 0 and grey[-1] == 255
    assert (np.diff(grey.astype(int)) >= 0).all()  # monotonic
    assert len(np.unique(grey)) > 200  # not clipped to {0, 255}


def test_32bit_int_and_float_tiff(tmp_path: Path) -> None:
    ints = (np.arange(16, dtype=np.int32).reshape(4, 4) * 4369).astype(np.int32)  # 0..65535
    floats = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    for name, arr in (("i.tif", ints), ("f.tif", floats)):
        out = np.asarray(open_rgb(_save(Image.fromarray(arr), tmp_path / name)))[..., 0].ravel()
        assert out[0] == 0 and out[-1] == 255 and (np.diff(out.astype(int)) > 0).all(), name


def test_greyscale_and_one_bit(tmp_path: Path) -> None:
    grey = open_rgb(_save(Image.new("L", (5, 4), 77), tmp_path / "l.png"))
    assert grey.mode == "RGB" and grey.size == (5, 4) and grey.getpixel((0, 0)) == (77, 77, 77)
    one = Image.new("1", (5, 4), 0)
    one.putpixel((1, 1), 1)
    out = open_rgb(_save(one, tmp_path / "b.png"))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    pal.putpixel((1, 1), 1)
    pal.putpixel((2, 2), 2)
    alpha = bytes([0, 255, 128] + [255] * 253)  # tRNS: index 0 transparent, 2 half
    path = _save(pal, tmp_path / "p.png", transparency=alpha)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = open_rgb(path)  # warnings are errors: no "should be converted to RGBA" spam
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (255, 0, 0)
    r, g, b = out.getpixel((2, 2))
    assert 120 <= r <= 135 and r == g and b == 255


def test_rgba_and_la_composited_onto_white(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (0, 0, 0, 0)
    arr[0, 1] = (0, 0, 0, 255)
    arr[1, 0] = (0, 0, 0, 128)
    arr[1, 1] = (10, 200, 30, 255)
    out = np.asarray(open_rgb(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png")))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (0, 0, 0)
    assert 120 <= out[1, 0, 0] <= 135
    assert tuple(out[1, 1]) == (10, 200, 30)
    la = open_rgb(_save(Image.new("LA", (3, 3), (0, 0)), tmp_path / "la.png"))
    assert la.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_first_frame(tmp_path: Path, fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / f"anim.{fmt.lower()}"
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(
        path, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra
    )
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 3
    out = open_rgb(path)
    assert out.size == (8, 8)
    assert np.abs(np.asarray(out, dtype=int) - (255, 0, 0)).max() <= 2


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = Image.new("RGB", (40, 20), (0, 0, 0))
    src.paste((255, 255, 255), (0, 0, 10, 20))  # white left band
    path = _save(src, tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = open_rgb(path)
    assert out.size == (20, 40)
    arr = np.asarray(out, dtype=int)
    assert arr[:10].mean() > 200 and arr[-10:].mean() < 50  # left band is now on top


def test_bmp_and_tiff(tmp_path: Path) -> None:
    for name in ("x.bmp", "x.tiff"):
        out = open_rgb(_save(_noise(), tmp_path / name))
        assert np.array_equal(np.asarray(out), np.asarray(_noise())), name


# ---------------------------------------------------------------- names, folders, sniffing


def test_is_image_name() -> None:
    assert is_image_name(Path("a/b/cls_adm_1.PNG"))
    assert is_image_name("n01440764_1.JPEG")
    assert is_image_name(Path("x.Tif"))
    assert not is_image_name(Path("notes.txt"))
    assert not is_image_name(Path("png"))
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"} == IMAGE_EXTENSIONS


def test_list_images(tmp_path: Path) -> None:
    (tmp_path / "ai" / "sub").mkdir(parents=True)
    (tmp_path / ".cache").mkdir()
    (tmp_path / "trap.png").mkdir()  # a folder with an image name
    for rel in [
        "ai/b_adm_1.PNG",
        "ai/a_biggan_2.png",
        "ai/sub/n0_1.JPEG",
        "top.jpg",
        "ai/.DS_Store",
        "ai/._b_adm_1.PNG",
        ".cache/hidden.png",
        "ai/readme.txt",
    ]:
        (tmp_path / rel).write_bytes(b"x")
    expected = [
        tmp_path / "ai" / "a_biggan_2.png",
        tmp_path / "ai" / "b_adm_1.PNG",
        tmp_path / "ai" / "sub" / "n0_1.JPEG",
        tmp_path / "top.jpg",
    ]
    assert list_images(tmp_path) == expected
    assert list_images(tmp_path / "ai", recursive=False) == expected[:2]
    (tmp_path / "ai" / "sub" / "loop").symlink_to(tmp_path / "ai")
    assert list_images(tmp_path) == expected  # symlink cycle followed at most once


def test_list_images_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(BnnkitError, match="no such folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(BnnkitError, match="not a folder"):
        list_images(tmp_path / "f.png")


@pytest.mark.parametrize(
    ("fmt", "save"),
    [
        ("PNG", lambda im, p: im.save(p, format="PNG")),
        ("JPEG", lambda im, p: im.save(p, format="JPEG")),
        ("GIF", lambda im, p: im.save(p, format="GIF")),
        ("WEBP", lambda im, p: im.save(p, format="WEBP")),
        ("BMP", lambda im, p: im.save(p, format="BMP")),
        ("TIFF", lambda im, p: im.save(p, format="TIFF")),
    ],
)
def test_sniff_format_by_content(
    tmp_path: Path, fmt: str, save: Callable[[Image.Image, Path], None]
) -> None:
    path = tmp_path / "misnamed.txt"
    save(_noise(8, 8), path)
    assert sniff_format(path) == fmt


def test_sniff_format_rejects_non_images(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_text("BMW is not a bitmap")
    assert sniff_format(path) is None
    path.write_bytes(b"")
    assert sniff_format(path) is None


def test_unreadable_image_error() -> None:
    err = UnreadableImage("a/b.png", "truncated PNG")
    assert isinstance(err, BnnkitError) and err.path == Path("a/b.png")
    again = pickle.loads(pickle.dumps(err))
    assert again.path == err.path and again.reason == "truncated PNG"
    assert str(again) == str(err) == f"{Path('a/b.png')}: truncated PNG"
