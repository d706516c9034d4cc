"""Ranking the candidates of one attempt: tests first, then the policy's risk, then the smaller diff.

With ``run.candidates`` above 1 several candidates of a step are verified side by side; the ranking
names the one that goes on to be judged and signed and, for each other one, the first criterion on
which it lost. Values and one git read (a diff's size); the loop keeps the ranking beside the
attempt and the run's ADR lists it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from orchestrator.gate.judge import Judgement
from orchestrator.store import gitops
from orchestrator.store.reports import TestReport
from orchestrator.store.verdicts import Decision, Risk


class Tier(IntEnum):
    """What the tests said, best first."""

    PASSED = 0
    NO_TESTS = 1  # nothing failed, nothing showed it works: the policy decides
    BROKEN = 2
    NOT_VERIFIED = 3  # its edits did not apply, or the model gave none


@dataclass(frozen=True)
class Entrant:
    """One candidate as verification left it: its commit, its report, the policy's verdict on it."""

    index: int
    label: str
    commit: str | None = None
    error: str = ""  # why it has no commit
    report: TestReport | None = None
    judgement: Judgement | None = None  # for those whose tests did not break
    diff_lines: int = 0

    @property
    def tier(self) -> Tier:
        if self.commit is None or self.report is None:
            return Tier.NOT_VERIFIED
        if self.report.ok:
            return Tier.PASSED
        return Tier.NO_TESTS if self.report.no_tests else Tier.BROKEN

    @property
    def rejected(self) -> bool:
        return self.judgement is not None and self.judgement.decision == Decision.REJECT

    @property
    def eligible(self) -> bool:
        """May go on to be judged and signed."""
        return self.tier <= Tier.NO_TESTS and not self.rejected

    def key(self) -> tuple[int, int, int, int, int]:
        risk = self.judgement.risk.rank if self.judgement is not None else len(Risk)
        return (self.tier, int(self.rejected), risk, self.diff_lines, self.index)


class Standing(BaseModel):
    """One candidate in the ranking, as the run's records show it."""

    model_config = ConfigDict(frozen=True)

    index: int
    label: str
    commit: str | None
    tests: str
    decision: Decision | None
    risk: Risk | None
    reasons: list[str]  # the policy's, when it asked for more than approval
    diff_lines: int
    won: bool
    why: str  # why it lost; empty for the winner


class Ranking(BaseModel):
    """The candidates of one attempt, best first; ``winner`` None when none may go on."""

    model_config = ConfigDict(frozen=True)

    winner: int | None
    standings: list[Standing]

    def standing(self, index: int) -> Standing:
        return next(s for s in self.standings if s.index == index)


def rank(entrants: list[Entrant]) -> Ranking:
    """Order ``entrants`` (tests, then risk, then diff size, then the order they were asked for) and say why."""
    ordered = sorted(entrants, key=Entrant.key)
    best = ordered[0] if ordered and ordered[0].eligible else None
    standings = [
        Standing(
            index=e.index,
            label=e.label,
            commit=e.commit,
            tests=e.report.summary if e.report is not None else e.error,
            decision=e.judgement.decision if e.judgement else None,
            risk=e.judgement.risk if e.judgement else None,
            reasons=e.judgement.reasons if e.judgement else [],
            diff_lines=e.diff_lines,
            won=e is best,
            why="" if e is best else _why_lost(e, best),
        )
        for e in ordered
    ]
    return Ranking(winner=best.index if best else None, standings=standings)


def _why_lost(loser: Entrant, best: Entrant | None) -> str:
    if loser.tier == Tier.NOT_VERIFIED:
        return loser.error.splitlines()[0] if loser.error else "not verified"
    if loser.tier == Tier.BROKEN:
        assert loser.report is not None
        return f"tests: {loser.report.summary}"
    if loser.rejected:
        assert loser.judgement is not None
        return "policy: reject" + (f" ({loser.judgement.reasons[0]})" if loser.judgement.reasons else "")
    if best is None:
        return "no candidate may go on"
    name = f"candidate {best.index}"
    if loser.tier != best.tier:
        return f"no tests ran; {name}'s passed"
    if loser.judgement and best.judgement and loser.judgement.risk != best.judgement.risk:
        return f"risk {loser.judgement.risk} against {best.judgement.risk} for {name}"
    if loser.diff_lines != best.diff_lines:
        return f"larger diff: {loser.diff_lines} lines against {best.diff_lines} for {name}"
    return f"as good as {name}, which was asked for first"


def diff_lines(repo: Path, base: str, commit: str) -> int:
    """Lines added and removed by ``base..commit`` (a binary file counts as one)."""
    total = 0
    for line in gitops.run(repo, "diff", "--numstat", base, commit).splitlines():
        added, removed, _path = line.split("\t", 2)
        total += int(added) + int(removed) if added != "-" else 1
    return total
