"""The evaluation's per-generator tables (one row per generator, then the seen and unseen
pools): detection (with the real and fake accuracies, R.Acc / F.Acc, that forensic papers print
beside accuracy), forensic (EER, oracle-threshold accuracy, Cllr, TPR at fixed false-alarm
rates) and calibration. Built on :mod:`bnnkit.report.tables`; rendered by its renderers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bnnkit.report.tables import Column, Label, Table, _label

__all__ = ["calibration_table", "detection_table", "forensic_table"]


def _get(name: str):
    """A column reading ``name`` from a generator entry; missing in a metrics.json written
    before the key existed (shown as a dash)."""
    return lambda row: row[1].get(name)


def _generator_rows(m: Mapping[str, Any]) -> tuple[list[tuple[Label, Any]], tuple[int, ...]]:
    rows = [(Label(n, unseen=not e.get("seen", True)), e) for n, e in m["per_generator"].items()]
    families = m.get("families") or {}
    if families:  # grouped by family (a manifest's family column), in order of appearance
        order = list(dict.fromkeys(families.get(label.text) for label, _ in rows))
        rows.sort(key=lambda r: order.index(families.get(r[0].text)))
    section = (len(rows),)
    rows.append((Label("all seen", strong=True), m["seen"]))
    if m.get("unseen"):
        rows.append((Label("all unseen", strong=True, unseen=True), m["unseen"]))
    return rows, section


#: (header, key of a generator entry, Column options) of the per-generator tables; the columns
#: several tables share are defined once
_N = ("n", "n", {})
_REAL_FAKE = [("R.Acc", "real_accuracy", {}), ("F.Acc", "fake_accuracy", {})]
_TPR = [
    ("TPR@1%FPR", "tpr_at_fpr_1", {"short": "TPR@1%"}),
    ("TPR@5%FPR", "tpr_at_fpr_5", {"short": "TPR@5%"}),
]
_DETECTION = [
    _N,
    ("acc", "accuracy", {}),
    *_REAL_FAKE,
    ("bal. acc", "balanced_accuracy", {"short": "bal.acc"}),
    ("AUROC", "auroc", {}),
    ("AP", "ap", {}),
    *_TPR,
]
_CALIBRATION = [
    ("NLL", "nll", {}),
    ("Brier", "brier", {}),
    ("ECE", "ece", {}),
    ("adaptive ECE", "adaptive_ece", {"short": "aECE"}),
    ("total", "total_uncertainty", {}),
    ("aleatoric", "aleatoric_uncertainty", {"short": "aleat."}),
    ("epistemic", "epistemic_uncertainty", {"short": "epist.", "digits": 4}),
]


def _family_column(m: Mapping[str, Any]) -> list[Column]:
    """The family column, when ``metrics.json`` records generator families (manifests)."""
    families = m.get("families") or {}
    if not families:
        return []
    return [Column("family", lambda row: families.get(getattr(row[0], "text", "")), left=True)]


def _per_generator_table(m: Mapping[str, Any], specs: list, title: str, caption: str) -> Table:
    rows, sections = _generator_rows(m)
    columns = [Column("generator", _label, left=True), *_family_column(m)]
    columns += [Column(header, _get(key), **opts) for header, key, opts in specs]
    return Table(columns, rows, title=title, caption=caption, sections=sections)


def detection_table(m: Mapping[str, Any]) -> Table:
    return _per_generator_table(
        m,
        _DETECTION,
        f"{m['run']}: {m['method']}, K={m['samples']} posterior samples, {m['split']} split",
        "* unseen in training. R.Acc / F.Acc: accuracy on reals / fakes. TPR@1%/5%: fakes "
        "detected at 1%/5% false positives.",
    )


def calibration_table(m: Mapping[str, Any]) -> Table:
    return _per_generator_table(
        m,
        _CALIBRATION,
        "calibration and uncertainty (nats)",
        "total = H(mean p), aleatoric = mean H(p), epistemic = mutual information.",
    )


_FORENSIC = [
    _N,
    *_REAL_FAKE,
    ("EER", "eer", {}),
    ("oracle acc", "oracle_accuracy", {"short": "oracle"}),
    ("Cllr (bits)", "cllr", {"short": "Cllr"}),
    ("TPR@0.1%FPR", "tpr_at_fpr_0_1", {"short": "TPR@0.1%"}),
    *_TPR,
]


def forensic_table(m: Mapping[str, Any]) -> Table:
    """The metrics forensic papers print, per generator (docs/metrics-schema.md)."""
    return _per_generator_table(
        m,
        _FORENSIC,
        "forensic metrics",
        "R.Acc / F.Acc: accuracy on reals / fakes at p(fake) ≥ 0.5. EER: where the "
        "false-positive and false-negative rates meet on the ROC. oracle acc: accuracy at the "
        "best threshold chosen on these very images (an upper bound, not achievable). Cllr: "
        "balanced log-likelihood-ratio cost (0 perfect, 1 uninformative). TPR@x%FPR: fakes "
        "detected at the threshold calling at most x% of the reals fake.",
    )
