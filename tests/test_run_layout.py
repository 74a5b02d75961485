"""bnnkit.run owns the run directory: its file names are spelled only there, the lower layers
never import engine or cli, and create/resolve/latest/checkpoints round-trip."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch

from bnnkit.errors import UsageError
from bnnkit.run import (
    CHECKPOINT_FILE,
    PLOT_FILES,
    PLOTS_DIR,
    RECIPE_FILE,
    RUN_FILES,
    TENSORBOARD_DIR,
    RunLayout,
    atomic_write_json,
    atomic_write_text,
    create_run_dir,
    is_run_dir,
    latest_run,
    resolve_run,
)

REPO = Path(__file__).resolve().parents[1]
#: trees whose code must take run-file names from bnnkit.run (tests spell them on purpose: they
#: pin the on-disk format a user's old runs have)
SCANNED = ("bnnkit", "plugins", "benchmarks", "examples")
OWNER = REPO / "bnnkit" / "run" / "layout.py"  # the one module that spells the names
LOWER_LAYERS = ("report", "metrics", "data", "model", "run")
HIGHER = ("bnnkit.engine", "bnnkit.cli")

_NAMES = [*RUN_FILES, *PLOT_FILES.values()]
#: a run-file name as a whole token (not ``foo.metrics.json`` or ``my-history.csv``), or a
#: checkpoint tensor file (``model-final.safetensors``, ``state-*.safetensors``)
FILE_NAME = re.compile(
    r"(?<![\w.-])(?:" + "|".join(map(re.escape, _NAMES)) + r")(?![\w-])"
    r"|(?<![\w.-])(?:model|state)-[\w*{}-]*\.safetensors"
)
DIR_NAMES = {PLOTS_DIR, TENSORBOARD_DIR}


def _python_files(tree: Path) -> Iterator[Path]:
    for path in sorted(tree.rglob("*.py")):
        if not any(part.startswith(".") or part in ("build", "__pycache__") for part in path.parts):
            yield path


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def spelled_run_files(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal in ``source`` that spells a run-file path: a string
    (or f-string part) without whitespace holding a run-file name (``"metrics.json"``,
    ``"/plots/roc.png"``), a run sub-directory joined as a path (``run / "plots"``) or starting
    one (``"plots/"``). Prose (docstrings, help texts, messages: anything with a space) may name
    files for the reader."""
    tree = ast.parse(source)
    docstrings = _docstring_ids(tree)
    joined = {
        id(side)
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
        for side in (node.left, node.right)
    }
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in docstrings or re.search(r"\s", node.value):
            continue
        text = node.value
        is_dir = (text in DIR_NAMES and id(node) in joined) or any(
            text.startswith(f"{d}/") for d in DIR_NAMES
        )
        if FILE_NAME.search(text) or is_dir:
            hits.append((node.lineno, node.col_offset, text))
    return [(line, text) for line, _, text in sorted(hits)]


def test_the_scanner_finds_what_it_should():
    source = '''
"""Module docs may say metrics.json."""
a = run / "checkpoint.json"
b = f"{run / 'broken_files.json'} written"
c = run / "plots"
d = ("metrics.json", "timing.json")
e = "model-final.safetensors"
f = glob("state-*.safetensors")
g = "plots/"
ok1 = "tensorboard" in recipe.train.log
ok2 = "weights.safetensors"
ok3 = "mymetrics.json"
ok4 = click.option(help="Print metrics.json to stdout.")
h = f"{run}/history.csv"
'''
    hits = [text for _, text in spelled_run_files(source)]
    assert hits == [
        "checkpoint.json",
        "broken_files.json",
        "plots",
        "metrics.json",
        "timing.json",
        "model-final.safetensors",
        "state-*.safetensors",
        "plots/",
        "/history.csv",
    ]


def test_no_module_but_the_layout_spells_a_run_file_name():
    offenders = []
    for top in SCANNED:
        for path in _python_files(REPO / top):
            if path == OWNER:
                continue
            for line, text in spelled_run_files(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offenders, "use bnnkit.run.layout instead:\n" + "\n".join(offenders)


def _imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield node.lineno, base
            for alias in node.names:  # `from bnnkit import engine`
                yield node.lineno, f"{base}.{alias.name}"


@pytest.mark.parametrize("layer", LOWER_LAYERS)
def test_lower_layers_never_import_engine_or_cli(layer):
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in _python_files(REPO / "bnnkit" / layer)
        for line, name in _imported_modules(path)
        if any(name == h or name.startswith(f"{h}.") for h in HIGHER)
    ]
    assert not offenders, "\n".join(offenders)


#: what each part of the engine may import from the others (``bnnkit.engine.__init__`` says why)
ENGINE_PARTS: dict[str, set[str]] = {
    "top": set(),  # build.py, device.py and the package __init__
    "features": {"top"},
    "posthoc": {"top", "features"},
    "train": {"top", "features"},
    "evaluate": {"top", "features", "posthoc"},
    "predict": {"top", "features", "posthoc"},
    "protocol": {"top", "features", "train", "evaluate"},
}
ENGINE = REPO / "bnnkit" / "engine"


def _engine_part(name: str) -> str | None:
    """The part of the engine a dotted module name belongs to (None outside the engine)."""
    parts = name.split(".")
    if parts[:2] != ["bnnkit", "engine"]:
        return None
    return parts[2] if len(parts) > 2 and parts[2] in ENGINE_PARTS else "top"


def test_engine_has_only_build_and_device_at_its_top():
    top = sorted(p.name for p in ENGINE.glob("*.py"))
    assert top == ["__init__.py", "build.py", "device.py"]
    assert sorted(p.name for p in ENGINE.iterdir() if p.is_dir() and p.name != "__pycache__") == (
        sorted(k for k in ENGINE_PARTS if k != "top")
    )


def test_engine_parts_import_only_downwards():
    offenders = []
    for path in _python_files(ENGINE):
        here = _engine_part(".".join(path.relative_to(REPO).with_suffix("").parts))
        for line, name in _imported_modules(path):
            if name == "bnnkit.api" or name.startswith(("bnnkit.api.", "bnnkit.cli")):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {name}")
                continue
            there = _engine_part(name)
            if name == "bnnkit.engine.moved_warning":  # the package's own helper, not a part
                continue
            if there is not None and there != here and there not in ENGINE_PARTS[here]:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {here} imports {name}")
    assert not offenders, "\n".join(offenders)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_edges(path: Path, modules: Iterable[str]) -> Iterator[str]:
    """What each import statement of ``path`` names: ``import a.b`` names ``a.b``; ``from a
    import b`` names ``a.b`` when that is a module, else ``a`` (``b`` is re-exported there)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base


def import_graph(root: Path = REPO / "bnnkit") -> dict[str, set[str]]:
    """Module -> the bnnkit modules it imports, at module level or in a function (a package's
    ``__init__`` is a module: what it re-exports are its edges). An imported name is an edge to
    the deepest module it names; the parent packages an import runs on the way are not edges
    (each is checked as a module of its own)."""
    modules = {_module_name(p): p for p in _python_files(root)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imported_edges(path, modules):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "bnnkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from bnnkit.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from bnnkit.b import g\n")
    (pkg / "b.py").write_text("from bnnkit.sub import f\n")
    (pkg / "c.py").write_text("import bnnkit.b\nfrom bnnkit import sub\n")  # no circle
    graph = _graph_under(tmp_path)
    assert import_cycles(graph) == [["bnnkit.b", "bnnkit.sub", "bnnkit.sub.a"]]


def _graph_under(root: Path) -> dict[str, set[str]]:
    global REPO
    saved, REPO = REPO, root
    try:
        return import_graph(root / "bnnkit")
    finally:
        REPO = saved


def test_bnnkit_has_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_import_bnnkit_run_does_not_import_torch_or_engine():
    import subprocess
    import sys

    code = (
        "import sys, bnnkit.run\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('bnnkit.engine', "
        "'bnnkit.cli'))]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _finish(run: Path, mtime: float | None = None) -> Path:
    layout = RunLayout(run)
    atomic_write_text(layout.recipe, 'name = "x"\n')
    atomic_write_json(layout.checkpoint, {"format": 1})
    if mtime is not None:
        os.utime(layout.checkpoint, (mtime, mtime))
    return run


def test_create_run_dir_never_reuses_a_directory(tmp_path):
    made = [create_run_dir(tmp_path / "runs", "my recipe/v2") for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() and p.parent == tmp_path / "runs" for p in made)
    assert all(re.fullmatch(r"my-recipe-v2-\d{8}-\d{6}(-\d+)?", p.name) for p in made)


def test_resolve_and_latest_round_trip(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(UsageError, match="no finished run"):
        latest_run(runs)
    older = _finish(create_run_dir(runs, "a"), mtime=1_000_000)
    newer = _finish(create_run_dir(runs, "b"), mtime=2_000_000)
    unfinished = create_run_dir(runs, "c")  # newest, but no checkpoint yet
    assert not is_run_dir(unfinished) and is_run_dir(older)
    assert latest_run(runs) == newer
    assert resolve_run(None, runs) == newer
    assert resolve_run(older) == older and resolve_run(str(older)) == older
    with pytest.raises(UsageError, match=re.escape(f"no {CHECKPOINT_FILE} / {RECIPE_FILE}")):
        resolve_run(unfinished)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_run(runs / "missing")
    os.utime(RunLayout(older).checkpoint, (3_000_000, 3_000_000))  # trained further
    assert latest_run(runs) == older


def test_layout_paths_and_checkpoint_files(tmp_path):
    from bnnkit.run import load_checkpoint, model_path, read_meta, save_checkpoint

    layout = RunLayout(str(tmp_path))
    assert layout.root == tmp_path and layout == RunLayout(tmp_path)
    assert layout.checkpoint.parent == tmp_path and layout.plot("roc").parent == layout.plots
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": torch.arange(3)}, {"epoch": 1}, tag="e1")
    save_checkpoint(tmp_path, model, {"step": torch.arange(4)}, {"epoch": 2}, tag="e2")
    assert sorted(p.name for p in layout.tensor_files()) == sorted(
        [layout.model("e2").name, layout.state("e2").name]
    )  # the older tag is gone
    assert model_path(tmp_path) == layout.model("e2") and read_meta(tmp_path)["epoch"] == 2
    state, meta = load_checkpoint(tmp_path, torch.nn.Linear(3, 2))
    torch.testing.assert_close(state["step"], torch.arange(4))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporaries left


def test_atomic_writes_replace_whole_files(tmp_path):
    from bnnkit.run import atomic_write_bytes

    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": [1, 2]}, sort_keys=True)
    assert target.read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}'
    with pytest.raises(TypeError):
        atomic_write_json(target, {"c": object()})
    assert "b" in target.read_text()  # a failed write leaves the old file
    atomic_write_bytes(tmp_path / "y.bin", b"\x00\x01")
    assert (tmp_path / "y.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "y.bin"]


def test_lazy_checkpoint_names_match_the_module() -> None:
    import bnnkit.run
    import bnnkit.run.checkpoint as checkpoint

    assert sorted(bnnkit.run._LAZY) == sorted(checkpoint.__all__)
    for name in checkpoint.__all__:
        assert getattr(bnnkit.run, name) is getattr(checkpoint, name)
