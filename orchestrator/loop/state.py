"""What the checkpointer keeps between nodes (small values only), the outcomes that route the graph,
and what the nodes need from outside.

Big things (proposals, reports, verdicts, the plan) live in files under ``cache/runs/<run>/``,
one per attempt and kind: a resumed node reads back what its earlier run wrote.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypedDict

from orchestrator.agents.cards import LoadedCard, PlanStep
from orchestrator.agents.site import Site
from orchestrator.gate.provenance import AttemptKey
from orchestrator.models.backends import ModelBackend
from orchestrator.sandbox.base import SandboxBackend
from orchestrator.sandbox.pool import SandboxPool
from orchestrator.store import changesets, runs
from orchestrator.store.reports import TestReport
from orchestrator.store.workspace import Workspace

FEEDBACK_LIMIT = 2000


class Outcome(StrEnum):
    """How a node ended, for routing: go on, try the step again, or the step is over."""

    NONE = ""
    RETRY = "retry"
    NO_CHANGE = "no-change"
    REJECTED = "rejected"
    PROMOTED = "promoted"
    FAILED = "failed"


class RunState(TypedDict, total=False):
    """What the checkpointer keeps between nodes: small values only."""

    run_id: str
    repo: str
    goal: str
    auto_approve: bool
    plan_only: bool
    max_steps: int
    started: float
    steps: list[dict[str, Any]]
    step: int
    attempt: int
    feedback: str
    proposal: str
    commit: str
    base: str
    base_generation: int  # the number of the generation ``base`` is
    report: str
    image: str
    changeset: str
    outcome: str  # an Outcome's value
    failure: str  # why the attempt failed: a FailureClass's value ("" when it did not)
    failures: list[str]  # the failure classes of the step's earlier attempts
    tokens: Annotated[int, operator.add]
    done: Annotated[list[dict[str, Any]], operator.add]


ModelFactory = Callable[[LoadedCard], ModelBackend]
Events = Callable[[str], None]


@dataclass
class Deps:
    """What the nodes need from outside: the workspace, how to reach models, where to report."""

    ws: Workspace
    model_for: ModelFactory
    on_event: Events = field(default=lambda _text: None)
    sandbox_backend: SandboxBackend | None = None  # None: the one converge.toml names
    sandboxes: SandboxPool | None = None  # the run's sandboxes started ahead (see driver)

    def site(self, repo: str, commit: str) -> Site:
        """Where an agent works on ``commit`` of ``repo``, with the run's sandboxes."""
        return Site(self.ws, repo, commit, self.sandboxes, self.sandbox_backend)

    stop_requested: Callable[[], bool] = field(default=lambda: False)  # checked before each node


class RunStopped(Exception):
    """The driver was asked to stop (SIGTERM to `converge watch`): the run ends here, checkpointed."""


def outcome(s: RunState) -> Outcome:
    return Outcome(s.get("outcome") or "")


def key(s: RunState) -> AttemptKey:
    """The attempt the state is at (steps counted from 1)."""
    return AttemptKey(s["run_id"], s["step"] + 1, s["attempt"])


def attempt_file(ws: Workspace, s: RunState, suffix: str) -> Path:
    return runs.run_dir(ws, s["run_id"]) / f"{s['step'] + 1}-{s['attempt']}.{suffix}"


def current_step(s: RunState) -> PlanStep:
    return PlanStep.model_validate(s["steps"][s["step"]])


def changeset_id(s: RunState) -> str:
    return changesets.changeset_id(s["repo"], s["base"], key(s).changeset_key)


def clip(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 20] + "\n... (cut)"


def attempts_allowed(cards: dict[str, LoadedCard], s: RunState) -> int:
    card = cards.get(current_step(s).agent)
    return card.card.budgets.attempts if card else 1


def feedback_on_tests(report: TestReport) -> str:
    if report.command is not None and (report.command.timed_out or report.command.oom_killed):
        return clip(f"The {report.summary}: make the change without slowing the tests down or growing memory.")
    if not report.ran:
        tail = report.command.stderr_tail if report.command else ""
        return clip(f"The tests could not run:\n{tail[-1500:]}")
    failing = ", ".join((report.failed + report.errored)[:10]) or "(no test passed)"
    out = report.command.stdout_tail[-1500:] if report.command else ""
    return clip(f"These tests fail after your change: {failing}\nTest output (end):\n{out}")
