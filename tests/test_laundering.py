"""Laundering degradations: each operation against a direct PIL / numpy computation, the spec
syntax (values, grids, severity levels, the ``laundering`` set), the severity plot, and
``bnnkit evaluate --degrade laundering`` end to end on the tiny run."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from bnnkit.cli import main
from bnnkit.data import laundering
from bnnkit.data.degrade import Degradation, parse_degradations
from bnnkit.data.laundering import LAUNDERING, SEVERITIES
from bnnkit.errors import UsageError
from bnnkit.report.severity import severity_figure, sweeps

LAUNDERING_NAMES = [
    *(f"{kind}@{level}" for kind in ("jpeg", "webp", "blur", "noise", "resize")
      for level in range(1, 6)),
    "chain:95,0.75,80", "grayscale", "jpegblur:50,2",
]  # fmt: skip


def _image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus texture: JPEG/WebP/blur all change it, none trivially."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _decode(image: Image.Image, fmt: str, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


# -- the operations, pinned --------------------------------------------------------------------


def test_noise_is_the_documented_seeded_gaussian_clipped_on_the_unit_scale():
    image = _image()
    out = np.asarray(Degradation("noise", 0.05)(image))
    # The documented derivation: BLAKE2b-64 of b"WxH:MODE:" + pixels seeds numpy's generator.
    digest = hashlib.blake2b(b"64x48:RGB:" + image.tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    x = np.asarray(image, float) / 255 + 0.05 * rng.standard_normal((48, 64, 3))
    expected = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(out, expected)
    # Identical on re-evaluation; another image draws other noise.
    assert np.array_equal(out, np.asarray(Degradation("noise", 0.05)(image.copy())))
    other = _image(seed=1)
    assert laundering.pixel_seed(other) != laundering.pixel_seed(image)


def test_noise_has_the_requested_spread_and_sweep_levels_share_one_draw():
    grey = Image.new("RGB", (128, 128), (128, 128, 128))  # far from the clip at sigma 0.03
    d = np.asarray(Degradation("noise", 0.03)(grey), float) - 128
    assert abs(d.std() / 255 - 0.03) < 0.002 and abs(d.mean()) < 0.5
    d2 = np.asarray(Degradation("noise", 0.06)(grey), float) - 128
    assert np.corrcoef(d.ravel(), d2.ravel())[0, 1] > 0.99  # same pattern, scaled
    white = np.asarray(Degradation("noise", 0.5)(Image.new("RGB", (16, 16), (255,) * 3)))
    assert white.max() == 255 and white.min() < 255  # clipped above, noisy below


def test_webp_is_pillows_webp_round_trip():
    assert laundering.webp_available()  # this environment's Pillow has libwebp
    image = _image()
    out = Degradation("webp", 60)(image)
    assert out.mode == "RGB" and out.size == image.size
    assert np.array_equal(np.asarray(out), _decode(image, "WEBP", 60))
    assert not np.array_equal(np.asarray(out), np.asarray(image))


def test_webp_without_libwebp_is_a_clear_usage_error(monkeypatch):
    monkeypatch.setattr(laundering, "webp_available", lambda: False)
    monkeypatch.setattr("bnnkit.data.degrade.webp_available", lambda: False)
    with pytest.raises(UsageError) as info:
        parse_degradations("laundering")
    assert "without WebP support" in str(info.value)
    assert [d.name for d in parse_degradations("jpeg@1,grayscale")] == ["jpeg@1", "grayscale"]
    with pytest.raises(RuntimeError, match="WebP"):
        laundering.reencode(_image(), "WEBP", 50)


def test_grayscale_is_the_601_luma_in_three_channels():
    image = _image()
    out = np.asarray(Degradation("grayscale")(image)).astype(int)
    rgb = np.asarray(image).astype(int)
    luma = (19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 32768) >> 16
    assert np.array_equal(out, np.stack([luma] * 3, -1))
    assert Degradation("grayscale")(Image.new("L", (5, 5), 77)).mode == "RGB"


def test_chain_is_jpeg_then_downscale_then_jpeg_at_the_reduced_size():
    image = _image(80, 60)
    out = Degradation("chain", 90, (0.5, 70))(image)
    first = Image.fromarray(_decode(image, "JPEG", 90))
    small = first.resize((40, 30), Image.Resampling.BICUBIC)
    assert out.size == (40, 30)
    assert np.array_equal(np.asarray(out), _decode(small, "JPEG", 70))
    # scale 1: two JPEGs, no resize
    same = Degradation("chain", 90, (1.0, 70))(image)
    assert np.array_equal(np.asarray(same), _decode(first, "JPEG", 70))
    assert Degradation("chain", 90, (0.01, 70))(image).size == (1, 1)  # at least 1 px


def test_jpegblur_is_blur_then_jpeg():
    from torchvision.transforms.v2 import functional as F

    image = _image()
    out = Degradation("jpegblur", 50, (2.0,))(image)
    blurred = F.gaussian_blur(image, kernel_size=[13, 13], sigma=[2.0, 2.0])  # 2*ceil(3*2)+1
    assert np.array_equal(np.asarray(out), _decode(blurred, "JPEG", 50))
    composed = Degradation("jpeg", 50)(Degradation("blur", 2)(image))
    assert np.array_equal(np.asarray(out), np.asarray(composed))


def test_every_laundering_degradation_is_deterministic_picklable_and_rgb():
    image = _image()
    for d in parse_degradations("laundering"):
        assert pickle.loads(pickle.dumps(d)) == d
        a, b = d(image), d(image.copy())
        assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), d.name


# -- syntax --------------------------------------------------------------------------------------


def test_multi_value_kinds_take_their_values_after_commas_and_round_trip():
    degs = parse_degradations("jpeg:65,chain:95,0.75,80,blur:3,jpegblur:50,2,grayscale")
    assert [d.name for d in degs] == [
        "jpeg:65", "chain:95,0.75,80", "blur:3", "jpegblur:50,2", "grayscale"
    ]  # fmt: skip
    assert degs[1] == Degradation("chain", 95.0, (0.75, 80.0))
    assert degs[4] == Degradation("grayscale") and degs[4].values == ()
    assert [d.name for d in parse_degradations([d.name for d in degs])] == [d.name for d in degs]


def test_slash_alternatives_expand_to_the_grid_first_value_slowest():
    names = [d.name for d in parse_degradations("jpegblur:30/50/70,1/2")]
    assert names == ["jpegblur:30,1", "jpegblur:30,2", "jpegblur:50,1", "jpegblur:50,2",
                     "jpegblur:70,1", "jpegblur:70,2"]  # fmt: skip
    assert [d.name for d in parse_degradations("jpeg:95/90/50/30")] == [
        "jpeg:95", "jpeg:90", "jpeg:50", "jpeg:30"
    ]  # fmt: skip
    assert len(parse_degradations("chain:90/95,0.5/0.75,70/80")) == 8


def test_severity_levels_follow_the_documented_table():
    assert SEVERITIES["jpeg"] == (95, 85, 70, 50, 30)
    assert SEVERITIES["blur"] == (1, 2, 3, 4, 5)
    assert SEVERITIES["noise"] == (0.015, 0.03, 0.045, 0.06, 0.075)
    assert SEVERITIES["resize"] == (224, 160, 112, 80, 64)
    assert SEVERITIES["webp"] == (95, 85, 70, 50, 30)
    degs = parse_degradations("jpeg@1-5")
    assert [d.name for d in degs] == [f"jpeg@{i}" for i in range(1, 6)]
    assert [d.value for d in degs] == [95, 85, 70, 50, 30]
    assert [d.severity for d in degs] == [1, 2, 3, 4, 5]
    assert [d.name for d in parse_degradations("noise@2/4-5,blur@3")] == [
        "noise@2", "noise@4", "noise@5", "blur@3"
    ]  # fmt: skip
    # a level does the same as its value given directly
    image = _image()
    assert np.array_equal(np.asarray(parse_degradations("jpeg@3")[0](image)),
                          np.asarray(Degradation("jpeg", 70)(image)))  # fmt: skip
    record = parse_degradations("noise@2")[0].record()
    assert record == {"kind": "noise", "value": 0.03, "values": [0.03], "severity": 2,
                      "description": "severity 2 of 5: Gaussian noise, sigma 0.03 on the 0-1 "
                                     "scale, clipped"}  # fmt: skip


def test_laundering_is_the_documented_set_with_stable_names():
    degs = parse_degradations("laundering")
    assert [d.name for d in degs] == LAUNDERING_NAMES
    assert [d.name for d in parse_degradations(LAUNDERING)] == LAUNDERING_NAMES
    assert len(parse_degradations("laundering,genimage,jpeg@1")) == 28 + 6  # no duplicates


# -- the severity plot -----------------------------------------------------------------------


def _condition(acc: float, caught: float, coverage: float) -> dict:
    stats = {"errors_caught_rate": caught, "coverage": coverage}
    return {
        "average_accuracy": {"all": acc},
        "abstention": {"score": "entropy", "by_score": {"entropy": {
            "seen": {"coverage": coverage, "errors_caught_rate": 0.0},
            "unseen_combined": stats}}},
    }  # fmt: skip


def test_severity_figure_plots_accuracy_catch_rate_and_coverage_per_kind():
    metrics = {"ood_generators": ["midjourney"], "coverage_target": 0.95,
               **_condition(0.9, 0.5, 0.96)}  # fmt: skip
    degs = {"jpeg:65": {"kind": "jpeg", "severity": None, **_condition(0.1, 0.1, 0.1)}}
    for level in (3, 1, 2):  # out of order: the plot sorts by severity
        degs[f"jpeg@{level}"] = {
            "kind": "jpeg",
            "severity": level,
            **_condition(0.9 - 0.1 * level, 0.5 + 0.1 * level, 0.9),
        }
        degs[f"noise@{level}"] = {"kind": "noise", "severity": level,
                                  **_condition(0.8, 0.4, 0.9 - 0.05 * level)}  # fmt: skip
    metrics["degradations"] = degs
    assert list(sweeps(metrics)) == ["jpeg", "noise"]
    fig = severity_figure(metrics)
    acc, caught, coverage = fig.axes
    for ax in fig.axes:
        assert ax.get_xlabel() == "severity" and ax.get_ylabel() and ax.get_title()
    jpeg = {line.get_label(): line for line in acc.get_lines()}["jpeg"]
    assert list(jpeg.get_xdata()) == [0, 1, 2, 3]  # clean at 0; jpeg:65 is not a sweep
    assert np.allclose(jpeg.get_ydata(), [0.9, 0.8, 0.7, 0.6])
    jpeg_caught = {line.get_label(): line for line in caught.get_lines()}["jpeg"]
    assert np.allclose(jpeg_caught.get_ydata(), [0.5, 0.6, 0.7, 0.8])
    noise_cov = {line.get_label(): line for line in coverage.get_lines()}["noise"]
    assert np.allclose(noise_cov.get_ydata(), [0.96, 0.85, 0.8, 0.75])
    assert "unseen" in caught.get_ylabel()
    assert sweeps({"degradations": {"jpeg:65": degs["jpeg:65"]}}) == {}


def test_degradation_figure_stacks_its_panels_for_many_conditions():
    from bnnkit.report.plots import degradation_figure

    group = {"accuracy": 0.5, "epistemic_uncertainty": 0.01}
    degs = {d.name: {"seen": group, "unseen": group} for d in parse_degradations("laundering")}
    metrics = {"seen": group, "unseen": group, "degradations": degs}
    acc, unc = degradation_figure(metrics).axes
    assert acc.get_position().y0 > unc.get_position().y1  # one above the other
    assert [t.get_text() for t in acc.get_xticklabels()] == ["clean", *LAUNDERING_NAMES]
    few = {**metrics, "degradations": dict(list(metrics["degradations"].items())[:6])}
    acc, unc = degradation_figure(few).axes
    assert acc.get_position().x1 < unc.get_position().x0  # side by side, as before


@pytest.mark.parametrize("doc", ["README.md", "docs/metrics-schema.md"])
def test_documented_severity_tables_match_the_code(doc):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    rows = {
        "jpeg": r"\| `jpeg`, `webp`: quality \|", "webp": r"\| `jpeg`, `webp`: quality \|",
        "blur": r"\| `blur`: sigma \(px\) \|", "noise": r"\| `noise`: sigma \(0-1 scale\) \|",
        "resize": r"\| `resize`: shorter side \(px\) \|",
    }  # fmt: skip
    for kind, head in rows.items():
        match = re.search(head + r"(.*)\|\s*$", text, re.M)
        assert match, (doc, kind)
        values = tuple(float(v) for v in match.group(1).split("|"))
        assert values == tuple(float(v) for v in SEVERITIES[kind]), (doc, kind)
    assert "jpegblur:50,2" in text and "chain:95,0.75,80" in text


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow  # the real 28-condition set: ~30 s on 2 idle cores, ~55 s on busy ones
def test_evaluate_laundering_writes_every_key_and_the_severity_plot(runner, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    t0 = time.perf_counter()
    result = runner.invoke(main, ["evaluate", str(run), "--ood", "midjourney", "-k", "2",
                                  "--degrade", "laundering"])  # fmt: skip
    seconds = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    print(f"evaluate --degrade laundering on the tiny run: {seconds:.1f} s")
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["degradations"]) == LAUNDERING_NAMES
    noise = metrics["degradations"]["noise@4"]
    assert (noise["kind"], noise["value"], noise["severity"]) == ("noise", 0.06, 4)
    assert metrics["degradations"]["grayscale"]["value"] is None
    assert metrics["degradations"]["chain:95,0.75,80"]["values"] == [95, 0.75, 80]
    for entry in metrics["degradations"].values():
        assert entry["abstention"]["by_score"]  # the clean threshold applied to each
    for name in ("severity.png", "degradations.png"):
        with Image.open(run / "plots" / name) as im:
            assert im.format == "PNG" and im.width >= 500
    assert "](plots/severity.png)" in (run / "report.md").read_text()
