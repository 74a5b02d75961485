"""Reading ``history.csv`` by who trained: one detector, or the members of a deep ensemble of
whole detectors (``inference.members = "detectors"``), whose rows are the members' own histories
with the phase prefixed ``m<i>:`` and one last ``ensemble`` row (the members validated together).

The training-curve plot, ``report.md`` and ``bnnkit train``'s last line read a member history
per member (epochs restarting at 1 for each) instead of as one run's epochs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ENSEMBLE_PHASE", "MemberHistory", "member_history", "member_phase"]

#: the phase of the history row of the assembled ensemble (after its members' rows)
ENSEMBLE_PHASE = "ensemble"
_MEMBER = re.compile(r"^m(\d+):(.*)$")


def member_phase(index: int, phase: str) -> str:
    """The phase of member ``index``'s row ``phase`` in the ensemble's history."""
    return f"m{index}:{phase}"


@dataclass
class MemberHistory:
    """The rows of each member (phase prefix stripped), in member order, and the ensemble's row
    (validation of the members together), if written."""

    members: list[list[dict[str, Any]]] = field(default_factory=list)
    ensemble: Mapping[str, Any] | None = None

    def epochs(self) -> list[int]:
        """The number of epochs each member trained (over all its phases)."""
        return [len(rows) for rows in self.members]

    def last(self, key: str) -> list[float | None]:
        """Each member's value of ``key`` at its last epoch (None when missing)."""
        return [_float(rows[-1].get(key)) if rows else None for rows in self.members]


def member_history(history: Sequence[Mapping[str, Any]]) -> MemberHistory | None:
    """The member histories of a whole-detector ensemble's history; None for any other run."""
    by_member: dict[int, list[dict[str, Any]]] = {}
    ensemble = None
    for row in history:
        phase = str(row.get("phase", ""))
        match = _MEMBER.match(phase)
        if match is not None:
            by_member.setdefault(int(match[1]), []).append({**row, "phase": match[2]})
        elif phase == ENSEMBLE_PHASE:
            ensemble = row
        else:
            return None
    if not by_member:
        return None
    return MemberHistory([by_member[i] for i in sorted(by_member)], ensemble)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
