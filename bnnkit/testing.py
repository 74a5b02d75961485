"""Helpers for testing bnnkit plugins (and bnnkit itself) with pytest.

- :func:`registered` / :func:`registry_fixture`: register plugin modules in-process for the
  duration of a test, whether or not their package is also installed (a module that an entry
  point already loaded is not registered a second time).
- :func:`synth_data`, :func:`tiny_overrides`, :func:`train_and_evaluate`: a seconds-long
  ``bnnkit data synth`` / ``bnnkit train`` / ``bnnkit evaluate`` round trip through the CLI, with
  the tiny timm model ``test_resnet`` (``pretrained = false``, nothing downloaded).
- :func:`check_method`: a conformance check of an :class:`~bnnkit.methods.base.InferenceMethod`
  (sample shapes and probabilities, seeded reproducibility, state round-trip through
  safetensors and JSON, determinism where the method and head are deterministic).
- :func:`check_score`: a conformance check of a :class:`~bnnkit.scores.base.Score` (shape, dtype,
  finiteness, batch independence, ``ScoreNotFitted`` before a fit, state round-trip).

Set ``HF_HUB_OFFLINE=1`` in your ``conftest.py`` before anything imports timm.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnnkit.errors import PluginError
from bnnkit.plugins import Registry, add_plugin, get_registry, remove_plugin

if TYPE_CHECKING:
    from torch import Tensor

    from bnnkit.methods.base import InferenceMethod

__all__ = [
    "TINY_SETS",
    "TrainedRun",
    "check_method",
    "check_score",  # noqa: F822 (module __getattr__, lazy)
    "invoke",
    "registered",
    "registry_fixture",
    "synth_data",
    "tiny_overrides",
    "train_and_evaluate",
]


# -- registering plugins ------------------------------------------------------------------------
def _plugin_name(plugin: object) -> str:
    return f"testing:{getattr(plugin, '__name__', type(plugin).__name__)}"


@contextmanager
def registered(*plugins: object | tuple[str, object]) -> Iterator[Registry]:
    """Register plugin modules (or ``(name, module)`` pairs) and yield the fresh registry;
    unregister them on exit.

    Safe when the plugins' package is installed too (even as an egg-info in the source tree):
    a module that its entry point already loaded keeps its entry-point registration (and its
    package name and version) instead of being registered twice. A plugin whose hook raises is
    an error here rather than a missing name later.
    """
    names: list[str] = []
    try:
        for plugin in plugins:
            name, obj = plugin if isinstance(plugin, tuple) else (_plugin_name(plugin), plugin)
            add_plugin(name, obj)
            names.append(name)
        registry = get_registry()
        broken = [b for b in registry.broken if b.plugin in names]
        if broken:
            raise PluginError("; ".join(f"plugin {b.plugin} is broken: {b.error}" for b in broken))
        yield registry
    finally:
        for name in names:
            remove_plugin(name)


def registry_fixture(
    *plugins: object | tuple[str, object], name: str = "registry", scope: str = "function"
) -> Any:
    """A pytest fixture (named ``name``) yielding the registry with ``plugins`` registered::

    registry = registry_fixture(attention_eca, method_swag)

    def test_eca(registry):
        block = registry.get("attention", "eca").obj(64)
    """
    import pytest

    @pytest.fixture(name=name, scope=scope)  # type: ignore[call-overload]
    def _fixture() -> Iterator[Registry]:
        with registered(*plugins) as registry:
            yield registry

    return _fixture


# -- a tiny train + evaluate through the CLI ------------------------------------------------------
#: recipe keys (TOML values) that make a recipe a seconds-long run on :func:`synth_data`'s tree.
TINY_SETS: dict[str, str] = {
    "data.image_size": "32",
    "train.epochs": "1",
    "train.batch_size": "16",
    "eval.samples": "8",
}


def _toml(value: object) -> str:
    """``--set`` value text: bools and paths become TOML; strings are taken as TOML already."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return str(value)


def tiny_overrides(root: str | Path, **extra: object) -> list[str]:
    """``--set`` arguments for a tiny run on the data under ``root``; ``extra`` maps recipe keys
    to TOML values (``**{"train.backbone": '"frozen"'}``) and wins over the defaults."""
    sets = {"data.root": json.dumps(str(root)), **TINY_SETS}
    sets.update({k: _toml(v) for k, v in extra.items()})
    return [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]


def invoke(args: Sequence[str]) -> str:
    """Run ``bnnkit ARGS`` in-process; its output, or an AssertionError that shows it."""
    from click.testing import CliRunner

    from bnnkit.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        detail = f"{result.output}\n{result.exception!r}" if result.exception else result.output
        raise AssertionError(f"bnnkit {' '.join(map(str, args))} failed:\n{detail}")
    return result.output


def synth_data(
    root: str | Path,
    *,
    train_per_class: int = 8,
    val_per_class: int = 4,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write (or keep, if there) a tiny synthetic GenImage tree with ``bnnkit data synth``."""
    invoke(
        [
            "data",
            "synth",
            str(root),
            "--seed",
            str(seed),
            "--size",
            str(size),
            "--exist-ok",
            "--train-per-class",
            str(train_per_class),
            "--val-per-class",
            str(val_per_class),
        ]
    )
    return Path(root)


@dataclass(frozen=True)
class TrainedRun:
    """What :func:`train_and_evaluate` produced."""

    run: Path  # the run directory
    metrics: dict[str, Any]  # metrics.json ({} with evaluate=False)
    train_output: str
    evaluate_output: str

    @property
    def meta(self) -> dict[str, Any]:
        """The run's checkpoint metadata (method, method_meta, complete, ...)."""
        from bnnkit.run import RunLayout

        return json.loads(RunLayout(self.run).checkpoint.read_text(encoding="utf-8"))


def train_and_evaluate(
    recipe: str | Path,
    workdir: str | Path,
    *,
    data: str | Path | None = None,
    sets: Mapping[str, object] | None = None,
    backbone: str | None = "test_resnet",
    evaluate: bool = True,
    evaluate_args: Sequence[str] = ("--no-plots",),
) -> TrainedRun:
    """``bnnkit train RECIPE`` with :func:`tiny_overrides`, then ``bnnkit evaluate RUN``.

    Runs go to ``workdir/runs``, the feature cache to ``workdir/.bnnkit-cache``; ``data`` defaults
    to :func:`synth_data` under ``workdir/data``. ``backbone`` (``pretrained = false``) replaces
    the recipe's, ``None`` keeps it; ``sets`` are extra recipe overrides (key -> TOML value).
    Failures raise AssertionError with the command's output.
    """
    workdir = Path(workdir)
    root = Path(data) if data is not None else synth_data(workdir / "data")
    extra: dict[str, object] = {}
    if backbone is not None:
        extra = {"model.backbone.name": json.dumps(backbone), "model.backbone.pretrained": False}
    extra.update(sets or {})
    runs = workdir / "runs"
    before = {p for p in runs.iterdir()} if runs.is_dir() else set()
    train_output = invoke(
        [
            "train",
            str(recipe),
            "--runs-dir",
            str(runs),
            "--cache-dir",
            str(workdir / ".bnnkit-cache"),
            "-q",
            *tiny_overrides(root, **extra),
        ]
    )
    new = [p for p in runs.iterdir() if p.is_dir() and p not in before]
    if len(new) != 1:
        raise AssertionError(f"expected one new run under {runs}, found {sorted(new)}")
    run = new[0]
    if not evaluate:
        return TrainedRun(run, {}, train_output, "")
    from bnnkit.run import RunLayout

    evaluate_output = invoke(["evaluate", str(run), *evaluate_args])
    metrics = json.loads(RunLayout(run).metrics.read_text(encoding="utf-8"))
    return TrainedRun(run, metrics, train_output, evaluate_output)


# -- method conformance ---------------------------------------------------------------------------
def _expect_deterministic(method: InferenceMethod) -> bool:
    from bnnkit.methods.base import InferenceMethod
    from bnnkit.model.heads import Head

    head_sampler = getattr(type(method.head), "sample_logits", None)
    return (
        type(method).sample is InferenceMethod.sample
        and type(method).sample_logits is InferenceMethod.sample_logits
        and head_sampler is Head.sample_logits
    )


def _draw(method: InferenceMethod, features: Tensor, k: int, seed: int) -> Tensor:
    import torch

    torch.manual_seed(seed)
    return method.sample(features, k)


def check_method(
    method: InferenceMethod,
    features: Tensor,
    *,
    fresh: Callable[[], InferenceMethod] | None = None,
    k: int = 8,
    rows: int | None = None,
    deterministic: bool | None = None,
    atol: float = 1e-5,
) -> None:
    """Assert that ``method`` (trained or not) behaves as evaluation and checkpoints expect.

    - ``sample(features, k)`` (head in eval mode, no grad) returns finite probabilities of shape
      ``(k, B, C)`` (``C`` = the head's ``num_classes``) in ``[0, 1]`` that sum to 1; also for
      ``k = 1``. ``rows`` replaces ``k`` as the expected first dimension for methods with a fixed
      number of posterior members (the ``ensemble`` returns one row per member whatever ``k``);
    - the same global seed gives the same samples;
    - ``deterministic`` (default: inferred, True when neither the method nor the head overrides
      sampling): every sample equals ``softmax(head(features))`` and calls agree;
    - with ``fresh`` (builds an untrained method of the same configuration): ``extra_state()``
      is saved and loaded with safetensors and ``extra_meta()`` through JSON, as a checkpoint
      does; loaded into ``fresh()`` with the head's parameters, it samples the same.
    """
    import torch

    head = method.head
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            _check_samples(method, features, k, rows, atol)
            if deterministic is None:
                deterministic = _expect_deterministic(method)
            if deterministic:
                point = torch.softmax(head(features), dim=-1)
                for seed in (1, 2):
                    torch.testing.assert_close(
                        _draw(method, features, k, seed),
                        point.expand(k if rows is None else rows, *point.shape),
                        msg=lambda m: f"deterministic method: samples differ ({m})",
                    )
            if fresh is not None:
                _check_round_trip(method, fresh, features, k)
    finally:
        head.train(was_training)


def _check_samples(
    method: InferenceMethod, features: Tensor, k: int, rows: int | None, atol: float
) -> None:
    import torch

    name = type(method).__name__
    batch = features.shape[0]
    classes = getattr(method.head, "num_classes", None)
    for kk in (k, 1):
        probs = _draw(method, features, kk, seed=0)
        assert isinstance(probs, torch.Tensor), f"{name}.sample returned {type(probs).__name__}"
        c = probs.shape[-1] if classes is None else classes
        n = kk if rows is None else rows
        assert tuple(probs.shape) == (n, batch, c), (
            f"{name}.sample(features[{batch}, D], {kk}) has shape {tuple(probs.shape)}, "
            f"expected ({n}, {batch}, {c})"
        )
        assert probs.is_floating_point() and torch.isfinite(probs).all(), f"{name}: non-finite"
        assert probs.min() >= 0 and probs.max() <= 1, f"{name}.sample: values outside [0, 1]"
        sums = probs.sum(-1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=atol), (
            f"{name}.sample: probabilities sum to {sums.min().item()}..{sums.max().item()}, not 1"
        )
    torch.testing.assert_close(
        _draw(method, features, k, 0),
        _draw(method, features, k, 0),
        msg=lambda m: f"{name}.sample is not reproducible under the same seed ({m})",
    )


def _check_round_trip(
    method: InferenceMethod, fresh: Callable[[], InferenceMethod], features: Tensor, k: int
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    name = type(method).__name__
    state = method.extra_state()
    bad = [key for key, v in state.items() if not isinstance(v, torch.Tensor)]
    assert not bad, f"{name}.extra_state() values must be tensors: {bad}"
    meta = method.extra_meta()
    try:
        meta_text = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name}.extra_meta() is not JSON-serialisable: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "state.safetensors")
        save_file(state, path)  # refuses shared or non-contiguous tensors, as checkpoints do
        loaded = load_file(path)
    again = fresh()
    again.head.load_state_dict(method.head.state_dict())
    again.load_extra_state(loaded)
    again.load_extra_meta(json.loads(meta_text))
    again.head.eval()
    restored = json.loads(json.dumps(again.extra_meta(), sort_keys=True))
    assert restored == json.loads(meta_text), f"{name}: extra_meta did not round-trip"
    torch.testing.assert_close(
        _draw(again, features, k, 0),
        _draw(method, features, k, 0),
        msg=lambda m: f"{name}: a method restored from its state samples differently ({m})",
    )


def __getattr__(name: str) -> Any:
    """``check_score`` (:func:`bnnkit.scores.conformance.check_score`), imported on first use so
    that importing this module does not import torch."""
    if name == "check_score":
        from bnnkit.scores.conformance import check_score

        return check_score
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
