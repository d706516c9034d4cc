"""Base versus candidate: which of the base generation's passing tests the candidate no longer passes.

:func:`compare` is pure: the base's report (run on the candidate's environment, see
``sandbox.reference``) and the candidate's in, a :class:`TestComparison` out. Every test id
that passed at base must be collected and pass in the candidate; each one that did not is named
under what became of it. The policy's ``baseline`` rule (``policy.integrity``) turns it into reasons.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.store.reports import TestReport


class Renamed(BaseModel):
    """A base test gone, and the new test of the same file that looks like it under another name."""

    model_config = ConfigDict(frozen=True)

    old: str
    new: str
    passes: bool


class TestComparison(BaseModel):
    """What became of the base's passing tests in the candidate (each list names test ids)."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(frozen=True)

    base: str = Field(description="the base commit")
    scope: Literal["all", "selected"] = "all"
    base_ran: bool = True
    base_collected: int = 0
    collected: int = 0
    vanished: list[str] = Field(default_factory=list, description="passed at base, not collected now")
    renamed: list[Renamed] = Field(default_factory=list, description="vanished ones that look renamed")
    skipped: list[str] = Field(default_factory=list, description="passed at base, skipped or xfail now")
    deselected: list[str] = Field(default_factory=list, description="passed at base, deselected now")
    failing: list[str] = Field(default_factory=list, description="passed at base, failed or errored now")
    nothing_collected: bool = Field(default=False, description="the candidate collected nothing; the base did")
    base_tampered: list[str] = Field(default_factory=list, description="the base run's own forgery evidence")

    @property
    def lost(self) -> list[str]:
        """Every base-passing test the candidate does not pass."""
        return [*self.vanished, *self.skipped, *self.deselected, *self.failing]

    @property
    def count_dropped(self) -> bool:
        return self.collected < self.base_collected

    @property
    def weakened(self) -> bool:
        """The candidate passes less than the base did."""
        return bool(self.lost) or self.count_dropped or self.nothing_collected


def _file(test_id: str) -> str:
    return test_id.split("::", 1)[0]


def _in_scope(test_id: str, scope: Sequence[str] | None) -> bool:
    return scope is None or any(test_id == s or _file(test_id) == s.split("::", 1)[0] for s in scope)


def _known(report: TestReport) -> list[str]:
    """The ids a report knows of: its collection when witnessed, else every outcome it lists."""
    if report.collected is not None:
        return report.collected
    return [*report.passed, *report.failed, *report.errored, *report.skipped]


def compare(
    base_commit: str, base: TestReport, candidate: TestReport, scope: Sequence[str] | None = None
) -> TestComparison:
    """The candidate's ``report`` against the base's; ``scope``: only the base tests of these files/ids count."""
    base_passed = [t for t in base.passed if _in_scope(t, scope)]
    base_known = [t for t in _known(base) if _in_scope(t, scope)]
    known = [t for t in _known(candidate) if _in_scope(t, scope)]
    passed, skipped = set(candidate.passed), set(candidate.skipped)
    deselected, failing = set(candidate.deselected), {*candidate.failed, *candidate.errored}
    found: dict[str, list[str]] = {"vanished": [], "skipped": [], "deselected": [], "failing": []}
    for test in base_passed:
        if test in passed:
            continue
        kind = (
            "deselected"
            if test in deselected
            else "skipped"
            if test in skipped
            else "failing"
            if test in failing
            else "vanished"
        )
        found[kind].append(test)
    return TestComparison(
        base=base_commit,
        scope="all" if scope is None else "selected",
        base_ran=base.ran,
        base_collected=len(base_known),
        collected=len(known),
        renamed=_renamed(found["vanished"], set(base_known), known, passed),
        nothing_collected=bool(base_known) and (candidate.no_tests or (candidate.ran and not known)),
        base_tampered=list(base.tampered),
        **found,
    )


def _renamed(vanished: list[str], base_known: set[str], known: list[str], passed: set[str]) -> list[Renamed]:
    """Pair each vanished test with the most alike new test of its file, if one is alike enough."""
    new = [t for t in known if t not in base_known]
    pairs = []
    for old in vanished:
        same_file = [t for t in new if _file(t) == _file(old)]
        name = old.rsplit("::", 1)[-1]
        best = difflib.get_close_matches(name, [t.rsplit("::", 1)[-1] for t in same_file], n=1, cutoff=0.6)
        if best:
            match = next(t for t in same_file if t.rsplit("::", 1)[-1] == best[0])
            pairs.append(Renamed(old=old, new=match, passes=match in passed))
    return pairs
