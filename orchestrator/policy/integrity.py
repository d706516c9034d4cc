"""The rules that keep the tests honest: a forged run, and tests the candidate passes fewer of than the base.

``tampered`` reads the candidate's test report: evidence that the test process forged its results
rejects the change, whoever proposed it. ``baseline`` reads the base-versus-candidate comparison
(``policy.baseline``): a base-passing test that vanished, was renamed, became skipped, xfail or
deselected, or a collection that shrank, is named; a model's change is rejected
(``checks.lost_tests``), a person's needs review at least (``checks.lost_tests_human``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from orchestrator.policy.change import ChangeInput
from orchestrator.policy.model import Policy
from orchestrator.policy.verdict import Decision, Reason, Risk

SHOWN = 10  # test ids named in one reason


def names(ids: Sequence[str]) -> str:
    """``a, b, c`` (and how many more past :data:`SHOWN`)."""
    more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return ", ".join(ids[:SHOWN]) + more


def tampered(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """A test run whose results were forged is rejected, with the evidence."""
    tests = change.tests
    for item in tests.tampered if tests is not None else []:
        yield Reason(rule="tampered", message=f"forged test results: {item}", decision=Decision.REJECT, risk=Risk.HIGH)


def baseline(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Tests that passed at base and do not pass now, named; reject for a model, review for a person."""
    found = change.baseline
    if found is None:
        return
    human = change.author.agent is None
    decision = Decision(policy.checks.lost_tests_human if human else policy.checks.lost_tests)

    def reason(message: str, risk: Risk = Risk.HIGH) -> Reason:
        return Reason(rule="baseline", message=message, decision=decision, risk=risk)

    renamed = {r.old: r for r in found.renamed}
    vanished = [t for t in found.vanished if t not in renamed]
    if vanished:
        yield reason(f"passed at base, no longer collected (removed, renamed or hidden): {names(vanished)}")
    for r in renamed.values():
        now = "passes" if r.passes else "does not pass"
        yield reason(f"passed at base, renamed: {r.old} -> {r.new} (which {now})")
    for what, ids in (
        ("now skipped or xfail", found.skipped),
        ("now deselected", found.deselected),
        ("now failing", found.failing),
    ):
        if ids:
            yield reason(f"passed at base, {what}: {names(ids)}")
    if found.nothing_collected:
        yield reason(f"nothing collected (pytest exit 5) where the base collected {found.base_collected} tests")
    elif found.count_dropped:
        yield reason(f"{found.base_collected} tests collected at base, {found.collected} now")
    if found.base_tampered:
        message = f"the base generation's own test run looks forged: {found.base_tampered[0]}"
        yield Reason(rule="baseline", message=message, decision=Decision.REVIEW, risk=Risk.HIGH)
