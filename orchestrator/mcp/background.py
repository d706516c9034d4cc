"""Refinement runs started for an MCP client: a detached ``converge refine`` process, and its progress.

The run id is chosen here and handed to the process (``refine --run-id``), so the client has it
at once; the process writes its progress to ``.converge/logs/<id>.refine.log`` and its record
to the run store, which ``run`` reads. A detached process outlives this server, as a run started
from a terminal outlives the terminal's next command. Runs started here never auto-approve.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from orchestrator.errors import UsageError
from orchestrator.mcp import guard
from orchestrator.mcp.values import RepoArg, RunArg, RunProgress, RunStarted
from orchestrator.store import runs
from orchestrator.store.workspace import Workspace

TAIL_LINES = 30
RunGoalArg = Annotated[str, Field(description="What the run should achieve, in words, e.g. 'remove unused imports'.")]
StepsArg = Annotated[
    int | None, Field(description="Plan steps to execute, 1 to 20 (default: the workspace's setting).")
]


@dataclass(frozen=True)
class Launch:
    """A run process this server started, until its record exists."""

    proc: subprocess.Popen[bytes]
    repo: str
    goal: str


def log_path(ws: Workspace, run_id: str) -> Path:
    """Where the process driving a run started here writes its progress."""
    return ws.state / "logs" / f"{run_id}.refine.log"


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def next_step(record: runs.RunRecord) -> str:
    """What happens to the run now, said for the agent following it."""
    if record.status == "running":
        return "running: call `run` again to follow it."
    if record.status == "waiting_review":
        return (
            f"waiting for a person to review changeset {record.waiting_on} "
            f"(`converge changeset approve {record.waiting_on}` or reject); you cannot approve it."
        )
    if record.status == "interrupted":
        return f"its process stopped; a person resumes it with `converge resume {record.id}`."
    if record.status == "failed":
        return f"failed: {record.reason}" if record.reason else "failed; see log_tail."
    return "completed."


class RunTools:
    """Tools that start refinement runs and follow them (docstrings: what the model reads)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.started: dict[str, Launch] = {}

    def refine(self, repo: RepoArg, goal: RunGoalArg, max_steps: StepsArg = None) -> RunStarted:
        """Start a refinement run by Converge's own local models in the background: they plan the
        goal, then propose, test and sign a change per step. Every change waits for a person's
        review. Returns the run id at once; follow the run with `run`."""
        self.ws.repo(repo)
        goal = guard.text("goal", goal, guard.MAX_GOAL_CHARS)
        argv = [sys.executable, "-m", "orchestrator", "-w", str(self.ws.root), "refine", repo, f"--goal={goal}"]
        if max_steps is not None:
            argv.append(f"--max-steps={guard.within('max_steps', max_steps, 1, guard.MAX_STEPS)}")
        run_id = runs.new_run_id()
        log = log_path(self.ws, run_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*argv, f"--run-id={run_id}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed with this server, nor by a Ctrl-C meant for the client
            )
        self.started[run_id] = Launch(proc, repo, goal)
        return RunStarted(id=run_id, repo=repo, goal=goal, next="starting: call `run` with this id to follow it.")

    def run(self, id: RunArg) -> RunProgress:
        """Where a refinement run is: status (starting, running, waiting_review, completed, failed,
        interrupted), its steps so far with their changesets, and the tail of its progress log."""
        run_id = guard.identifier("run", id)
        launch = self.started.get(run_id)
        exit_code = launch.proc.poll() if launch is not None else None  # also reaps a finished process
        try:
            record = runs.load(self.ws, run_id)
        except UsageError:
            if launch is None:
                raise
            return self._not_started(run_id, launch, exit_code)
        return RunProgress(
            id=record.id,
            repo=record.repo,
            goal=record.goal,
            status=record.status,
            steps_planned=record.steps_planned,
            steps=record.steps,
            changesets=record.changesets,
            waiting_on=record.waiting_on,
            reason=record.reason,
            log_tail=_tail(log_path(self.ws, run_id)),
            next=next_step(record),
        )

    def _not_started(self, run_id: str, launch: Launch, exit_code: int | None) -> RunProgress:
        """A run this server started whose record does not exist yet: still starting, or it never got going."""
        tail = _tail(log_path(self.ws, run_id))
        status: Literal["starting", "failed"] = "starting"
        reason, said = "", "starting: call `run` again in a few seconds."
        if exit_code is not None:
            status = "failed"
            reason = tail.splitlines()[-1] if tail else f"exit {exit_code}"
            said = f"it did not start: {reason}"
        return RunProgress(
            id=run_id,
            repo=launch.repo,
            goal=launch.goal,
            status=status,
            steps_planned=0,
            steps=[],
            changesets=[],
            waiting_on=None,
            reason=reason,
            log_tail=tail,
            next=said,
        )
