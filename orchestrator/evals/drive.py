"""The one door from evals into the refinement loop: a run through the full gate, auto-approved.

Every import of the loop by evals is here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.evals.wiring import ModelFactory
from orchestrator.loop.driver import start_run
from orchestrator.loop.state import Deps
from orchestrator.store import runs
from orchestrator.store.runs import RunRecord
from orchestrator.store.workspace import Workspace

__all__ = ["RunRecord", "plan_written", "refine", "run_events"]


def refine(
    ws: Workspace, repo: str, goal: str, *, model_for: ModelFactory, max_steps: int, on_event: Callable[[str], None]
) -> RunRecord:
    """What ``converge refine REPO --goal G --max-steps K --auto-approve`` does, in ``ws``; the run's record."""
    deps = Deps(ws=ws, model_for=model_for, on_event=on_event)
    return start_run(deps, repo, goal, max_steps=max_steps, auto_approve=True).record


def plan_written(ws: Workspace, run_id: str) -> bool:
    """Whether the planner's plan was accepted and saved."""
    return (runs.run_dir(ws, run_id) / "plan.json").is_file()


def run_events(ws: Workspace, run_id: str) -> list[dict[str, Any]]:
    """The run's event log (model calls, test commands, verdicts), oldest first."""
    path: Path = ws.state / "logs" / f"{run_id}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
