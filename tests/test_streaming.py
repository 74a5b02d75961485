"""Evaluation streams: per batch one backbone pass and K head samples, no feature matrix kept."""

from __future__ import annotations

import torch

from bnnkit.data.dataset import ImageDataset, build_transform
from bnnkit.data.genimage import index_split
from bnnkit.engine.loop import extract_features, make_loader, mc_predictive, stream_predictive
from bnnkit.model.detector import Detector
from bnnkit_plugins.attention_spatial import SpatialAttention
from bnnkit_plugins.backbone_timm import create_timm_backbone
from bnnkit_plugins.head_linear import LinearHead
from bnnkit_plugins.method_map import MAP


def test_streamed_results_match_two_pass_results(synth_root):
    torch.manual_seed(0)
    backbone = create_timm_backbone("test_resnet", pretrained=False)
    channels = backbone.out_channels
    detector = Detector(backbone, SpatialAttention(channels), LinearHead(channels, 2)).eval()
    method = MAP(detector.head, num_train=10)
    items = index_split(synth_root, ["adm", "midjourney"], "val")
    ds = ImageDataset(items, build_transform(32, "crop", train=False), ["adm", "midjourney"])
    cpu = torch.device("cpu")
    loader = make_loader(ds, 5, shuffle=False, seed=0, workers=0, device=cpu)
    seen: list[int] = []
    out = stream_predictive(detector, method, loader, 4, cpu, seen.append)
    assert sum(seen) == len(ds) and out.broken == []
    feats = extract_features(detector, loader, cpu)
    two_pass = mc_predictive(method, feats.features, 4, cpu)
    torch.testing.assert_close(out.pred.p_fake, two_pass.p_fake)
    torch.testing.assert_close(out.pred.total, two_pass.total)
    assert torch.equal(out.labels, feats.labels) and torch.equal(out.indices, feats.indices)
    assert not hasattr(out, "features")  # nothing of size N x D is returned
