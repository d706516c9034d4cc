"""Why a run did not get a task done: a failure class and one line, from the run's record and event log.

    plan_invalid         no plan was accepted (the planner's answers did not validate)
    edit_not_applicable  the failed step's last attempt left no applicable edit (bad search text, bad answer)
    tests_failed         the failed step's last attempt was applied but its tests failed
    policy_rejected      policy rejected the last attempt, or wanted a human (which auto-approve cannot give)
    budget_spent         the run's wall-time or token budget ran out
    check_failed         the run ended without failing but the hidden check does not pass (decided by the caller)
    error                anything else: the sandbox, git, a crash in the middle of a step

The last attempt of the failed step decides, because it is what the step ended on: its
``verdict`` event (a rejection), else its ``tests`` event, else no edit was applied.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.evals.drive import RunRecord
from orchestrator.evals.store import FailureClass

REASON_LIMIT = 300
_BUDGET = re.compile(r"\bbudget of .+ spent\b")


def classify_run(
    record: RunRecord, events: list[dict[str, Any]], plan_written: bool
) -> tuple[FailureClass | None, str]:
    """The failure class of a run and its reason; ``(None, "")`` when the run itself did not fail."""
    if record.status == "waiting_review":
        verdict = _last(events, "verdict")
        reasons = "; ".join(verdict.get("reasons", [])) if verdict else ""
        return FailureClass.POLICY_REJECTED, one_line(f"policy wants a human review: {reasons or 'no reason given'}")
    if record.status == "completed":
        return None, ""
    if _BUDGET.search(record.reason):
        return FailureClass.BUDGET_SPENT, one_line(record.reason)
    if not plan_written:
        return FailureClass.PLAN_INVALID, one_line(f"planner: {record.reason}")
    failed = next((s for s in record.steps if s.outcome in ("failed", "rejected")), None)
    if failed is None:
        return FailureClass.ERROR, one_line(record.reason or "the run failed without a failed step")
    why = one_line(f"step {failed.step} ({failed.agent}): {failed.reason or failed.outcome}")
    if failed.outcome == "rejected":
        return FailureClass.POLICY_REJECTED, why
    last = [e for e in events if e.get("step") == failed.step and e.get("attempt") == failed.attempts]
    verdict = _last(last, "verdict")
    if verdict is not None and verdict.get("decision") == "reject":
        return FailureClass.POLICY_REJECTED, why
    if _last(last, "tests") is not None:
        return FailureClass.TESTS_FAILED, why
    return FailureClass.EDIT_NOT_APPLICABLE, why


def one_line(text: str) -> str:
    """The first non-empty line of ``text``, cut to a readable length."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= REASON_LIMIT else line[: REASON_LIMIT - 3] + "..."


def _last(events: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e.get("kind") == kind), None)
