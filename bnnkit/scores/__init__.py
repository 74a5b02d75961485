"""OOD scores (the ``score`` plugin kind): see :mod:`bnnkit.scores.base`."""

from bnnkit.scores.base import Score, ScoreInputs, ScoreNotFitted, StaleFit

__all__ = ["Score", "ScoreInputs", "ScoreNotFitted", "StaleFit"]
