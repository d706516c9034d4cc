"""Eval records on disk, under ``<workspace>/cache/eval/<eval-id>/``.

    eval.json       what was asked: the suite, the model per role, repeats, tags, each task's digest
    results.jsonl   one TaskResult per finished task trial, appended (and synced) as each ends
    summary.json    the figures so far, rewritten after every result
    work/           the throwaway workspaces of tasks in flight; a resume clears what a kill left

A result line is the unit of progress: ``converge eval resume`` runs exactly the task trials
that have none. A line torn by a kill is the last one, and is ignored (that trial runs again).
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from orchestrator.errors import UsageError, WorkspaceError
from orchestrator.store.storage import atomic_write_json, read_model
from orchestrator.store.workspace import Workspace

SPEC_FILE = "eval.json"
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


class FailureClass(StrEnum):
    """Why a task was not solved (the ``failure`` key of a result)."""

    PLAN_INVALID = "plan_invalid"
    EDIT_NOT_APPLICABLE = "edit_not_applicable"
    TESTS_FAILED = "tests_failed"
    POLICY_REJECTED = "policy_rejected"
    BUDGET_SPENT = "budget_spent"
    CHECK_FAILED = "check_failed"
    ERROR = "error"


class TaskResult(BaseModel):
    """How one trial of one task went (one line of results.jsonl)."""

    task: str = Field(description="the task's directory name")
    trial: int = 0
    tags: list[str] = Field(default_factory=list)
    digest: str = Field(default="", description="of the task's files when it ran")
    solved: bool = False
    invalid: bool = Field(default=False, description="the check passed on the start tree: nothing to solve")
    failure: FailureClass | None = None
    reason: str = Field(default="", description="one line: why it failed")
    steps: int = Field(default=0, description="plan steps the run carried out")
    attempts: int = Field(default=0, description="proposals over all steps")
    agents: list[str] = Field(default_factory=list, description="the agent of each step")
    tokens_in: int = 0
    tokens_out: int = 0
    model_seconds: float = 0.0
    seconds: float = Field(default=0.0, description="wall time of the whole task")
    run_seconds: float = Field(default=0.0, description="wall time inside the refinement run")
    check_seconds: float = Field(default=0.0, description="wall time of the start-tree and final checks")
    run: str | None = None
    run_status: str | None = None
    generation: int | None = Field(default=None, description="the task repo's generation when the run ended")
    check_exit: int | None = None
    attempt_failures: dict[str, int] = Field(
        default_factory=dict, description="the run's failed attempts by class (plan-invalid, search-not-found, ...)"
    )


class SuiteRef(BaseModel):
    """Which suite an eval ran."""

    name: str
    path: str
    builtin: bool = False


class EvalSpec(BaseModel):
    """What an eval was asked to do (eval.json): enough to resume it and to compare it."""

    id: str
    created: str
    suite: SuiteRef
    models: dict[str, str] = Field(description="role -> binding, as the run's agents resolved them")
    repeat: int = 1
    tags: list[str] = Field(default_factory=list)
    parallel: int = 1
    tasks: dict[str, str] = Field(description="task name -> digest, in run order")
    task_tags: dict[str, list[str]] = Field(default_factory=dict)
    broken: dict[str, str] = Field(default_factory=dict, description="task name -> why it cannot run")

    def jobs(self) -> list[tuple[str, int]]:
        """Every (task, trial) the eval runs, in order."""
        return [(task, trial) for trial in range(self.repeat) for task in self.tasks]


class Rate(BaseModel):
    """A solve rate with its 95% Wilson interval (rates null when nothing counts)."""

    solved: int
    valid: int
    rate: float | None
    low: float | None
    high: float | None


class Summary(BaseModel):
    """The figures of an eval so far (summary.json)."""

    id: str
    suite: str
    models: dict[str, str]
    planned: int
    finished: int
    complete: bool
    solved: int
    valid: int = Field(description="finished trials that were not invalid")
    invalid: int
    rate: Rate
    by_tag: dict[str, Rate]
    failures: dict[str, int]
    broken: int
    seconds: float
    tokens_in: int
    tokens_out: int
    model_seconds: float


def new_id() -> str:
    """A sortable, unique eval id: time then randomness."""
    return time.strftime("e%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def root(ws: Workspace) -> Path:
    """Where evals keep their records."""
    return ws.cache / "eval"


def eval_dir(ws: Workspace, eval_id: str) -> Path:
    return root(ws) / eval_id


def create(ws: Workspace, spec: EvalSpec) -> Path:
    """Write a new eval's eval.json; its directory."""
    folder = eval_dir(ws, spec.id)
    atomic_write_json(folder / SPEC_FILE, spec.model_dump(mode="json"))
    return folder


def load_spec(ws: Workspace, eval_id: str) -> EvalSpec:
    """An eval by id, or a UsageError saying where the ids are listed."""
    path = eval_dir(ws, eval_id) / SPEC_FILE
    if "/" in eval_id or not path.is_file():
        raise UsageError(f"unknown eval {eval_id!r}; `converge eval list` shows the evals of this workspace")
    return read_model(path, EvalSpec)


def append_result(ws: Workspace, eval_id: str, result: TaskResult) -> None:
    """Append one result line and sync it: once this returns, a resume will not run that trial again."""
    path = eval_dir(ws, eval_id) / RESULTS_FILE
    line = result.model_dump_json() + "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def load_results(ws: Workspace, eval_id: str) -> list[TaskResult]:
    """The results recorded so far, in the order they finished (a torn last line is dropped)."""
    path = eval_dir(ws, eval_id) / RESULTS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[TaskResult] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            found.append(TaskResult.model_validate_json(line))
        except ValidationError as exc:
            if number == len(lines):
                break  # written when the process was killed: that trial simply runs again
            raise WorkspaceError(f"{path}:{number}: not a task result: {exc.errors()[0]['msg']}") from exc
    return found


def save_summary(ws: Workspace, summary: Summary) -> None:
    atomic_write_json(eval_dir(ws, summary.id) / SUMMARY_FILE, summary.model_dump(mode="json"))


def load_summary(ws: Workspace, eval_id: str) -> Summary | None:
    path = eval_dir(ws, eval_id) / SUMMARY_FILE
    return read_model(path, Summary) if path.is_file() else None


def list_specs(ws: Workspace) -> list[EvalSpec]:
    """Every eval of the workspace, newest first."""
    folder = root(ws)
    if not folder.is_dir():
        return []
    specs = [read_model(p / SPEC_FILE, EvalSpec) for p in folder.iterdir() if (p / SPEC_FILE).is_file()]
    return sorted(specs, key=lambda s: (s.created, s.id), reverse=True)


def to_json_line(result: TaskResult) -> dict[str, object]:
    """A result as the JSON contract prints it (``task``, ``solved``, ``invalid``, ``failure``, ``seconds``, ...)."""
    return result.model_dump(mode="json")


def latest_scores(ws: Workspace, roles: tuple[str, ...] = ("planner", "coder")) -> dict[str, Summary]:
    """Per model binding: the summary of the newest eval of the whole built-in suite where it served one of ``roles``.

    Evals of a part of the suite (``--tag``) do not count: their rates are not comparable.
    """
    found: dict[str, Summary] = {}
    for spec in list_specs(ws):
        summary = load_summary(ws, spec.id)
        if not spec.suite.builtin or spec.tags or summary is None or summary.finished == 0:
            continue
        for role in roles:
            binding = spec.models.get(role)
            if binding is not None and binding not in found:
                found[binding] = summary
    return found
