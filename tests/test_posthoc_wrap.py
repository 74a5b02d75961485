"""Post-hoc Bayesian wrapping of a released detector ("Laplace Redux" for any released head):
backbone and head weights from files, ``train.epochs = 0``, a Laplace posterior over the head
fitted on the training features; the released detector's p(fake) is kept exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from bnnkit.engine.build import load_run
from bnnkit.errors import RecipeError, UnsafeFileError, UsageError
from bnnkit.model.head_init import released_head, two_logit
from bnnkit.plugins import get_registry
from bnnkit.recipe import validate
from bnnkit.run import RunLayout
from bnnkit.testing import invoke, synth_data, train_and_evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _wrap_recipe(path: Path, backbone: str, weights: Path, head: Path, keys: str, pool: str):
    text = f"""name = "wrap"
seed = 0
[data]
root = "unused"
train_generators = ["adm", "sdv4"]
image_size = 32
preprocess = "crop"
[model]
pool = "{pool}"
[model.backbone]
name = "{backbone}"
pretrained = {json.dumps(str(weights))}
[model.head]
name = "linear"
init = {json.dumps(str(head))}
init_keys = "{keys}"
[inference]
name = "kflaplace"
[train]
epochs = 0
backbone = "frozen"
"""
    path.write_text(text, encoding="utf-8")
    return path


def _wrapped(tmp_path: Path, recipe: Path, *files: Path):
    """Train (nothing), then evaluate and load the run with the released ``files`` gone: the
    run directory alone holds the wrapped detector."""
    data = synth_data(tmp_path / "data", train_per_class=4, val_per_class=2)
    run = train_and_evaluate(
        recipe, tmp_path, data=data, backbone=None, sets={"train.epochs": 0}, evaluate=False
    )  # fmt: skip
    for path in files:
        path.unlink()
    invoke(["evaluate", str(run.run), "--no-plots"])
    metrics = json.loads(RunLayout(run.run).metrics.read_text(encoding="utf-8"))
    _, detector, method, meta = load_run(run.run, torch.device("cpu"))
    return metrics, detector, method, meta


def _check_wrapped(metrics, detector, method, meta, images, released_p) -> None:
    # nothing trained: the head is the released one, made two-logit; standardiser identity
    assert meta["complete"] and not detector.standardiser.active
    with torch.no_grad():
        features = detector.features(images)
        map_p = torch.softmax(detector.head(features), dim=-1)[:, 1]
        torch.testing.assert_close(map_p, released_p, rtol=0, atol=1e-6)
        # the Laplace posterior is centred on the released head: its sampled logits average
        # to the MAP logits within Monte-Carlo error
        torch.manual_seed(0)
        k = 4000
        draws = method.sample_logits(features, k)
        mean_logits = detector.head(features)
    spread = draws.std(0)
    assert (spread > 0).all(), "the posterior should not be a point mass"
    assert ((draws.mean(0) - mean_logits).abs() <= 5 * spread / k**0.5 + 1e-6).all()
    # fitted on the training features (not the calibration or validation split)
    facts = meta["method_meta"]
    fitted = json.dumps(facts)
    assert "n_data" in fitted
    n_data = next(v for k, v in _walk(facts) if k == "n_data")
    assert n_data == meta["num_train"] > 0
    assert n_data < 16, "the calibration images (data.calibration) are not training features"
    assert metrics  # evaluate ran: temperature, scores, abstention as usual


def _walk(tree):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key, value
            yield from _walk(value)


def test_a_released_linear_probe_on_cls_features_is_wrapped_exactly(tmp_path) -> None:
    torch.manual_seed(1)
    vit = timm.create_model("test_vit").eval()  # the "released" backbone (with its 1000 head)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    w, b = torch.randn(1, vit.num_features) * 0.3, torch.randn(1)
    head = tmp_path / "fc_weights.pth"
    torch.save({"weight": w, "bias": b}, head)  # UnivFD's layout: weight [1, D], bias [1]
    recipe = _wrap_recipe(tmp_path / "wrap.toml", "test_vit", weights, head, "univfd", "cls")
    metrics, detector, method, meta = _wrapped(tmp_path, recipe, weights, head)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():  # the released probe on timm's own CLS embedding
        cls = vit.forward_head(vit.forward_features(images), pre_logits=True)
        released_p = torch.sigmoid(cls @ w.T + b).squeeze(1)
    _check_wrapped(metrics, detector, method, meta, images, released_p)


def test_a_released_resnet_with_a_one_logit_fc_is_wrapped_exactly(tmp_path) -> None:
    torch.manual_seed(2)
    released = timm.create_model("test_resnet", num_classes=1).eval()  # a CNNSpot-like model
    with torch.no_grad():
        released.get_classifier().weight.mul_(20)  # logits well away from 0
    checkpoint = tmp_path / "cnnspot.pth"
    optimizer = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save(
        {"model": released.state_dict(), "optimizer": optimizer, "total_steps": 7}, checkpoint
    )  # fmt: skip  (CNNSpot's layout)
    recipe = _wrap_recipe(
        tmp_path / "wrap.toml", "test_resnet", checkpoint, checkpoint, "resnet_fc", "avg"
    )
    metrics, detector, method, meta = _wrapped(tmp_path, recipe, checkpoint)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        released_p = torch.sigmoid(released(images)).squeeze(1)
    _check_wrapped(metrics, detector, method, meta, images, released_p)


def test_one_logit_heads_become_the_equivalent_two_logit_head() -> None:
    w, b = torch.randn(1, 6), torch.randn(1)
    w2, b2 = two_logit(w, b)
    x = torch.randn(9, 6)
    torch.testing.assert_close(
        torch.softmax(x @ w2.T + b2, -1)[:, 1], torch.sigmoid(x @ w.T + b).squeeze(1)
    )
    assert two_logit(w2, b2)[0] is w2  # two logits: as they are


def test_key_maps_find_the_layer_and_say_what_the_file_has(tmp_path) -> None:
    w, b = torch.randn(1, 6), torch.randn(1)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"module.backbone.x": torch.ones(3), "module.fc.weight": w,
                               "module.fc.bias": b}}, nested)  # fmt: skip
    for keys in ("resnet_fc", "auto", "fc", "univfd"):
        torch.testing.assert_close(released_head(nested, keys, 6)[0][1], w[0] / 2)
    st = tmp_path / "probe.safetensors"
    save_file({"head.linear.weight": w, "head.linear.bias": b}, str(st))
    torch.testing.assert_close(released_head(st, "head.linear", 6)[1], torch.cat([-b, b]) / 2)
    with pytest.raises(UsageError, match=r"reads 6 features; this detector's head gets 8"):
        released_head(st, "auto", 8)
    with pytest.raises(UsageError, match=r"resnet_fc.*the file has .*head.linear.weight \[1, 6\]"):
        released_head(st, "resnet_fc", 6)
    with pytest.raises(UsageError, match="does not exist"):
        released_head(tmp_path / "missing.pth", "auto", 6)


class _Planted:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_a_file_that_needs_an_arbitrary_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.randn(1, 6), "bias": torch.randn(1), "x": _Planted()}, path)
    with pytest.raises(UnsafeFileError, match="arbitrary pickle"):
        released_head(path, "auto", 6)


def _raw(**train):
    return {
        "data": {"image_size": 32},
        "model": {"backbone": {"name": "test_resnet"}, "head": {"name": "linear", "init": "x"}},
        "inference": {"name": "kflaplace"},
        "train": {"epochs": 0, "backbone": "frozen", **train},
    }


def test_epochs_zero_is_for_post_hoc_methods_with_a_released_head() -> None:
    registry = get_registry()
    assert validate(_raw(), registry).train.epochs == 0
    no_init = _raw()
    del no_init["model"]["head"]
    with pytest.raises(RecipeError, match="kflaplace needs at least 1 epoch.*model.head. init"):
        validate(no_init, registry)
    with pytest.raises(RecipeError, match="bbb cannot wrap a released head"):
        validate({**_raw(), "inference": {"name": "bbb"}}, registry)
    with pytest.raises(RecipeError, match="train.head_epochs.*leave it 0"):
        validate(_raw(head_epochs=3), registry)
    with pytest.raises(RecipeError, match="model.standardise: a released head"):
        validate({**_raw(), "model": {**_raw()["model"], "standardise": True}}, registry)
