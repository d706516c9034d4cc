"""Why attempts fail, by class: what a failed node returns, and what the run log and record keep of it.

A node whose attempt failed returns :func:`retry` (the feedback for the next attempt and the
:class:`FailureClass`); the retry and advance nodes :func:`record` it once, in the run log and the
run's counts, and keep the step's classes for its outcome. The plan's failures are kept the same way.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.agents.run import Planned
from orchestrator.loop.state import Outcome, RunState, clip
from orchestrator.store import runs
from orchestrator.store.runs import FailureClass
from orchestrator.store.storage import atomic_write_json
from orchestrator.store.workspace import Workspace


def retry(feedback: str, failure: FailureClass, outcome: Outcome = Outcome.RETRY) -> RunState:
    """The attempt failed (``failure`` says how); ``feedback`` goes to the next one."""
    return {"outcome": outcome, "feedback": clip(feedback), "failure": failure.value}


def record(ws: Workspace, s: RunState) -> list[str]:
    """The step's failure classes so far, the attempt that just failed recorded (run log and record)."""
    failed = s.get("failure")
    if not failed:
        return s.get("failures", [])
    where = {"step": s["step"] + 1, "attempt": s["attempt"]}
    runs.record_failure(ws, s["run_id"], FailureClass(failed), s.get("feedback", ""), **where)
    return [*s.get("failures", []), failed]


def plan_failed(ws: Workspace, run_id: str, reason: str) -> None:
    """No plan: the planner's answer could not be carried out at all."""
    runs.record_failure(ws, run_id, FailureClass.PLAN_INVALID, reason, step=0)


def planned(ws: Workspace, run_id: str, found: Planned, evidence: Path) -> None:
    """A plan's evidence (the tool agents' dry runs) kept in ``evidence``, and what was left out of it:
    invalid steps count as a failure, repeats of a tool's work are noted."""
    atomic_write_json(evidence, [r.model_dump() for r in found.reports])
    if found.invalid:
        plan_failed(ws, run_id, "; ".join(found.invalid))
    if found.repeats:
        runs.run_log(ws, run_id, "plan", left_out=found.repeats)
