"""The Python API the command line is built on: train a recipe, load a run, evaluate, predict.

For notebooks and scripts, as timm and laplace-torch are libraries first::

    import bnnkit

    run = bnnkit.train("quickstart", ["data.root=data/synth", "train.epochs=1"])
    metrics = run.evaluate(ood=["midjourney"])          # what metrics.json holds
    records = run.predict(["photo.jpg", "folder/"])     # one dict per image, as `--format json`
    run = bnnkit.Run.load("runs/quickstart-20261121-101500")   # or Run.latest()

Every ``bnnkit train | evaluate | predict`` call goes through these functions, so the API and the
CLI give the same numbers for the same run (``tests/test_api.py`` checks it). Heavy imports
(torch, timm) happen on first use, so ``import bnnkit`` stays light.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.run.dirs import DEFAULT_RUNS_ROOT, latest_run, resolve_run
from bnnkit.run.layout import RunLayout

DEFAULT_CACHE = Path(".bnnkit-cache")


def _device(device: Any, recipe_device: str = "auto") -> tuple[Any, str]:
    from bnnkit.engine.device import resolve_device

    return resolve_device(device, recipe_device)


@dataclass(frozen=True)
class Run:
    """A run directory (``runs/<recipe>-<timestamp>/``): everything needed to evaluate, predict
    and resume. Cheap to create; files are read when asked for. ``result`` is the
    :class:`bnnkit.engine.train.state.TrainResult` when the run comes from :func:`train`."""

    path: Path
    result: Any = field(default=None, compare=False, repr=False)

    # -- finding runs ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, runs_dir: str | Path = DEFAULT_RUNS_ROOT) -> Run:
        """The run at ``path``; ``None`` means the newest run under ``runs_dir``."""
        return cls(resolve_run(path, runs_dir))

    @classmethod
    def latest(cls, runs_dir: str | Path = DEFAULT_RUNS_ROOT) -> Run:
        return cls(latest_run(runs_dir))

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.path)

    # -- what it holds ---------------------------------------------------------------------------
    @property
    def recipe(self):
        """The resolved recipe (:class:`bnnkit.recipe.Recipe`) the run was trained with."""
        from bnnkit.recipe import load_run_recipe

        return load_run_recipe(self.layout.recipe)

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The last evaluation's ``metrics.json`` (``None`` before the first evaluation)."""
        f = self.layout.metrics
        return json.loads(f.read_text()) if f.is_file() else None

    @property
    def history(self) -> list[dict[str, str]]:
        """``history.csv`` as a list of rows (one per epoch and phase)."""
        from bnnkit.report import read_history

        return read_history(self.path)

    # -- work ------------------------------------------------------------------------------------
    def evaluate(
        self,
        ood: Sequence[str] | None = None,
        *,
        samples: int | None = None,
        device: Any = "auto",
        console: Any = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Evaluate on the recipe's generators (and ``ood``, unseen ones); writes metrics.json,
        predictions.csv, threshold.json, plots and report.md into the run and returns the
        metrics. ``options`` are :func:`bnnkit.engine.evaluate.run.evaluate_run`'s (``data_root``,
        ``degradations``, ``coverage``, ``abstain_on``, ``plots``, ``overrides``, ``tiles``,
        ``scores``, ``score_options``, ``fit_limit``). ``benchmarks=["NAME=ROOT[:LAYOUT]", ...]``
        evaluates on those data roots instead, in one pass (``bnnkit evaluate --data``,
        :mod:`bnnkit.engine.evaluate.benchmarks`; no ``ood``, ``degradations`` or ``tiles``)."""
        from bnnkit.engine.evaluate.run import evaluate_run_dir

        if options.get("benchmarks"):
            from bnnkit.engine.evaluate.benchmarks import evaluate_benchmarks_dir

            if ood or options.get("degradations") or options.get("tiles"):
                raise ValueError("benchmarks= does not combine with ood, degradations or tiles")
            specs = options.pop("benchmarks")
            return evaluate_benchmarks_dir(
                self.path, specs, samples=samples, device=device, console=console, **options
            )
        return evaluate_run_dir(
            self.path, ood, samples=samples, device=device, console=console, **options
        )

    def calibrate(
        self, *, samples: int | None = None, device: Any = "auto", data_root: str | None = None
    ) -> dict[str, Any]:
        """Fit the post-hoc temperature on the run's calibration images and write
        ``temperature.json`` (what it holds is returned); evaluate and predict then apply it
        (:func:`bnnkit.engine.posthoc.calibrate.calibrate_run`)."""
        from bnnkit.engine.posthoc.calibrate import calibrate_run
        from bnnkit.run.data_root import data_root_hint

        dev, _ = _device(device)
        with data_root_hint(self.path, data_root):  # names --data-root
            return calibrate_run(self.path, samples=samples, device=dev, data_root=data_root)

    def predict(
        self,
        inputs: Sequence[str | Path] | str | Path,
        *,
        samples: int | None = None,
        device: Any = "auto",
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Judge image files and folders: one record per image (``path``, ``verdict`` real |
        fake | uncertain, ``p_fake``, ``total``, ``aleatoric``, ``epistemic``, ``error``), the
        same as ``bnnkit predict --format json``. ``options`` are
        :func:`bnnkit.engine.predict.run.predict_run`'s (``batch_size``, ``p_threshold``,
        ``abstain``, ``max_uncertainty``, ``explain``, ``explain_dir``)."""
        return self.predict_result(inputs, samples=samples, device=device, **options).rows

    def predict_result(
        self,
        inputs: Sequence[str | Path] | str | Path,
        *,
        samples: int | None = None,
        device: Any = "auto",
        **options: Any,
    ):
        """:meth:`predict` with everything the CLI shows: rows, K, the abstention rule, the
        explain folder and warnings (:class:`bnnkit.engine.predict.run.PredictResult`)."""
        from bnnkit.engine.predict.run import predict_run

        if isinstance(inputs, str | Path):
            inputs = [inputs]
        dev, _ = _device(device)
        paths = [Path(p) for p in inputs]
        return predict_run(self.path, paths, device=dev, samples=samples, **options)

    def resume(self, **options: Any) -> Run:
        """Continue training from the last checkpoint (see :func:`train`'s options)."""
        return train(resume=self.path, **options)


def train(
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    runs_dir: str | Path = DEFAULT_RUNS_ROOT,
    cache_dir: str | Path = DEFAULT_CACHE,
    device: Any = "auto",
    console: Any = None,
    on_start: Any = None,
):
    """Train ``recipe`` (a TOML file or a bundled recipe's name) with ``--set``-style
    ``overrides`` (``"train.epochs=3"``), or continue the run ``resume``; return the
    :class:`Run`. ``console`` (a rich Console) shows progress bars; ``None`` is quiet.
    ``on_start(run_dir, recipe, device_note, dist)`` is called once the run directory exists
    (the CLI prints its header there). Under ``torchrun`` every rank calls this; rank 0 writes.
    The trainer's summary (history, seconds, skipped files) is ``run.result``."""
    from bnnkit.engine.train.run import train_run

    run_dir, result = train_run(
        recipe, overrides, resume=resume, runs_dir=runs_dir, cache_dir=cache_dir,
        device=device, console=console, on_start=on_start,
    )  # fmt: skip
    return Run(run_dir, result)


def run_protocol(
    protocol: str,
    recipes: Sequence[str | Path] | str | Path,
    overrides: Sequence[str] = (),
    *,
    out: str | Path | None = None,
    **options: Any,
):
    """Run the GenImage protocol ``protocol`` (``"sdv4"``, ``"cross"`` or ``"loo"``) for each
    recipe, every cell an ordinary run under ``out`` (default ``protocols/<name>-<timestamp>``);
    write ``protocol.json``, ``table.md|tex|csv`` and ``heatmap.png`` there and return the
    :class:`bnnkit.engine.protocol.run.ProtocolResult`. Calling it again with the same ``out``
    skips the done cells and resumes an interrupted one. ``options`` are
    :func:`bnnkit.engine.protocol.run.run_protocol`'s (``generators``, ``cache_dir``, ``score``,
    ``abstain_on``, ``device``, ``plots``, ``launcher``, ``jobs``, ``slurm``, ``on_cell``)::

        result = bnnkit.api.run_protocol("sdv4", "quickstart", ["data.root='data/synth'"])
        result.rows[-1]["accuracy"]["midjourney"]
    """
    from bnnkit.engine.protocol.cells import new_protocol_dir
    from bnnkit.engine.protocol.run import run_protocol as _run

    if isinstance(recipes, str | Path):
        recipes = [recipes]
    folder = Path(out) if out is not None else new_protocol_dir(protocol)
    return _run(protocol, [str(r) for r in recipes], list(overrides), out=folder, **options)
