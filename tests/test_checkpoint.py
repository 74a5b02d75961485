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


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file starts with its header length (8 bytes, little-endian): when that
    length is 128 mod 256 its first byte is 0x80, a pickle's first byte. Such a real model file
    was refused as a pickle (a resnet50_lrt run's, after the standardiser's buffers changed the
    header size)."""
    from safetensors.torch import load_file, save_file

    from bnnkit.run.checkpoint import refuse_pickles

    path = tmp_path / "model.safetensors"
    for pad in range(300):
        save_file({"w": torch.ones(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    refuse_pickles(tmp_path, {"model": path.name})  # no UnsafeFileError
    assert load_file(str(path))["w"].tolist() == [1.0, 1.0]
    path.write_bytes(pickle.dumps({"w": 1}, protocol=4))
    with pytest.raises(UnsafeFileError):
        refuse_pickles(tmp_path, {"model": path.name})


def _save(run, step: int) -> None:
    save_checkpoint(run, torch.nn.Linear(3, 2), {"step": torch.tensor([step])}, {"epoch": step},
                    tag=f"s{step}")  # fmt: skip


def test_previous_checkpoint_is_kept_and_used_when_the_latest_is_corrupt(tmp_path):
    from bnnkit.errors import CheckpointWarning, UsageError
    from bnnkit.run import RunLayout, find_checkpoint, read_meta

    layout = RunLayout(tmp_path)
    for step in (1, 2, 3):
        _save(tmp_path, step)
    assert {p.name for p in layout.tensor_files()} == {
        "model-s3.safetensors",
        "state-s3.safetensors",
    }
    assert sorted(p.name for p in layout.previous.iterdir()) == [
        "checkpoint.json", "model-s2.safetensors", "state-s2.safetensors"
    ]  # fmt: skip
    model = tmp_path / "model-s3.safetensors"
    intact = model.read_bytes()
    for damage in (
        lambda: model.write_bytes(intact[:-7]),  # truncated
        lambda: model.write_bytes(intact + b"\0"),  # longer than its header says
        lambda: layout.checkpoint.write_text("{not json"),
        lambda: (tmp_path / "state-s3.safetensors").rename(tmp_path / "aside"),
    ):
        backup = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        damage()
        with pytest.warns(CheckpointWarning, match="using the previous one"):
            state, meta = load_checkpoint(tmp_path, torch.nn.Linear(3, 2))
        assert meta["epoch"] == 2 and state["step"].tolist() == [2]
        assert read_meta(tmp_path)["epoch"] == 2
        for p in list(tmp_path.iterdir()):
            if p.is_file():
                p.unlink()
        for p, data in backup.items():
            p.write_bytes(data)
    # a new checkpoint over a corrupt one keeps the good previous checkpoint, not the corrupt one
    model.write_bytes(intact[:100])
    _save(tmp_path, 4)
    assert read_meta(layout.previous)["epoch"] == 2 and read_meta(tmp_path)["epoch"] == 4
    model_prev = layout.previous / "model-s2.safetensors"
    model_prev.write_bytes(model_prev.read_bytes()[:50])
    layout.checkpoint.write_text("")
    with pytest.raises(UsageError, match="checkpoint.json is unreadable.*model-s2.safetensors is"):
        find_checkpoint(tmp_path)


def test_disk_full_while_saving_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    import errno

    import bnnkit.run.checkpoint as ckpt
    from bnnkit.errors import DiskFullError
    from bnnkit.run import RunLayout

    _save(tmp_path, 1)
    _save(tmp_path, 2)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real_save_file = ckpt.save_file

    def half_then_full(tensors, path, *args, **kwargs):  # what safetensors raises on ENOSPC
        real_save_file(tensors, path, *args, **kwargs)
        with open(path, "r+b") as fh:
            fh.truncate(10)
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    for name, fails in (("save_file", half_then_full), ("atomic_write_text", full)):
        with monkeypatch.context() as m:
            m.setattr(ckpt, name, fails)
            with pytest.raises(DiskFullError, match=r"needs about [\d.]+ (B|KiB)") as info:
                _save(tmp_path, 3)
        assert f"bnnkit train --resume {tmp_path}" in str(info.value)
        after = {
            p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
        }
        assert after == before  # no partial file left, both kept checkpoints untouched
    _save(tmp_path, 3)  # space is back
    assert ckpt.read_meta(tmp_path)["epoch"] == 3
    assert ckpt.read_meta(RunLayout(tmp_path).previous)["epoch"] == 2


def test_a_repeated_tag_does_not_overwrite_the_current_files(tmp_path):
    from bnnkit.run import RunLayout, read_meta

    _save(tmp_path, 5)
    _save(tmp_path, 5)  # e.g. a signal right after an epoch's checkpoint, at the same step
    assert read_meta(tmp_path)["files"]["model"] == "model-s5-2.safetensors"
    assert read_meta(RunLayout(tmp_path).previous)["files"]["model"] == "model-s5.safetensors"


def test_the_same_weights_give_the_same_model_file_in_every_process(tmp_path):
    """A bbb head's aliased parameters (weight_mu is also weight_sampler.mu) are saved once.
    safetensors' save_model also listed the dropped aliases in the header's metadata, written
    in a random order per process, so the same weights hashed differently on every save (and
    model_sha256, which keys the staleness checks, with them)."""
    import hashlib
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from bnnkit.run.partial import save_weights\n"
        "from bnnkit_plugins.head_bbb import BBBHead\n"
        "torch.manual_seed(0)\n"
        "save_weights(BBBHead(8, 2), __import__('pathlib').Path(sys.argv[1]), None)\n"
    )
    files = [tmp_path / f"m{i}.safetensors" for i in range(3)]
    for f in files:
        subprocess.run([sys.executable, "-c", code, str(f)], check=True)
    digests = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert len(digests) == 1
    from safetensors.torch import load_model

    torch.manual_seed(0)
    want = BBBHead(8, 2)
    got = BBBHead(8, 2)
    load_model(got, str(files[0]), strict=True)
    assert got.layer.weight_sampler.mu is got.layer.weight_mu  # still one parameter
    for (name, a), b in zip(want.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
