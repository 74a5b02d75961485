"""GenImage's degradation protocol: spec parsing and what each degradation does to pixels."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
from PIL import Image

from bnnkit.data.degrade import GENIMAGE_PROTOCOL, Degradation, parse_degradations
from bnnkit.errors import UsageError


def _noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _mse(a: Image.Image, b: Image.Image) -> float:
    return float(((np.asarray(a, float) - np.asarray(b, float)) ** 2).mean())


# -- parsing -----------------------------------------------------------------------------------


def test_parse_comma_list_repeats_and_canonical_names():
    degs = parse_degradations(["jpeg:65,blur:3", " JPEG:65.0 , resize:112", "blur:2.5"])
    assert [d.name for d in degs] == ["jpeg:65", "blur:3", "resize:112", "blur:2.5"]
    assert degs[0] == Degradation("jpeg", 65.0)
    assert parse_degradations(None) == [] and parse_degradations("") == []


def test_genimage_shorthand_is_the_papers_six():
    names = [d.name for d in parse_degradations("genimage")]
    assert names == GENIMAGE_PROTOCOL.split(",")
    assert names == ["jpeg:65", "jpeg:30", "blur:3", "blur:5", "resize:112", "resize:64"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("jpg:65", "did you mean 'jpeg'"),
        ("jpeg", "needs a value"),
        ("jpeg:", "needs a value"),
        ("jpeg:high", "not a number"),
        ("jpeg:0", "integer from 1 to 100"),
        ("jpeg:101", "integer from 1 to 100"),
        ("jpeg:65.5", "integer from 1 to 100"),
        ("blur:0", "number > 0"),
        ("blur:-1", "number > 0"),
        ("blur:nan", "number > 0"),
        ("blur:51", "<= 50"),
        ("resize:4", "integer from 8"),
        # the laundering kinds, severities and named sets
        ("grayscale:1", "takes no value"),
        ("chain:95,0.75", "takes 3 values: chain:Q1,SCALE,Q2"),
        ("jpeg:65,70", "takes 1 value: jpeg:QUALITY"),
        ("chain:95,1.5,80", "scale, a number > 0 and <= 1"),
        ("chain:95,0.5,0", "integer from 1 to 100"),
        ("jpegblur:50", "takes 2 values"),
        ("jpegblur:50,0", "number > 0"),
        ("noise:0", "noise sigma on the 0-1 scale"),
        ("noise:1.5", "<= 1"),
        ("webp:101", "integer from 1 to 100"),
        ("jpeg:50/", "'' is not a number"),
        ("jpeg@0", "a level from 1 to 5"),
        ("jpeg@6", "a level from 1 to 5"),
        ("jpeg@3-2", "a level from 1 to 5"),
        ("jpeg@1,3", "a range such as 1-5"),
        ("jpeg@high", "a level from 1 to 5"),
        ("chain@2", "has no severity levels"),
        ("nois@2", "did you mean 'noise'"),
        ("laundring", "did you mean 'laundering'"),
        ("sharpen:2", "known: jpeg, blur, resize, noise, webp, grayscale, chain, jpegblur"),
    ],
)
def test_bad_specs_are_usage_errors(spec, message):
    with pytest.raises(UsageError) as info:
        parse_degradations(f"jpeg:65,{spec}")
    assert message in str(info.value)
    assert repr(spec) in info.value.message  # names the offending item


def test_degradation_is_picklable_for_dataloader_workers():
    d = parse_degradations("blur:2.5")[0]
    assert pickle.loads(pickle.dumps(d)) == d
    assert "sigma 2.5" in d.describe()


# -- JPEG ----------------------------------------------------------------------------------------


def test_jpeg_reencodes_deterministically_and_lower_quality_loses_more():
    image = _noise_image()
    q65, q30 = Degradation("jpeg", 65)(image), Degradation("jpeg", 30)(image)
    assert q65.mode == "RGB" and q65.size == image.size
    assert np.array_equal(np.asarray(q65), np.asarray(Degradation("jpeg", 65)(image)))
    assert 0 < _mse(image, q65) < _mse(image, q30)
    # Exactly what a JPEG file written by Pillow at that quality decodes to.
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=65)
    assert np.array_equal(np.asarray(q65), np.asarray(Image.open(buf).convert("RGB")))


# -- blur ----------------------------------------------------------------------------------------


def test_blur_keeps_a_constant_image_and_follows_the_gaussian_edge_profile():
    flat = Image.new("RGB", (40, 30), (90, 120, 200))
    assert np.array_equal(np.asarray(Degradation("blur", 3)(flat)), np.asarray(flat))

    sigma = 3.0
    step = np.zeros((30, 40, 3), np.uint8)
    step[:, 20:] = 240
    out = np.asarray(Degradation("blur", sigma)(Image.fromarray(step)), float)[15, :, 0]
    # A step blurred by a Gaussian of std sigma rises like its CDF: at d pixels from the edge
    # the value is 240 * P(K <= d) for the sampled, normalised kernel K on -3s..3s.
    half = math.ceil(3 * sigma)
    ks = np.arange(-half, half + 1)
    w = np.exp(-(ks**2) / (2 * sigma**2))
    w /= w.sum()
    for col in range(14, 27):
        expected = 240 * w[ks <= col - 20].sum()
        assert abs(out[col] - expected) <= 1.0, (col, out[col], expected)
    # Half the way up the edge at the edge, not a box blur's linear ramp of a wrong width.
    assert out[0] == 0 and out[-1] == 240


def test_stronger_blur_removes_more_detail_and_tiny_images_still_work():
    image = _noise_image()
    s3, s5 = Degradation("blur", 3)(image), Degradation("blur", 5)(image)
    assert np.asarray(s5, float).std() < np.asarray(s3, float).std() < np.asarray(image).std()
    tiny = _noise_image(6, 5)
    assert Degradation("blur", 5)(tiny).size == (6, 5)  # kernel cut to fit reflect padding


# -- low resolution ------------------------------------------------------------------------------


def test_resize_lowers_resolution_but_keeps_the_size():
    checker = np.indices((48, 64)).sum(0) % 2 * 255  # finest detail: gone at a lower resolution
    image = Image.fromarray(np.stack([checker] * 3, -1).astype(np.uint8))
    out = Degradation("resize", 24)(image)
    assert out.size == image.size and out.mode == "RGB"
    arr = np.asarray(out, float)
    assert abs(arr.mean() - 127.5) < 3 and arr.std() < 10  # flattened to mid-grey

    smooth = np.tile(np.linspace(0, 255, 64), (48, 1))
    smooth_img = Image.fromarray(np.stack([smooth] * 3, -1).astype(np.uint8))
    assert _mse(smooth_img, Degradation("resize", 24)(smooth_img)) < 4.0  # a ramp survives


def test_resize_leaves_images_already_at_most_that_small():
    image = _noise_image(100, 80)
    assert np.array_equal(np.asarray(Degradation("resize", 80)(image)), np.asarray(image))
    assert not np.array_equal(np.asarray(Degradation("resize", 64)(image)), np.asarray(image))


def test_non_rgb_input_is_converted():
    grey = Image.new("L", (20, 20), 128)
    for d in parse_degradations("jpeg:30,blur:1,resize:10"):
        assert d(grey).mode == "RGB"
