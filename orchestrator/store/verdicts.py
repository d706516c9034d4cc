"""The two ordered scales every verdict, changeset and review uses: ``Decision`` and ``Risk``.

Defined once, at the bottom, because the store records them and the policy, the gate and the
loop decide with them.
"""

from __future__ import annotations

from enum import StrEnum


class Decision(StrEnum):
    """What happens to a changeset; ordered approve < review < reject."""

    APPROVE = "approve"
    REVIEW = "review"
    REJECT = "reject"

    @property
    def rank(self) -> int:
        return _DECISION_RANK[self]


class Risk(StrEnum):
    """How much a changeset could hurt; ordered low < medium < high."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RISK_RANK[self]


_DECISION_RANK = {Decision.APPROVE: 0, Decision.REVIEW: 1, Decision.REJECT: 2}
_RISK_RANK = {Risk.LOW: 0, Risk.MEDIUM: 1, Risk.HIGH: 2}
