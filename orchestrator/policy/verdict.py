"""The policy's answer: decisions and risks (ordered), the reasons rules give, the verdict, reviewer findings.

``Decision`` and ``Risk`` themselves are :mod:`orchestrator.store.verdicts` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.store.verdicts import Decision, Risk

__all__ = ["Action", "Decision", "Escalation", "Finding", "Reason", "Risk", "Verdict", "combine"]

Action = Literal["approve", "review", "reject"]
Escalation = Literal["review", "reject"]


class Reason(BaseModel):
    """Why a rule spoke: its id, a message for people, and where."""

    model_config = ConfigDict(frozen=True)

    rule: str
    message: str
    file: str | None = None
    line: int | None = None
    decision: Decision = Decision.APPROVE
    risk: Risk = Risk.LOW
    excerpt: str | None = None  # what a person should see with it (a diff hunk)

    def to_json(self) -> dict[str, Any]:
        found = {
            "rule": self.rule,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "decision": str(self.decision),
            "risk": str(self.risk),
        }
        return found if self.excerpt is None else {**found, "excerpt": self.excerpt}


class Verdict(BaseModel):
    """The policy's answer for one changeset."""

    model_config = ConfigDict(frozen=True)

    verdict: Decision
    risk: Risk
    reasons: tuple[Reason, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"verdict": str(self.verdict), "risk": str(self.risk), "reasons": [r.to_json() for r in self.reasons]}

    @property
    def rules(self) -> set[str]:
        """Ids of the rules that asked for more than approval."""
        return {r.rule for r in self.reasons if r.decision != Decision.APPROVE}


class Finding(BaseModel):
    """One finding of a reviewer agent: it can raise risk, never lower it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    message: str
    severity: Risk = Risk.LOW
    file: str | None = None
    line: int | None = None


MAX_REASONS_PER_RULE = 25


def combine(reasons: Iterable[Reason]) -> Verdict:
    """The verdict of a set of reasons: the strictest decision and the highest risk."""
    kept: list[Reason] = []
    counts: dict[str, int] = {}
    decision, risk = Decision.APPROVE, Risk.LOW
    for reason in reasons:
        decision = max(decision, reason.decision, key=lambda d: d.rank)
        if reason.decision != Decision.APPROVE:
            risk = max(risk, reason.risk, key=lambda r: r.rank)
        counts[reason.rule] = counts.get(reason.rule, 0) + 1
        if counts[reason.rule] <= MAX_REASONS_PER_RULE:
            kept.append(reason)
    for rule, n in counts.items():
        if n > MAX_REASONS_PER_RULE:
            kept.append(Reason(rule=rule, message=f"... and {n - MAX_REASONS_PER_RULE} more"))
    if decision != Decision.APPROVE and risk == Risk.LOW:
        risk = Risk.MEDIUM
    return Verdict(verdict=decision, risk=risk, reasons=tuple(kept))
