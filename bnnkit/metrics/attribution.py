"""Open-set generator attribution (``data.labels = "generator"``).

A generator-attribution head has ``1 + G`` classes: class 0 real, class ``1 + g`` the fakes of
the g-th training generator (``data.train_generators`` order). p(fake) stays ``1 - p(real)``
(:meth:`bnnkit.metrics.records.Predictions.from_probs`), so every binary number is that of the
collapsed real-vs-fake predictive; this module adds what only the classes tell:

- :func:`class_targets`: the training targets from the binary label and the generator index;
- :func:`attribution_block`: accuracy of the most likely generator over the seen generators'
  fakes, the confusion matrix (true seen generator -> predicted class, real included) and, per
  held-out generator, the mean probability of its most likely training generator. Whether a
  held-out generator's fake is recognised as unknown is told by the abstention scores, which
  evaluate reports for every run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["REAL", "attribution_block", "class_targets", "generator_of", "most_likely"]

#: the name of class 0 in confusion matrices and predictions
REAL = "real"


def class_targets(labels: Tensor, generators: Tensor) -> Tensor:
    """Class indices of a (1 + G)-class head: 0 for a real image, ``1 + g`` for a fake of the
    g-th training generator (``generators`` index ``data.train_generators``)."""
    return torch.where(labels.long() == 1, 1 + generators.long(), torch.zeros_like(labels).long())


def most_likely(class_probs: Tensor) -> Tensor:
    """Per image, the index ``g`` of the most likely training generator (argmax over the G fake
    classes, whatever p(real) is)."""
    return class_probs[:, 1:].argmax(-1)


def generator_of(class_probs: Tensor, names: list[str]) -> list[str]:
    """The name of each image's most likely training generator (:func:`most_likely`)."""
    return [names[int(g)] for g in most_likely(class_probs)]


def attribution_block(record: Any, generators: list[str], n_seen: int) -> dict[str, Any]:
    """The ``attribution`` block of metrics.json from an evaluation record holding
    ``class_probs`` (``generators``: the evaluation's list, the first ``n_seen`` seen, in the
    training order the head's classes follow)."""
    seen_names = generators[:n_seen]
    probs, gens, labels = record.class_probs, record.generators.long(), record.labels.long()
    fakes_seen = (labels == 1) & (gens < n_seen)
    pick = most_likely(probs) if len(probs) else torch.zeros(0, dtype=torch.long)
    n = int(fakes_seen.sum())
    correct = int((pick[fakes_seen] == gens[fakes_seen]).sum()) if n else 0
    columns = [REAL, *seen_names]
    verdict = probs.argmax(-1) if len(probs) else torch.zeros(0, dtype=torch.long)
    matrix = []
    for g in range(n_seen):
        rows = fakes_seen & (gens == g)
        matrix.append([int((verdict[rows] == c).sum()) for c in range(len(columns))])
    unseen: dict[str, Any] = {}
    for g in range(n_seen, len(generators)):
        rows = (labels == 1) & (gens == g)
        if not int(rows.sum()):
            continue
        top = probs[rows][:, 1:]
        unseen[generators[g]] = {
            "n": int(rows.sum()),
            "mean_max_generator_prob": float(top.max(-1).values.double().mean()),
            "most_often": seen_names[int(torch.bincount(top.argmax(-1)).argmax())],
        }
    return {
        "classes": columns,
        "accuracy": correct / n if n else float("nan"),
        "n": n,
        "confusion": {"rows": seen_names, "columns": columns, "counts": matrix},
        "unseen": unseen,
        "rule": "accuracy: argmax over the G fake classes on the seen generators' fakes; "
        "confusion: argmax over all 1 + G classes (real first); unseen: mean of the most "
        "likely training generator's probability (unknown-generator flags: the abstention "
        "scores)",
    }
