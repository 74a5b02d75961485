"""Every file name inside a run directory, in one place.

A run directory ``runs/<recipe>-<timestamp>/`` holds::

    recipe.toml              the resolved recipe (bnnkit train)
    checkpoint.json          which tensor files are current, position, method facts
    model-<tag>.safetensors  the detector's parameters and buffers
    state-<tag>.safetensors  method tensors, optimiser and RNG state
    env.json                 versions, device, command line
    history.csv              one row per epoch and phase
    broken_files.json        unreadable images skipped while training (only if any)
    tensorboard/             TensorBoard events (train.log = ["tensorboard"])
    metrics.json             evaluation metrics, schema 2 (bnnkit evaluate)
    timing.json              evaluation/prediction timings
    threshold.json           the calibrated abstention threshold
    predictions.csv          per-image predictions of the clean evaluation
    report.md                the evaluation report
    plots/*.png              its figures

Other modules use these constants or :class:`RunLayout` and never spell a name themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECIPE_FILE = "recipe.toml"
CHECKPOINT_FILE = "checkpoint.json"
ENV_FILE = "env.json"
HISTORY_FILE = "history.csv"
BROKEN_FILE = "broken_files.json"
METRICS_FILE = "metrics.json"
TIMING_FILE = "timing.json"
THRESHOLD_FILE = "threshold.json"
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
MODEL_GLOB = "model-*.safetensors"
STATE_GLOB = "state-*.safetensors"

#: plot kind -> file name under ``RUN/plots/``. ``degradations`` only with ``--degrade``.
PLOT_FILES: dict[str, str] = {
    "reliability": "reliability.png",
    "epistemic_histogram": "epistemic_histogram.png",
    "risk_coverage": "risk_coverage.png",
    "roc": "roc_per_generator.png",
    "training_curves": "training_curves.png",
    "degradations": "degradations.png",
}

#: the fixed-name files of a run directory (tensor files are named per tag).
RUN_FILES: tuple[str, ...] = (
    RECIPE_FILE,
    CHECKPOINT_FILE,
    ENV_FILE,
    HISTORY_FILE,
    BROKEN_FILE,
    METRICS_FILE,
    TIMING_FILE,
    THRESHOLD_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
)


def model_file(tag: str) -> str:
    """The model tensor file of checkpoint ``tag`` (see :data:`MODEL_GLOB`)."""
    return MODEL_GLOB.replace("*", tag)


def state_file(tag: str) -> str:
    """The state tensor file of checkpoint ``tag`` (see :data:`STATE_GLOB`)."""
    return STATE_GLOB.replace("*", tag)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory: ``RunLayout(run_dir).metrics`` etc."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def env(self) -> Path:
        return self.root / ENV_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def broken(self) -> Path:
        return self.root / BROKEN_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def timing(self) -> Path:
        return self.root / TIMING_FILE

    @property
    def threshold(self) -> Path:
        return self.root / THRESHOLD_FILE

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    def plot(self, kind: str) -> Path:
        """``plots/<file>`` of a plot kind in :data:`PLOT_FILES`."""
        return self.plots / PLOT_FILES[kind]

    def model(self, tag: str) -> Path:
        return self.root / model_file(tag)

    def state(self, tag: str) -> Path:
        return self.root / state_file(tag)

    def tensor_files(self) -> list[Path]:
        """Every model/state tensor file present, of any tag."""
        return [*self.root.glob(MODEL_GLOB), *self.root.glob(STATE_GLOB)]
