"""``RUN/threshold.json`` and the abstention rule that ``bnnkit predict`` applies.

``bnnkit evaluate`` calibrates, per score, the threshold that keeps the target coverage of
seen-generator validation images, and writes the chosen score's (``--abstain-on``, any score
plugin, with its options, the options of every score it reads and, for a fitted score, the
fingerprint of its fit in the run) here with the K it was calibrated with and the sha256 of the
weights (a threshold is only valid for them). Version 1 files (scores ``total`` / ``epistemic``
of the decomposition) are still read, and so are version 2 files without ``score_options``
(every score the abstention score reads is then rebuilt with its defaults).

The rule: an image's verdict is ``uncertain`` when its ``score`` value is above ``threshold``;
otherwise ``fake`` when p(fake) >= the p-threshold (0.5 by default), else ``real``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from bnnkit.errors import UsageError
from bnnkit.metrics.protocol import UNFITTED_ABSTAIN_SCORE, clean_json
from bnnkit.run.checkpoint import model_path
from bnnkit.run.fileio import atomic_write_text, file_sha256
from bnnkit.run.layout import THRESHOLD_FILE

__all__ = [
    "THRESHOLD_SCHEMA_VERSION",
    "abstention_rule",
    "model_fingerprint",
    "read_threshold",
    "threshold_record",
    "verdict",
    "write_threshold",
]

THRESHOLD_SCHEMA_VERSION = 2
#: versions :func:`read_threshold` reads (1: before score plugins, scores total / epistemic)
THRESHOLD_SCHEMA_VERSIONS = (1, 2)


def model_fingerprint(run_dir: Path) -> str:
    """sha256 of the run's current weights: ``threshold.json`` (and ``temperature.json``, the
    partial evaluations) are only valid for these weights. Hashed once per file version: one
    ``evaluate`` asks several times, and a ResNet-50's weights are ~100 MB."""
    path = model_path(run_dir)
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # size and mtime_ns key the cache: a new file version rehashes


def threshold_record(
    *,
    score: str,
    thresholds: dict[str, float],
    crossfit: dict[str, float],
    coverage: float,
    coverage_seen: float,
    samples: int,
    method: str,
    run_dir: Path,
    options: dict[str, Any] | None = None,
    score_fit: dict[str, Any] | None = None,
    score_options: dict[str, dict[str, Any]] | None = None,
    calibrated_on: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``threshold.json`` (schema 2) for the chosen abstention ``score`` (its
    ``options``; ``score_options``: the options of ``score`` and of every score it reads,
    recursively, by name, so that ``bnnkit predict`` computes the score evaluate calibrated;
    ``score_fit``: for a fitted score, what ``bnnkit predict`` needs to load the fit from the
    run: ``fit_on`` and the fingerprint of each fit it uses)."""
    record = {
        "schema_version": THRESHOLD_SCHEMA_VERSION,
        "score": score,
        "options": dict(options or {}),
        "score_options": {
            **{n: dict(o) for n, o in (score_options or {}).items()},
            score: dict(options or {}),
        },
        "threshold": thresholds[score],
        "coverage_target": coverage,
        "coverage_seen": coverage_seen,
        "coverage_crossfit": crossfit[score],
        "thresholds": thresholds,
        "samples": samples,
        "method": method,
        # the images the thresholds were set on (the calibration split's; an old run's: val)
        "calibrated_on": calibrated_on,
        "model_sha256": model_fingerprint(run_dir),
        "rule": f"verdict 'uncertain' when score {score} > threshold",
    }
    if score_fit:
        record["score_fit"] = score_fit
    return record


def write_threshold(run_dir: Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / THRESHOLD_FILE
    atomic_write_text(path, json.dumps(clean_json(record), indent=2))
    return path


def read_threshold(run_dir: Path) -> dict[str, Any] | None:
    """The run's calibrated abstention threshold, or None if there is none (or it is stale:
    calibrated for other weights than the run's current model file)."""
    path = Path(run_dir) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint="re-run `bnnkit evaluate`") from None
    version, score = data.get("schema_version"), data.get("score")
    if version not in THRESHOLD_SCHEMA_VERSIONS or not isinstance(score, str) or not score:
        raise UsageError(f"{path}: unsupported threshold file", hint="re-run `bnnkit evaluate`")
    if version == 1 and score not in ("total", "epistemic"):
        raise UsageError(f"{path}: unsupported threshold file", hint="re-run `bnnkit evaluate`")
    if data.get("model_sha256") != model_fingerprint(run_dir):
        return None
    return data


def abstention_rule(
    calibrated: dict[str, Any] | None, max_uncertainty: float | None = None
) -> dict[str, Any] | None:
    """The rule ``predict`` applies: ``--max-uncertainty`` on the calibrated score (the total
    predictive entropy when there is no calibration), else the calibrated threshold, else None
    (never abstain). The rule names the score (and its options)."""
    rule: dict[str, Any] | None = None
    if max_uncertainty is not None:
        score = calibrated["score"] if calibrated else UNFITTED_ABSTAIN_SCORE
        rule = {"score": score, "threshold": max_uncertainty, "source": "--max-uncertainty"}
    elif calibrated is not None:
        rule = {
            "score": calibrated["score"],
            "threshold": calibrated["threshold"],
            "coverage_target": calibrated.get("coverage_target"),
            "source": THRESHOLD_FILE,
        }
    if rule is not None and rule["threshold"] is None:
        return None
    if rule is not None and calibrated is not None:
        rule["options"] = calibrated.get("options") or {}
    return rule


def verdict(
    p_fake: float, uncertainty: dict[str, float], p_threshold: float, rule: dict[str, Any] | None
) -> str:
    """``uncertain`` when ``uncertainty[rule's score]`` (the image's scores by name) is above the
    rule's threshold, else ``fake`` / ``real`` at ``p_threshold``."""
    if rule is not None and uncertainty[rule["score"]] > rule["threshold"]:
        return "uncertain"
    return "fake" if p_fake >= p_threshold else "real"
