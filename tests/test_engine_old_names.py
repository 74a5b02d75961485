"""bnnkit 0.1's flat ``bnnkit.engine.<module>`` names keep importing for one release, each with
a DeprecationWarning, as the very module (or object) that moved."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import bnnkit.engine as engine


def _fresh(name: str) -> None:
    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        sys.modules[parent].__dict__.pop(child, None)


@pytest.mark.parametrize("old", sorted(engine.MOVED))
def test_every_old_module_imports_as_the_new_one_with_a_warning(old):
    new = importlib.import_module(f"bnnkit.engine.{engine.MOVED[old]}")
    _fresh(f"bnnkit.engine.{old}")
    with pytest.warns(DeprecationWarning, match=rf"bnnkit\.engine\.{old} moved to {new.__name__}"):
        module = importlib.import_module(f"bnnkit.engine.{old}")
    assert module is new
    assert module.__spec__.name == new.__name__  # the alias did not take the module's spec
    assert getattr(engine, old) is new


def test_from_import_of_old_names_keeps_working():
    _fresh("bnnkit.engine.loop")
    with pytest.warns(DeprecationWarning):
        from bnnkit.engine.loop import make_loader
    from bnnkit.engine.features.loop import make_loader as moved

    assert make_loader is moved
    with pytest.warns(DeprecationWarning, match="bnnkit.engine.predict.predict_run moved"):
        from bnnkit.engine.predict import predict_run
    from bnnkit.engine.predict.run import predict_run as run_predict

    assert predict_run is run_predict
    with pytest.warns(DeprecationWarning, match="bnnkit.engine.protocol.run_protocol moved"):
        from bnnkit.engine.protocol import ProtocolResult, plan_cells, run_protocol
    from bnnkit.engine.protocol import cells, run

    assert (run_protocol, ProtocolResult, plan_cells) == (
        run.run_protocol, run.ProtocolResult, cells.plan_cells,
    )  # fmt: skip


def test_unknown_names_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("bnnkit.engine.no_such_module")
    with pytest.raises(ImportError):
        from bnnkit.engine.predict import no_such_name  # noqa: F401


def test_the_warning_points_at_the_importing_line():
    code = (
        "import warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n"
        "    import bnnkit.engine.evaluation\n"
        "except DeprecationWarning as exc:\n"
        "    print('warned:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "warned: bnnkit.engine.evaluation moved to bnnkit.engine.evaluate.run" in out.stdout
