"""Evaluation streams: per batch one backbone pass and K head samples, no feature matrix kept."""

from __future__ import annotations

import ctypes
import gc

import pytest
import torch
from torch import nn

from bnnkit.data.dataset import ImageDataset, build_transform
from bnnkit.data.layouts import index_split
from bnnkit.engine.features.loop import (
    extract_features,
    make_loader,
    predict_features,
    stream_predictive,
)
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
    out, stats = stream_predictive(detector, method, loader, 4, cpu, seen.append)
    assert sum(seen) == len(ds) and stats.broken == []
    feats = extract_features(detector, loader, cpu)
    two_pass = predict_features(method, feats.features, 4, cpu)
    torch.testing.assert_close(out.p_fake, two_pass.p_fake)
    torch.testing.assert_close(out.total, two_pass.total)
    assert torch.equal(out.labels, feats.labels) and torch.equal(out.indices, feats.indices)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def _malloc_in_use() -> int:
    """Bytes the C heap has handed out now (glibc ``mallinfo2``: all arenas plus mmapped
    blocks). torch's CPU tensors live there; tracemalloc does not see them."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2) to measure torch's CPU memory")

    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


class _WideBackbone(nn.Module):
    """A cheap backbone with a wide feature map: one pooled feature row is 16 KiB, far more than
    the ~40 bytes of per-image results, so keeping the features would show at once."""

    out_channels = 4096

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.proj = nn.Conv2d(3, self.out_channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(images))


def test_streaming_peak_memory_does_not_grow_with_the_number_of_images(synth_root):
    """Heap in use during the loop (after every batch, and with the results held) over N and
    4N images: what it grows by must stay far below the pooled features of the extra images."""
    gens = ["adm", "biggan", "glide", "midjourney", "sdv4", "sdv5", "vqdm", "wukong"]
    items = index_split(synth_root, gens, "val")
    n = len(items) // 4
    assert n >= 8
    torch.manual_seed(0)
    width = _WideBackbone.out_channels
    detector = Detector(_WideBackbone(), nn.Identity(), LinearHead(width, 2)).eval()
    method = MAP(detector.head, num_train=10)
    transform = build_transform(16, "crop", train=False)
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one allocating thread: a steadier heap

    def peak(count: int) -> int:
        ds = ImageDataset(items[:count], transform, gens)
        loader = make_loader(ds, 4, shuffle=False, seed=0, workers=0, device=cpu)
        gc.collect()
        base = _malloc_in_use()
        marks: list[int] = []
        out, _ = stream_predictive(detector, method, loader, 4, cpu, lambda _: marks.append(
            _malloc_in_use()))  # fmt: skip
        marks.append(_malloc_in_use())  # the results are still held here
        assert out.p_fake.shape == (count,)
        return max(marks) - base

    try:
        peak(n)  # warm-up: lazily built kernels and caches
        small, large = peak(n), peak(4 * n)
    finally:
        torch.set_num_threads(threads)
    feature_rows = 3 * n * width * 4  # bytes of the 3n extra images' pooled features
    assert (large - small) / feature_rows < 0.25, (small, large, feature_rows)
