"""A run's decision record (``spec/runs/<run>/adr.md``): the goal, the planner's plan, each step's outcome."""

from __future__ import annotations

from pathlib import Path

from orchestrator.agents.cards import Plan
from orchestrator.store import runs
from orchestrator.store.storage import atomic_write, read_json
from orchestrator.store.workspace import Workspace


def adr_path(ws: Workspace, run_id: str) -> Path:
    """The decision record of a run: goal, plan, and each step's outcome with its changeset."""
    return ws.spec / "runs" / run_id / "adr.md"


def write_adr(ws: Workspace, record: runs.RunRecord) -> None:
    """(Re)write the run's ADR from its plan file and run record."""
    plan_file = runs.run_dir(ws, record.id) / "plan.json"
    found = Plan.model_validate(read_json(plan_file)) if plan_file.exists() else None
    lines = [f"# Run {record.id}: {record.goal}", "", f"- repo: {record.repo}", f"- started: {record.started}"]
    lines += [f"- status: {record.status}" + (f" ({record.reason})" if record.reason else ""), ""]
    if found is not None:
        lines += ["## Decision", "", f"The planner restated the goal as: {found.goal}", "", "## Plan", ""]
        for n, step in enumerate(found.steps, start=1):
            lines.append(f"{n}. **{step.title}** — agent `{step.agent}`")
            if step.targets:
                lines.append(f"   - files: {', '.join(step.targets)}")
            lines += [f"   - done when: {check}" for check in step.acceptance]
    if record.steps:
        lines += ["", "## Outcome", ""]
        for done in record.steps:
            line = f"- step {done.step} ({done.agent}): {done.outcome} after {done.attempts} attempt(s)"
            if done.changeset:
                proof = f"../../../proofs/{record.repo}/{done.changeset}.dsse.json"
                line += f"; changeset `{done.changeset}` ([attestation]({proof}))"
            if done.generation is not None:
                line += f"; generation {done.generation}"
            if done.reason:
                line += f" — {done.reason.splitlines()[0]}"
            lines.append(line)
    atomic_write(adr_path(ws, record.id), "\n".join(lines) + "\n")
