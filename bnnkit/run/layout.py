"""Every file name inside a run directory, in one place.

A run directory ``runs/<recipe>-<timestamp>/`` holds::

    recipe.toml              the resolved recipe (bnnkit train)
    checkpoint.json          which tensor files are current, position, method facts
    model-<tag>.safetensors  the detector's parameters and buffers
    state-<tag>.safetensors  method tensors, optimiser and RNG state
    checkpoint-previous/     the checkpoint before the current one (its own checkpoint.json and
                             tensor files), the fallback when the current one is corrupt
    env.json                 versions, device, command line
    history.csv              one row per epoch and phase
    broken_files.json        unreadable images skipped while training (only if any)
    tensorboard/             TensorBoard events (train.log = ["tensorboard"])
    metrics.json             evaluation metrics, schema 2 (bnnkit evaluate)
    timing.json              evaluation/prediction timings
    threshold.json           the calibrated abstention threshold
    temperature.json         the post-hoc temperature (bnnkit calibrate)
    predictions.csv          per-image predictions of the clean evaluation
    report.md                the evaluation report
    plots/*.png              its figures
    eval_partial/            finished conditions of an interrupted evaluation (deleted once done)
    members/m<i>/            a whole-detector ensemble's member runs (ordinary run directories)
    members.json             that ensemble's record of its members (seeds, which are finished)

Other modules use these constants or :class:`RunLayout` and never spell a name themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECIPE_FILE = "recipe.toml"
CHECKPOINT_FILE = "checkpoint.json"
ENV_FILE = "env.json"
HISTORY_FILE = "history.csv"
BROKEN_FILE = "broken_files.json"
METRICS_FILE = "metrics.json"
TIMING_FILE = "timing.json"
THRESHOLD_FILE = "threshold.json"
TEMPERATURE_FILE = "temperature.json"
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
MODEL_GLOB = "model-*.safetensors"
STATE_GLOB = "state-*.safetensors"
PREVIOUS_CHECKPOINT_DIR = "checkpoint-previous"
EVAL_PARTIAL_DIR = "eval_partial"
EVAL_PARTIAL_SUFFIX = ".safetensors"
MEMBERS_DIR = "members"
MEMBERS_FILE = "members.json"

#: plot kind -> file name under ``RUN/plots/``. ``degradations`` only with ``--degrade``;
#: ``severity`` only when a severity sweep ran (``--degrade jpeg@1-5``, ``laundering``).
PLOT_FILES: dict[str, str] = {
    "reliability": "reliability.png",
    "epistemic_histogram": "epistemic_histogram.png",
    "risk_coverage": "risk_coverage.png",
    "roc": "roc_per_generator.png",
    "training_curves": "training_curves.png",
    "degradations": "degradations.png",
    "severity": "severity.png",
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
    TEMPERATURE_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    MEMBERS_FILE,
)


def model_file(tag: str) -> str:
    """The model tensor file of checkpoint ``tag`` (see :data:`MODEL_GLOB`)."""
    return MODEL_GLOB.replace("*", tag)


def state_file(tag: str) -> str:
    """The state tensor file of checkpoint ``tag`` (see :data:`STATE_GLOB`)."""
    return STATE_GLOB.replace("*", tag)


def eval_partial_file(condition: str) -> str:
    """The file of one finished evaluation condition under :data:`EVAL_PARTIAL_DIR`
    (``jpeg:65`` -> ``jpeg_65.safetensors``; the exact name is kept inside the file)."""
    slug = "".join(c if c.isalnum() or c in "-." else "_" for c in condition)
    return f"{slug}{EVAL_PARTIAL_SUFFIX}"


class _Entry:
    """A path inside the run directory, as a read-only attribute of :class:`RunLayout`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, layout: RunLayout | None, owner: type) -> Any:
        return self if layout is None else layout.root / self.name


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory: ``RunLayout(run_dir).metrics`` etc."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    recipe = _Entry(RECIPE_FILE)
    checkpoint = _Entry(CHECKPOINT_FILE)
    env = _Entry(ENV_FILE)
    history = _Entry(HISTORY_FILE)
    broken = _Entry(BROKEN_FILE)
    metrics = _Entry(METRICS_FILE)
    timing = _Entry(TIMING_FILE)
    threshold = _Entry(THRESHOLD_FILE)
    temperature = _Entry(TEMPERATURE_FILE)
    predictions = _Entry(PREDICTIONS_FILE)
    report = _Entry(REPORT_FILE)
    plots = _Entry(PLOTS_DIR)
    tensorboard = _Entry(TENSORBOARD_DIR)

    def plot(self, kind: str) -> Path:
        """``plots/<file>`` of a plot kind in :data:`PLOT_FILES`."""
        return self.plots / PLOT_FILES[kind]

    def model(self, tag: str) -> Path:
        return self.root / model_file(tag)

    def state(self, tag: str) -> Path:
        return self.root / state_file(tag)

    #: the directory of the previous checkpoint (a self-contained checkpoint set)
    previous = _Entry(PREVIOUS_CHECKPOINT_DIR)
    eval_partial = _Entry(EVAL_PARTIAL_DIR)

    #: a whole-detector ensemble's member runs and its record of them
    members = _Entry(MEMBERS_DIR)
    members_record = _Entry(MEMBERS_FILE)

    def member(self, index: int) -> Path:
        """The run directory of ensemble member ``index``: ``members/m<index>``."""
        return self.members / f"m{index}"

    def eval_partial_condition(self, condition: str) -> Path:
        return self.eval_partial / eval_partial_file(condition)

    def tensor_files(self) -> list[Path]:
        """Every model/state tensor file present, of any tag."""
        return [*self.root.glob(MODEL_GLOB), *self.root.glob(STATE_GLOB)]
