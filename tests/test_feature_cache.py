"""The frozen-feature cache: sharded, resumable after a SIGKILL, verified (truncated / corrupt /
missing shards recomputed), float16 storage, one entry per generator folder shared by runs on
different generator subsets, and evaluation of a frozen run from the cache.

Run as a script (``python tests/test_feature_cache.py ROOT CACHE``) it extracts features of
``ROOT``'s sdv4 training images into ``CACHE``: the subprocess the SIGKILL test kills."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "recipes" / "quickstart.toml"
ROWS = 4  # samples per shard in these tests
SDV4 = "imagenet_ai_0419_sdv4"
pytestmark = pytest.mark.usefixtures("one_thread")  # as the killed subprocess: same float sums


def extract(root: Path, cache: Path, dtype: str = "float32", batch_size: int = 3):
    """(features, backbone images) of ``root``'s sdv4 training split through the cache, with
    ``ROWS`` samples per shard and batches that straddle shard boundaries."""
    from bnnkit.data.dataset import ImageDataset, build_transform
    from bnnkit.data.layouts import index_split
    from bnnkit.engine.build import build
    from bnnkit.engine.features import store as feature_store
    from bnnkit.engine.features.cache import cached_features
    from bnnkit.recipe import load_recipe

    sets = {"data.root": json.dumps(str(root)), "data.image_size": 32, "data.balance": "false",
            "data.train_generators": '["sdv4"]', "train.backbone": '"frozen"',
            "train.feature_dtype": json.dumps(dtype), "eval.batch_size": batch_size}  # fmt: skip
    recipe = load_recipe(QUICKSTART, [f"{k}={v}" for k, v in sets.items()])
    torch.manual_seed(0)
    detector, _ = build(recipe, num_train=4)
    itemsize = 2 if dtype == "float16" else 4
    feature_store.SHARD_BYTES = ROWS * detector.feature_dim * itemsize
    samples = index_split(root, ["sdv4"], "train", balance=False)
    tf = build_transform(32, recipe.data.preprocess, train=False, norm=detector.normalisation)
    seen: list[int] = []
    forward = detector.backbone.forward
    detector.backbone.forward = lambda x: (seen.append(len(x)), forward(x))[1]
    feats = cached_features(
        detector, ImageDataset(samples, tf, ["sdv4"]), torch.device("cpu"), recipe, "train", cache
    )
    return feats, sum(seen)


@pytest.fixture(scope="module")
def sdv4_root(tmp_path_factory, synth_root) -> Path:
    """sdv4 alone (8 + 8 training images) plus one unreadable file: 17 samples, 5 shards."""
    from bnnkit.data.genimage import find_generators

    root = tmp_path_factory.mktemp("sdv4")
    shutil.copytree(find_generators(synth_root)["sdv4"], root / SDV4)
    (root / SDV4 / "train" / "ai" / "zz_broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def reference(sdv4_root, tmp_path_factory):
    """An uninterrupted extraction (features, backbone images)."""
    return extract(sdv4_root, tmp_path_factory.mktemp("ref-cache"))


def _entry(cache: Path) -> Path:
    (entry,) = (cache / "features").iterdir()
    return entry


def _manifest(cache: Path) -> dict:
    return json.loads((_entry(cache) / "manifest.json").read_text())


def _same(a, b) -> None:
    d = (a.features[:] - b.features[:]).abs().amax(1)
    assert torch.equal(a.features[:], b.features[:]), d
    for name in ("labels", "generators", "indices"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.broken == b.broken


def _count_writes(monkeypatch) -> list[str]:
    from bnnkit.engine.features import store as feature_store

    written: list[str] = []
    write = feature_store.write_shard

    def spy(path, *args):
        written.append(Path(path).name)
        return write(path, *args)

    monkeypatch.setattr(feature_store, "write_shard", spy)
    return written


def test_reference_extraction_is_sharded_and_read_lazily(reference):
    from bnnkit.engine.features.store import FeatureRows

    feats, images = reference
    assert images == 16 and feats.labels.shape[0] == 16  # the broken file is left out
    assert [b.path.endswith("zz_broken.png") for b in feats.broken] == [True]
    assert isinstance(feats.features, FeatureRows) and feats.features.shape == (16, 96)
    assert len(feats.features.shards) == 5  # 17 samples / 4 per shard
    assert isinstance(feats.features.shards[0].array, np.memmap)
    idx = torch.tensor([15, 0, 7, 4, 4])
    assert torch.equal(feats.features[idx], torch.stack([feats.features[int(i)] for i in idx]))
    assert torch.equal(feats.features.to("cpu")[idx], feats.features[idx])


def test_sigkill_mid_extraction_resumes_from_the_complete_shards(
    sdv4_root, reference, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    env = {**os.environ, "BNNKIT_FEATURES_KILL_AFTER": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, str(sdv4_root), str(cache)], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    done = _manifest(cache)["shards"]
    assert len(done) == 2
    kept = sum(r["rows"] for r in done.values())
    written = _count_writes(monkeypatch)
    feats, images = extract(sdv4_root, cache)
    _same(feats, reference[0])
    assert len(written) == 3 and not set(written) & {r["file"] for r in done.values()}
    assert images == 16 - kept  # only the unfinished shards went through the backbone


def test_truncated_corrupt_or_missing_shards_are_recomputed(
    sdv4_root, reference, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    extract(sdv4_root, cache)
    entry = _entry(cache)
    shards = sorted(entry.glob("shard-*.safetensors"))
    rows = [r["rows"] for _, r in sorted(_manifest(cache)["shards"].items())]
    with open(shards[0], "r+b") as fh:  # truncated
        fh.truncate(shards[0].stat().st_size - 7)
    raw = bytearray(shards[2].read_bytes())  # same size, valid header, flipped feature bytes
    raw[-40:-36] = bytes(b ^ 0xFF for b in raw[-40:-36])
    shards[2].write_bytes(bytes(raw))
    shards[3].unlink()
    written = _count_writes(monkeypatch)
    with pytest.warns(UserWarning, match="truncated.*corrupt.*missing"):
        feats, images = extract(sdv4_root, cache)
    _same(feats, reference[0])
    assert sorted(written) == [shards[i].name for i in (0, 2, 3)]
    assert images == rows[0] + rows[2] + rows[3] == 12
    written.clear()
    assert extract(sdv4_root, cache)[1] == 0 and written == []  # intact now


def test_float16_storage_round_trip(sdv4_root, reference, tmp_path):
    from bnnkit.engine.features.store import read_header

    feats, _ = extract(sdv4_root, tmp_path / "cache", dtype="float16")
    assert feats.features[:].dtype == torch.float32  # computed and read as float32
    assert torch.equal(feats.features[:], reference[0].features[:].half().float())
    shard = feats.features.shards[0].path
    assert read_header(shard, shard.stat().st_size)[1]["features"]["dtype"] == "F16"


# -- through train and evaluate -------------------------------------------------------------------
def _backbone_images(monkeypatch) -> list[int]:
    from bnnkit_plugins.backbone_timm import TimmBackbone

    seen: list[int] = []
    forward = TimmBackbone.forward
    monkeypatch.setattr(
        TimmBackbone, "forward", lambda self, x: (seen.append(len(x)), forward(self, x))[1]
    )
    return seen


def _train(synth_root: Path, work: Path, generators: str) -> Path:
    from bnnkit.testing import invoke, tiny_overrides

    runs = work / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    sets = {"train.backbone": '"frozen"', "data.train_generators": generators}
    invoke(["train", QUICKSTART, "--runs-dir", runs, "--cache-dir", work / "cache", "-q",
            *tiny_overrides(synth_root, **sets)])  # fmt: skip
    (run,) = set(runs.iterdir()) - before
    return run


def _close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6, nan_ok=True), path
    else:
        assert a == b, path


def test_folders_are_extracted_once_across_runs_and_evaluation(synth_root, tmp_path, monkeypatch):
    from bnnkit.testing import invoke

    seen = _backbone_images(monkeypatch)
    _train(synth_root, tmp_path, '["sdv4"]')
    # sdv4 train (less its calibration images, 1 per class: never trained on) + val
    assert sum(seen) == 14 + 8
    seen.clear()
    run = _train(synth_root, tmp_path, '["sdv4", "sdv5"]')
    assert sum(seen) == 14 + 8  # sdv5 only: sdv4's entries are reused
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["feature_cache"] == str((tmp_path / "cache").resolve())

    seen.clear()
    invoke(["evaluate", run, "--no-plots"])  # seen val cached; the holdout's val extracted
    assert sum(seen) == 8 + 4  # and the calibration images (2 per seen generator), once
    seen.clear()
    invoke(["evaluate", run, "--no-plots", "--degrade", "jpeg:30"])
    assert sum(seen) == 24  # clean from the cache; the degraded condition needs the images
    cached = json.loads((run / "metrics.json").read_text())

    (tmp_path / "cache").rename(tmp_path / "elsewhere")  # gone: the image path
    seen.clear()
    invoke(["evaluate", run, "--no-plots", "--degrade", "jpeg:30"])
    assert sum(seen) == 2 * 24 + 4  # the calibration images too
    _close(cached, json.loads((run / "metrics.json").read_text()))


if __name__ == "__main__":
    torch.set_num_threads(1)
    extract(Path(sys.argv[1]), Path(sys.argv[2]))


def test_weights_digest_is_remembered_until_a_weight_changes():
    """The digest is computed once per detector, and a weight changed in place (an optimiser
    step) or replaced (a checkpoint load) gives a new one, never the remembered one."""
    import torch

    from bnnkit.engine.features.cache import _weights_digest
    from bnnkit.model.detector import Detector
    from bnnkit.model.heads import Head

    class Backbone(torch.nn.Module):
        out_channels = 2

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x)

    class Linear(Head):
        def __init__(self):
            super().__init__(2, 2)
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    det = Detector(Backbone(), torch.nn.Identity(), Linear())
    first = _weights_digest(det)
    assert _weights_digest(det) == first and det._weights_digest_memo[1] == first
    with torch.no_grad():
        det.backbone.conv.weight.add_(1.0)  # in place: the version counter moves
    second = _weights_digest(det)
    assert second != first
    state = {k: v.clone() for k, v in det.state_dict().items()}
    state["backbone.conv.bias"] += 1.0
    det.load_state_dict(state)  # copies into the same storage, bumping versions
    assert _weights_digest(det) not in (first, second)
    fresh = Detector(Backbone(), torch.nn.Identity(), Linear())
    fresh.load_state_dict(det.state_dict())
    assert _weights_digest(fresh) == _weights_digest(det)  # the same weights, the same key
