"""A run's decision record (``spec/runs/<run>/adr.md``): the goal, the planner's plan, each step's outcome,
and, with several candidates per attempt, how they were ranked and why the others lost."""

from __future__ import annotations

from pathlib import Path

from orchestrator.agents.cards import Plan
from orchestrator.gate.rank import Ranking
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
    lines += _candidates(ws, record)
    atomic_write(adr_path(ws, record.id), "\n".join(lines) + "\n")


def _candidates(ws: Workspace, record: runs.RunRecord) -> list[str]:
    """The rankings of the run's attempts (best of N), in step and attempt order."""
    found = []
    for path in runs.run_dir(ws, record.id).glob("*.ranking.json"):
        step_text, _, attempt_text = path.name.removesuffix(".ranking.json").partition("-")
        found.append((int(step_text), int(attempt_text), Ranking.model_validate_json(path.read_text())))
    if not found:
        return []
    lines = ["", "## Candidates", ""]
    lines += [
        f"Each candidate's commit is kept under `refs/converge/candidates/{record.id}/<label>`, or under",
        f"`refs/converge/failed/{record.id}/<label>` when it went on and then failed, or no candidate could go on.",
        "",
    ]
    for number, attempt, ranking in sorted(found, key=lambda f: f[:2]):
        lines.append(f"- step {number} attempt {attempt}: " + _verdict(ranking))
        for st in ranking.standings:
            ref = f"`{st.label}`" if st.commit else "no commit"
            facts = f"tests {st.tests}" + (f", risk {st.risk}" if st.risk else "") + f", {st.diff_lines} diff lines"
            fate = "won" if st.won else f"lost: {st.why}"
            lines.append(f"  - candidate {st.index} ({ref}; {facts}): {fate}")
    return lines


def _verdict(ranking: Ranking) -> str:
    if ranking.winner is None:
        return f"none of {len(ranking.standings)} candidates could go on"
    return f"candidate {ranking.winner} of {len(ranking.standings)} went on"
