"""Feature standardisation before the head (``model.standardise``) and the fixed Laplacian
frontend (formerly ``model.input_filter``): statistics from the training features alone, raw
features in the frozen cache, old checkpoints loading as identity, and every path to the head
(streamed images, cached features, predict) giving the same p(fake) for the same image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUICKSTART, invoke, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def _detector(**kwargs):
    from bnnkit.model.detector import Detector
    from bnnkit_plugins.attention_spatial import SpatialAttention
    from bnnkit_plugins.backbone_timm import create_timm_backbone
    from bnnkit_plugins.head_linear import LinearHead

    torch.manual_seed(0)
    backbone = create_timm_backbone("test_resnet", pretrained=False)
    c = backbone.out_channels
    return Detector(backbone, SpatialAttention(c), LinearHead(c, 2), **kwargs).eval()


def test_fit_matches_scikit_learn_and_keeps_flat_features_at_scale_one():
    from sklearn.preprocessing import StandardScaler

    from bnnkit.model.detector import FeatureStandardiser

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g) * torch.tensor([0.01, 1.0, 30.0, 0.0]) + 5
    st = FeatureStandardiser(4)
    assert not st.active and torch.equal(st(x), x)  # identity until fit
    st.fit(x, chunk=7)  # chunked accumulation
    ref = StandardScaler().fit(x.double().numpy())
    np.testing.assert_allclose(st.mean.numpy(), ref.mean_, rtol=1e-6)
    np.testing.assert_allclose(st.std.numpy(), ref.scale_, rtol=1e-5)
    assert st.std[3] == 1.0 and st.active
    np.testing.assert_allclose(st(x).numpy(), ref.transform(x.double().numpy()), atol=1e-4)


def test_checkpoint_without_the_statistics_loads_as_identity(tmp_path):
    from safetensors.torch import load_model, save_file

    old = {k: v for k, v in _detector().state_dict().items() if "standardiser" not in k}
    save_file(old, str(tmp_path / "model.safetensors"))  # what a run from before saved
    detector = _detector()
    detector.standardiser.mean.fill_(3.0)
    load_model(detector, str(tmp_path / "model.safetensors"), strict=True)  # load_checkpoint's
    assert not detector.standardiser.active
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(detector.features(x), detector.raw_features(x))


def test_laplacian_input_filter_sees_residuals_only():
    from bnnkit.errors import PluginError

    plain, filtered = _detector(), _detector(frontend="laplacian")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(filtered.features(x), filtered.features(x + 0.7))
        assert not torch.allclose(plain.features(x), plain.features(x + 0.7))
    with pytest.raises(PluginError, match="unknown frontend 'sobel'"):
        _detector(frontend="sobel")


def test_auto_is_on_for_a_frozen_backbone_only():
    from bnnkit.engine.features.standardise import standardises
    from bnnkit.recipe import load_recipe

    def on(*sets: str) -> bool:
        return standardises(load_recipe(QUICKSTART, list(sets)))

    assert on('train.backbone="frozen"') and not on('train.backbone="finetune"')
    assert on("model.standardise=true")
    assert not on('train.backbone="frozen"', "model.standardise=false")


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory, synth_root) -> Path:
    work = tmp_path_factory.mktemp("std")
    sets = {"train.backbone": '"frozen"', "data.train_generators": '["sdv4", "adm"]',
            "model.frontend": '{name = "laplacian"}'}  # fmt: skip
    invoke(["train", QUICKSTART, "--runs-dir", work / "runs", "--cache-dir", work / "cache",
            "-q", *tiny_overrides(synth_root, **sets)])  # fmt: skip
    (run,) = (work / "runs").iterdir()
    return run


def _loaded(run: Path):
    from bnnkit.data.dataset import ImageDataset, build_transform
    from bnnkit.data.layouts import index_split
    from bnnkit.engine.build import load_run

    recipe, detector, method, meta = load_run(run, CPU)
    d = recipe.data

    def dataset(split: str) -> ImageDataset:
        if split == "train":  # what the run trained on: the calibration split left out
            from bnnkit.data.splits import train_calibration_split

            items, _ = train_calibration_split(recipe)
        else:
            items = index_split(d.root, list(d.train_generators), split, balance=d.balance,
                                seed=recipe.seed)  # fmt: skip
        tf = build_transform(d.image_size, d.preprocess, train=False, norm=detector.normalisation)
        return ImageDataset(items, tf, list(d.train_generators))

    return recipe, detector, method, meta, dataset


def test_statistics_come_from_the_training_features_alone(frozen_run):
    from sklearn.preprocessing import StandardScaler

    from bnnkit.engine.features.loop import make_loader

    recipe, detector, _, _, dataset = _loaded(frozen_run)
    assert detector.standardiser.active

    def raw(split: str) -> torch.Tensor:
        loader = make_loader(dataset(split), 16, seed=0, workers=0, device=CPU)
        with torch.no_grad():
            return torch.cat([detector.raw_features(b.images) for b in loader])

    train, val = raw("train"), raw("val")
    ref = StandardScaler().fit(train.double().numpy())  # dead features (std 0) keep scale 1
    np.testing.assert_allclose(detector.standardiser.mean, ref.mean_, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(detector.standardiser.std, ref.scale_, rtol=1e-4, atol=1e-7)
    both = torch.cat([train, val]).mean(0)
    assert not torch.allclose(detector.standardiser.mean, both, rtol=1e-4, atol=1e-7)


def test_cached_streamed_and_predicted_p_fake_agree(frozen_run, tmp_path):
    """Evaluation's clean condition reads the cache (raw features, standardised on reading);
    stream_predictive and predict run the images: one p(fake) per image on every path."""
    from bnnkit.api import Run
    from bnnkit.engine.features.cache import cached_condition, run_feature_cache
    from bnnkit.engine.features.loop import make_loader, stream_predictive

    recipe, detector, method, meta, dataset = _loaded(frozen_run)
    val = dataset("val")
    cache = run_feature_cache(recipe, meta)
    assert cache is not None
    entry = next((cache / "features").glob("val-sdv4-*"))
    rows = json.loads((entry / "manifest.json").read_text())["samples"]
    assert rows > 0
    cached, _ = cached_condition(detector, method, val, recipe, CPU, 4, cache, None)
    torch.manual_seed(recipe.seed)
    loader = make_loader(val, recipe.eval.batch_size, seed=recipe.seed, workers=0, device=CPU)
    streamed, _ = stream_predictive(detector, method, loader, 4, CPU)
    torch.testing.assert_close(cached.p_fake, streamed.p_fake, rtol=1e-4, atol=1e-5)

    files = [s.path for s in val.samples]
    by_path = {row["path"]: row["p_fake"] for row in Run(frozen_run).predict(files, samples=4)}
    predicted = torch.tensor([by_path[str(p)] for p in files], dtype=cached.p_fake.dtype)
    assert predicted.numel() == cached.p_fake.numel()
    # predict draws its own samples: the same posterior mean within Monte Carlo error
    torch.testing.assert_close(predicted, cached.p_fake, rtol=0, atol=0.05)
