"""Checkpoints: safetensors + JSON round trips, blitz aliases, and refusing pickles."""

from __future__ import annotations

import pickle

import pytest
import torch

from bnnkit.errors import UnsafeFileError
from bnnkit.run.checkpoint import flatten, load_checkpoint, save_checkpoint, unflatten
from bnnkit_plugins.head_bbb import BBBHead


def test_flatten_round_trip_with_optimizer_state():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    tensors: dict = {}
    skeleton = flatten({"optimizer": opt.state_dict(), "x": [1, 2.5, None, "a"]}, tensors, "s")
    restored = unflatten(skeleton, tensors)
    state = restored["optimizer"]
    assert set(state["state"]) == {0, 1}  # int keys survive
    torch.testing.assert_close(
        state["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert restored["x"] == [1, 2.5, None, "a"]
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(state)


def test_blitz_head_with_aliased_parameters_round_trips(tmp_path):
    head = BBBHead(8, 2)
    with torch.no_grad():
        head.layer.weight_rho.fill_(-3.3)
    save_checkpoint(
        tmp_path, head, {"method": {"samples": torch.ones(2, 3)}}, {"epoch": 1}, tag="e1"
    )
    fresh = BBBHead(8, 2)
    state, meta = load_checkpoint(tmp_path, fresh)
    assert meta["epoch"] == 1
    torch.testing.assert_close(fresh.layer.weight_rho, head.layer.weight_rho)
    # blitz samples through its sampler's alias of rho: it must see the loaded values too
    torch.testing.assert_close(fresh.layer.weight_sampler.rho, head.layer.weight_rho)
    torch.testing.assert_close(state["method"]["samples"], torch.ones(2, 3))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path, trained_run, runner):
    import shutil

    from bnnkit.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "pwned"
    (run / "model-final.safetensors").write_bytes(pickle.dumps(_Payload(str(marker)), protocol=4))
    with pytest.raises(UnsafeFileError):
        load_checkpoint(run, torch.nn.Linear(1, 1))
    result = runner.invoke(main, ["evaluate", str(run)])
    assert result.exit_code == 2
    assert "refusing to load" in result.output and "Traceback" not in result.output
    assert not marker.exists()
