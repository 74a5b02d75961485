"""Device choice (``--device auto`` and explicit requests) with the CUDA/MPS queries mocked, and
``bnnkit devices``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from bnnkit.cli import main
from bnnkit.engine.device import cuda_free_memory, select_device
from bnnkit.errors import UsageError

GIB = 2**30


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No torchrun/CUDA variables from the outer environment, and no MPS unless a test says so."""
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def fake_cuda(monkeypatch, free_gib: list[float | None], total_gib: float = 80.0) -> None:
    """Pretend ``len(free_gib)`` CUDA devices are visible; ``None`` = memory query fails (busy)."""
    names = [f"Fake GPU {i}" for i in range(len(free_gib))]

    def index_of(device) -> int:
        if device is None:
            return 0
        return device if isinstance(device, int) else torch.device(device).index or 0

    def mem_get_info(device=None):
        free = free_gib[index_of(device)]
        if free is None:
            raise RuntimeError("CUDA error: device busy or unavailable")
        return int(free * GIB), int(total_gib * GIB)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(free_gib))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_gib))
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[index_of(device)])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def test_picks_the_device_with_most_free_memory(monkeypatch):
    fake_cuda(monkeypatch, [2, 30, 11.5])
    device, reason = select_device("auto")
    assert device == torch.device("cuda", 1)
    assert "cuda:1" in reason and "Fake GPU 1" in reason and "most free of 3" in reason


def test_ties_go_to_the_lowest_index(monkeypatch):
    fake_cuda(monkeypatch, [4, 12, 12, 12])
    assert select_device("auto")[0] == torch.device("cuda", 1)
    fake_cuda(monkeypatch, [7, 7])
    assert select_device()[0] == torch.device("cuda", 0)


def test_busy_device_is_skipped(monkeypatch):
    fake_cuda(monkeypatch, [None, 1.0])
    assert cuda_free_memory() == [(1, 1 * GIB, 80 * GIB)]
    assert select_device("auto")[0] == torch.device("cuda", 1)


def test_all_devices_busy_falls_back_to_cpu(monkeypatch):
    fake_cuda(monkeypatch, [None, None])
    device, reason = select_device("auto")
    assert device == torch.device("cpu")
    assert "cpu" in reason


def test_local_rank_is_honoured_over_free_memory(monkeypatch):
    fake_cuda(monkeypatch, [50, 1, 2])
    monkeypatch.setenv("LOCAL_RANK", "2")
    device, reason = select_device("auto")
    assert device == torch.device("cuda", 2)
    assert "LOCAL_RANK" in reason


def test_explicit_cuda_index_is_used_as_given(monkeypatch):
    fake_cuda(monkeypatch, [50, 1])
    device, reason = select_device("cuda:1")
    assert device == torch.device("cuda", 1)
    assert "requested" in reason


def test_cuda_index_beyond_visible_devices_is_a_usage_error(monkeypatch):
    fake_cuda(monkeypatch, [10, 10])
    with pytest.raises(UsageError, match=r"only 2 CUDA device\(s\) visible"):
        select_device("cuda:3")


def test_cuda_requested_without_cuda_is_a_usage_error(monkeypatch):
    fake_cuda(monkeypatch, [])
    with pytest.raises(UsageError, match="CUDA is not available"):
        select_device("cuda")


def test_unknown_device_string_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        select_device("gpu7")
    assert info.value.hint and "cuda:N" in info.value.hint


def test_mps_requested_without_mps_is_a_usage_error():
    with pytest.raises(UsageError, match="MPS is not available"):
        select_device("mps")


def test_cpu_requested_even_with_gpus(monkeypatch):
    fake_cuda(monkeypatch, [40, 40])
    device, reason = select_device(" CPU ")
    assert device == torch.device("cpu")
    assert "requested" in reason


def test_no_cuda_prefers_mps(monkeypatch):
    fake_cuda(monkeypatch, [])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto")[0] == torch.device("mps")
    assert select_device("mps")[0] == torch.device("mps")


def test_no_cuda_no_mps_gives_cpu(monkeypatch):
    fake_cuda(monkeypatch, [])
    device, reason = select_device("auto")
    assert device == torch.device("cpu")
    assert "no GPU" in reason


# -- bnnkit devices ------------------------------------------------------------------------------
def test_devices_json_runs_on_this_machine():
    result = CliRunner().invoke(main, ["devices", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["requested"] == "auto"
    assert info["selected"]["device"] == str(select_device("auto")[0])
    assert info["cpu"]["torch_threads"] >= 1


def test_devices_json_lists_gpus_and_the_pick(monkeypatch):
    fake_cuda(monkeypatch, [3, 20])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    result = CliRunner().invoke(main, ["devices", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert [d["name"] for d in info["cuda_devices"]] == ["Fake GPU 0", "Fake GPU 1"]
    assert info["cuda_devices"][1]["free_bytes"] == 20 * GIB
    assert info["env"]["CUDA_VISIBLE_DEVICES"] == "4,6"
    assert info["selected"]["device"] == "cuda:1"


def test_devices_text_shows_busy_device_and_local_rank(monkeypatch):
    fake_cuda(monkeypatch, [None, 5])
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = CliRunner().invoke(main, ["devices"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "busy" in result.output
    assert "LOCAL_RANK: 0" in result.output
    assert "cuda:0 (LOCAL_RANK)" in result.output


def test_devices_with_an_impossible_request_exits_2(monkeypatch):
    fake_cuda(monkeypatch, [8, 8])
    result = CliRunner().invoke(main, ["devices", "--device", "cuda:3", "--json"])
    assert result.exit_code == 2
    info = json.loads(result.output)
    assert info["selected"]["device"] is None
    assert "only 2 CUDA device(s) visible" in info["selected"]["error"]


def test_local_rank_is_validated_and_plain_cuda_is_chosen(monkeypatch):
    import pytest as _pytest
    import torch as _torch

    from bnnkit.engine.device import select_device
    from bnnkit.errors import UsageError

    monkeypatch.setattr(_torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(_torch.cuda, "mem_get_info", lambda i: ((1 + i) * 2**30, 8 * 2**30))
    monkeypatch.setattr(_torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    device, note = select_device("cuda")  # plain "cuda" picks like auto, not always cuda:0
    assert device == _torch.device("cuda", 1) and "most free" in note
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert select_device("cuda")[0] == _torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "5")
    with _pytest.raises(UsageError, match="only 2 CUDA device"):
        select_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with _pytest.raises(UsageError, match="not an integer"):
        select_device("auto")
