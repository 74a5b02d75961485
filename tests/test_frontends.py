"""Frontends (``[model.frontend]``, plugin kind ``frontend``): each built-in pinned against a hand
computation (numpy/scipy), the deprecated ``model.input_filter`` alias and the checkpoints made
with it, channel counts reaching the backbone, the feature-cache identity, and a third-party
frontend trained through the CLI."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import torch
from helpers import QUICKSTART, invoke, tiny_overrides
from torch import nn
from torch.nn import functional as F

from bnnkit import hookimpl, plugins
from bnnkit.testing import registered

pytestmark = pytest.mark.usefixtures("one_thread")
BUILTINS = ["dct", "fft", "laplacian", "none", "npr", "srm"]


def _frontend(name: str, **options):
    from bnnkit.model.frontend import make_frontend

    return make_frontend(name, options)


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _run(name: str, x: torch.Tensor, **options) -> np.ndarray:
    with torch.no_grad():
        return _frontend(name, **options)(x).double().numpy()


def _correlate(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``out[i, j] = sum_uv kernel[u, v] * xpad[i + u, j + v]`` with reflect padding (what a
    convolution layer computes), by explicit loops over the kernel's taps."""
    r = kernel.shape[0] // 2
    padded = np.pad(x, r, mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    for u in range(kernel.shape[0]):
        for v in range(kernel.shape[1]):
            out += kernel[u, v] * padded[u : u + x.shape[0], v : v + x.shape[1]]
    return out


def test_plugins_kind_frontend_lists_the_six_builtins(runner):
    from bnnkit import __version__
    from bnnkit.cli import main

    plugins.reset_registry()
    result = runner.invoke(main, ["plugins", "--kind", "frontend", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["plugins"]
    assert sorted(r["name"] for r in rows) == BUILTINS
    assert {(r["kind"], r["package"], r["version"]) for r in rows} == {
        ("frontend", "bnnkit", __version__)
    }
    options = {r["name"]: r["options"] for r in rows}
    assert options["srm"] == {"channels": "sum", "learnable": False}
    assert options["npr"] == {"scale": pytest.approx(2 / 3)}
    table = runner.invoke(main, ["plugins", "--kind", "frontend"])
    assert table.exit_code == 0 and "frontend 'dct' options" in table.output


def test_none_is_the_identity():
    x = _image(2, 3, 9, 7)
    assert torch.equal(_frontend("none")(x), x)


class _LaplacianBefore(nn.Module):
    """``bnnkit.model.detector.LaplacianFilter`` as it was before frontends (``input_filter``)."""

    def __init__(self) -> None:
        super().__init__()
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("kernel", kernel.view(1, 1, 3, 3), persistent=False)

    def forward(self, images):
        c = images.shape[1]
        kernel = self.kernel.expand(c, 1, 3, 3).to(images.dtype)
        return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), kernel, groups=c)


def test_laplacian_matches_a_hand_convolution_and_the_old_input_filter():
    x = _image(2, 3, 10, 7)
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    ref = np.stack([[_correlate(img[c], kernel) for c in range(3)] for img in x.double().numpy()])
    np.testing.assert_allclose(_run("laplacian", x), ref, atol=1e-5)
    assert torch.equal(_frontend("laplacian")(x), _LaplacianBefore()(x))  # bit for bit
    assert _frontend("laplacian").state_dict() == {}  # nothing saved, as before


@pytest.mark.parametrize("size", [(8, 6), (7, 5), (6, 9)])
def test_npr_is_each_pixel_minus_its_cells_top_left_pixel(size):
    x = _image(2, 3, *size)
    h, w = size
    a = x.double().numpy()
    rows, cols = 2 * (np.arange(h) // 2), 2 * (np.arange(w) // 2)
    ref = (a - a[:, :, rows][:, :, :, cols]) * 2 / 3  # explicit slicing, any size
    out = _run("npr", x)
    assert out.shape == a.shape
    np.testing.assert_allclose(out, ref, atol=1e-6)
    if h % 2:  # the lone last row: horizontal residual only
        np.testing.assert_allclose(out[..., -1, :], (a[..., -1, :] - a[..., -1, cols]) * 2 / 3,
                                   atol=1e-6)  # fmt: skip
    if h % 2 == 0 and w % 2 == 0:  # NPR's own formula, where it applies
        t = x.double()
        down = F.interpolate(t, scale_factor=0.5, mode="nearest")
        npr = t - F.interpolate(down, scale_factor=2.0, mode="nearest")
        np.testing.assert_allclose(out, (npr * 2 / 3).numpy(), atol=1e-6)
    np.testing.assert_allclose(_run("npr", x, scale=1.0), ref * 1.5, atol=1e-6)


#: Fridrich & Kodovsky's kernels as Zhou et al. (2018) use them, integer taps and normalisation
SRM = [
    (np.array([[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0],
               [0, 0, 0, 0, 0]]), 4),
    (np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
               [-1, 2, -2, 2, -1]]), 12),
    (np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0],
               [0, 0, 0, 0, 0]]), 2),
]  # fmt: skip


def test_srm_kernels_and_both_channel_layouts_match_hand_convolutions():
    from bnnkit_plugins.frontend_srm import srm_kernels

    for (taps, q), kernel in zip(SRM, srm_kernels().double().numpy(), strict=True):
        np.testing.assert_allclose(kernel, taps / q)
        assert taps.sum() == 0 and -taps[2, 2] == q  # high-pass; q = the central tap
    x = _image(2, 3, 11, 9)
    a = x.double().numpy()
    # (B, kernel, colour, H, W)
    per = np.array(
        [[[_correlate(img[c], taps / q) for c in range(3)] for taps, q in SRM] for img in a]
    )
    summed, separate = _run("srm", x), _run("srm", x, channels="separate")
    assert summed.shape == (2, 3, 11, 9) and separate.shape == (2, 9, 11, 9)
    np.testing.assert_allclose(summed, per.sum(axis=2), atol=1e-5)
    np.testing.assert_allclose(separate, per.reshape(2, 9, 11, 9), atol=1e-5)  # 3k + c
    learnable = _frontend("srm", learnable=True)
    assert list(learnable.state_dict()) == ["weight"] and learnable.weight.requires_grad
    np.testing.assert_allclose(_run("srm", x, learnable=True), summed, atol=1e-6)


@pytest.mark.parametrize("size", [(16, 24), (13, 10)])
def test_dct_is_the_log_magnitude_orthonormal_dct_of_8x8_blocks(size):
    from scipy.fft import dctn

    eps = 1e-4
    x = _image(2, 3, *size)
    h, w = size
    a = np.pad(x.double().numpy(), ((0, 0), (0, 0), (0, -h % 8), (0, -w % 8)), mode="edge")
    ref = np.empty_like(a)
    for i in range(0, a.shape[2], 8):
        for j in range(0, a.shape[3], 8):
            block = a[:, :, i : i + 8, j : j + 8]
            ref[:, :, i : i + 8, j : j + 8] = dctn(block, type=2, norm="ortho", axes=(2, 3))
    out = _run("dct", x)
    assert out.shape == (2, 3, h, w)
    np.testing.assert_allclose(out, np.log(np.abs(ref[:, :, :h, :w]) + eps), atol=1e-4)
    np.testing.assert_allclose(np.exp(_run("dct", x, block=4, eps=1.0))[0, 0, :4, :4],
                               np.abs(dctn(x[0, 0, :4, :4].double().numpy(), norm="ortho")) + 1,
                               rtol=1e-5)  # fmt: skip


def test_fft_is_the_centred_log_magnitude_spectrum():
    x = _image(2, 3, 12, 9)
    spectrum = np.fft.fftshift(np.fft.fft2(x.double().numpy(), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(_run("fft", x), np.log(np.abs(spectrum) + 1e-4), atol=1e-4)
    flat = torch.ones(1, 1, 12, 9)  # all energy at zero frequency: the centre (6, 4)
    peak = _frontend("fft", eps=1e-6)(flat)[0, 0]
    assert divmod(int(peak.argmax()), 9) == (6, 4)


OLD_RECIPE = """
name = "old"

[model]
input_filter = "{value}"

[model.backbone]
name = "test_resnet"
"""


def test_input_filter_is_a_deprecated_alias_of_the_frontend(tmp_path):
    from bnnkit.errors import RecipeError
    from bnnkit.recipe import load_recipe, load_run_recipe

    for value in ("laplacian", "none"):
        path = tmp_path / f"{value}.toml"
        path.write_text(OLD_RECIPE.format(value=value))
        with pytest.warns(FutureWarning, match=f'\\[model.frontend\\] name = "{value}"'):
            recipe = load_recipe(path)
        assert recipe.model.frontend.name == value
        assert "input_filter" not in recipe.to_dict()["model"]  # a new run records the frontend
    with pytest.raises(RecipeError, match="both given"):
        load_recipe(path, ['model.input_filter="laplacian"', 'model.frontend={name="npr"}'])
    with pytest.raises(RecipeError, match="model.input_filter"):
        load_recipe(path, ['model.input_filter="sobel"'])
    # an old run's recipe.toml is read as its frontend silently (not the user's to edit)
    run_recipe = tmp_path / "run" / "recipe.toml"
    run_recipe.parent.mkdir()
    run_recipe.write_text(OLD_RECIPE.format(value="laplacian"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert load_run_recipe(run_recipe).model.frontend.name == "laplacian"


def _build(*sets: str, seed: int = 0, old_style: bool = False):
    import tomllib

    from bnnkit.model.detector import build_detector
    from bnnkit.overrides import apply_overrides
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import validate

    raw = tomllib.loads(QUICKSTART.read_text())
    if old_style:  # as the quickstart was written before frontends
        raw["model"]["input_filter"] = raw["model"].pop("frontend")["name"]
    apply_overrides(raw, list(sets))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        recipe = validate(raw, get_registry())
    assert recipe.model.frontend.name == "laplacian" or not old_style
    torch.manual_seed(seed)
    return build_detector(recipe.model, recipe.head_name(get_registry()), get_registry()).eval()


class _DetectorBefore(nn.Module):
    """The module tree of a detector from before frontends: ``input_filter`` (a Laplacian with
    a non-persistent kernel), backbone, attention, head, standardiser."""

    def __init__(self, new) -> None:
        super().__init__()
        self.input_filter = _LaplacianBefore()
        self.backbone, self.attention, self.head = new.backbone, new.attention, new.head
        self.standardiser = new.standardiser

    def forward(self, x):
        fmap = self.attention(self.backbone(self.input_filter(x)))
        return self.head(self.standardiser(fmap.mean(dim=(2, 3))))


def test_a_checkpoint_made_with_input_filter_loads_and_predicts_the_same(tmp_path):
    from safetensors.torch import load_model, save_model

    old = _DetectorBefore(_build(seed=1))  # the quickstart's laplacian, other weights
    with torch.no_grad():
        old.standardiser.mean.normal_()
    save_model(old, str(tmp_path / "model.safetensors"))  # what a run from before saved
    new = _build(seed=2, old_style=True)  # the quickstart with model.input_filter = "laplacian"
    assert sorted(new.state_dict()) == sorted(old.state_dict())  # no frontend.* keys
    load_model(new, str(tmp_path / "model.safetensors"), strict=True)  # load_checkpoint's
    x = _image(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(3)  # the bbb head samples its weights per call
        logits = old(x)
        torch.manual_seed(3)
        assert torch.equal(new(x), logits)


def test_channel_counts_reach_the_backbone_and_a_3_channel_backbone_says_so():
    from bnnkit.model.detector import build_detector
    from bnnkit.recipe import load_recipe

    detector = _build('model.frontend={name="srm", channels="separate"}')
    assert detector.backbone.model.conv1[0].in_channels == 9
    assert detector(_image(2, 3, 32, 32)).shape == (2, 2)

    class Plain(nn.Module):
        out_channels = 4

        def forward(self, x):
            return x[:, :1].expand(-1, 4, -1, -1)

    module = types.ModuleType("plain_backbone")
    module.register_backbones = hookimpl(
        lambda register: register("plain3", lambda name, *, pretrained: Plain())
    )
    with registered(module) as registry:
        sets = [
            'model.backbone={name="plain3"}',
            'model.frontend={name="srm", channels="separate"}',
        ]
        recipe = load_recipe(QUICKSTART, sets)
        with pytest.raises(ValueError, match="gives 9 channels.*takes no in_chans"):
            build_detector(recipe.model, recipe.head_name(registry), registry)
        recipe = load_recipe(QUICKSTART, ['model.backbone={name="plain3"}'])
        assert build_detector(recipe.model, recipe.head_name(registry), registry).frontend_name


def test_the_cache_identity_holds_name_options_and_learned_tensors():
    keys = {fe: _build(f"model.frontend={fe}").input_filter_name
            for fe in ('{name="none"}', '{name="laplacian"}', '{name="npr"}',
                       '{name="npr", scale=1.0}', '{name="srm"}', '{name="dct"}',
                       '{name="dct", block=4}', '{name="fft"}')}  # fmt: skip
    assert keys['{name="none"}'] == "none" and keys['{name="laplacian"}'] == "laplacian"
    assert len(set(keys.values())) == len(keys)  # every name and option keys apart
    learnable = _build('model.frontend={name="srm", learnable=true}')
    before = learnable.input_filter_name
    assert (
        before != keys['{name="srm"}']
        and before == _build('model.frontend={name="srm", learnable=true}').input_filter_name
    )
    with torch.no_grad():
        learnable.frontend.weight.mul_(2)
    assert learnable.input_filter_name != before  # trained kernels: new features


def _third_party_frontend() -> types.ModuleType:
    """A plugin module as a third-party package would write it: a learnable per-channel gain."""
    from bnnkit.options import Field, PluginOptions

    module = types.ModuleType("gain_frontend")

    class Gain(nn.Module):
        class Options(PluginOptions):
            init: float = Field(1.0, gt=0, description="initial gain")

        def __init__(self, in_channels: int, **options) -> None:
            super().__init__()
            o = self.Options.parse(options, "model.frontend", owner="frontend 'gain'")
            self.gain = nn.Parameter(torch.full((in_channels, 1, 1), o.init))
            self.out_channels = in_channels

        def forward(self, x):
            return x * self.gain

    @hookimpl
    def register_frontends(register):
        register("gain", Gain, summary="a learnable gain per channel")

    module.register_frontends = register_frontends
    return module


def test_a_third_party_frontend_trains_and_is_saved_with_the_detector(synth_root, tmp_path):
    from safetensors.torch import load_file

    from bnnkit.run.checkpoint import model_path

    with registered(_third_party_frontend()):
        listed = json.loads(invoke(["plugins", "--kind", "frontend", "--json"]))["plugins"]
        assert {r["name"] for r in listed} == {*BUILTINS, "gain"}
        sets = {"model.frontend": '{name = "gain", init = 0.5}'}
        invoke(["train", QUICKSTART, "--runs-dir", tmp_path, "-q",
                *tiny_overrides(synth_root, **sets)])  # fmt: skip
        (run,) = tmp_path.iterdir()
        assert 'name = "gain"' in (run / "recipe.toml").read_text()
        weights = load_file(str(model_path(run)))
        assert weights["frontend.gain"].shape == (3, 1, 1)
        # a learnable frontend trains with the backbone in the fine-tuning phase
        assert not torch.allclose(weights["frontend.gain"], torch.full((3, 1, 1), 0.5))
        out = invoke(["predict", run, next(synth_root.rglob("*.png")), "--format", "json"])
        assert "p_fake" in out
