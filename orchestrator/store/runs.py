"""Run records: what `converge runs` lists, kept beside the LangGraph checkpoints.

The checkpoints in ``.converge/runs.sqlite`` are the truth about where a run is; this small
JSON record per run (``.converge/runs/<id>.json``) carries what a listing needs without
opening the graph: repo, goal, status, steps, changesets, why attempts failed (by
:class:`FailureClass`) and the pid of the process driving it. A record saying ``running``
whose process is gone is reported as ``interrupted``.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator.errors import UsageError
from orchestrator.store.storage import atomic_write_json, pid_alive, read_model
from orchestrator.store.workspace import Workspace

RunStatus = Literal["running", "waiting_review", "completed", "failed", "interrupted"]


class FailureClass(StrEnum):
    """Why an attempt (or the plan) failed, counted per run so that what goes wrong shows in numbers."""

    PLAN_INVALID = "plan-invalid"  # no step of the plan could be carried out
    PATH_UNKNOWN = "path-unknown"  # an edit names a file that is not there
    SEARCH_NOT_FOUND = "search-not-found"  # a search text is not in its file
    SEARCH_AMBIGUOUS = "search-ambiguous"  # a search text is in its file more than once
    EDIT_INVALID = "edit-invalid"  # any other edit that cannot apply (no change, a directory, a binary file)
    ANSWER_INVALID = "answer-invalid"  # no answer that matches the schema
    TESTS_FAILED = "tests-failed"
    POLICY = "policy"  # the policy rejected the change
    REJECTED = "rejected"  # a reviewer rejected it


class StepOutcome(BaseModel):
    """How one plan step ended."""

    step: int
    title: str
    agent: str
    outcome: Literal["promoted", "failed", "rejected", "no-change"]
    attempts: int
    changeset: str | None = None
    generation: int | None = None
    reason: str = ""
    failures: list[FailureClass] = Field(default_factory=list, description="why each failed attempt failed")


class RunRecord(BaseModel):
    """One refinement run as listings show it."""

    id: str
    repo: str
    goal: str
    status: RunStatus = "running"
    pid: int | None = None
    steps_planned: int = 0
    steps: list[StepOutcome] = Field(default_factory=list)
    changesets: list[str] = Field(default_factory=list)
    waiting_on: str | None = None
    reason: str = ""
    tokens: int = 0
    failures: dict[FailureClass, int] = Field(default_factory=dict, description="failed attempts by class")
    started: str = ""
    updated: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")


def new_run_id() -> str:
    """A sortable, unique run id: time then randomness."""
    return time.strftime("r%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _path(ws: Workspace, run_id: str) -> Path:
    return ws.state / "runs" / f"{run_id}.json"


def save(ws: Workspace, record: RunRecord) -> None:
    """Write a run record atomically."""
    atomic_write_json(_path(ws, record.id), record.model_copy(update={"updated": now()}).model_dump())


def load(ws: Workspace, run_id: str) -> RunRecord:
    """One run by id, with a status that accounts for a dead driver."""
    path = _path(ws, run_id)
    if not path.exists():
        raise UsageError(f"unknown run {run_id!r}; `converge runs` lists them")
    return _live_status(read_model(path, RunRecord))


def resolve_id(ws: Workspace, given: str) -> str:
    """The run ``given`` names: its whole id, or a prefix of exactly one run's id (as `converge runs` shows)."""
    if _path(ws, given).exists():
        return given
    folder = ws.state / "runs"
    found = (
        sorted(p.stem for p in folder.glob("*.json") if p.stem.startswith(given)) if given and folder.is_dir() else []
    )
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"run {given!r} is a prefix of {len(found)} runs ({', '.join(found[:3])}...); give more of it")
    raise UsageError(f"unknown run {given!r}; `converge runs` lists them")


def list_runs(ws: Workspace) -> list[RunRecord]:
    """Every run, newest first."""
    folder = ws.state / "runs"
    if not folder.is_dir():
        return []
    records = [_live_status(read_model(p, RunRecord)) for p in folder.glob("*.json")]
    return sorted(records, key=lambda r: r.started, reverse=True)


def _live_status(record: RunRecord) -> RunRecord:
    if record.status == "running" and (record.pid is None or not pid_alive(record.pid)):
        return record.model_copy(update={"status": "interrupted"})
    return record


# --- the files of a run ------------------------------------------------------------------------


def run_dir(ws: Workspace, run_id: str) -> Path:
    """Where a run keeps its plan, proposals and reports."""
    return ws.cache / "runs" / run_id


def run_log(ws: Workspace, run_id: str, kind: str, **data: Any) -> None:
    """Append one event (a model call, a test command, a verdict, an outcome) to `.converge/logs/<run>.jsonl`."""
    path = ws.state / "logs" / f"{run_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"at": now(), "kind": kind, **data}
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")


def record_failure(ws: Workspace, run_id: str, failure: FailureClass, reason: str, **where: Any) -> RunRecord:
    """Log one failed attempt (or plan) by class and count it in the run's record."""
    run_log(ws, run_id, "failure", failure=failure.value, reason=reason[:500], **where)
    record = load(ws, run_id)
    counts = dict(record.failures)
    counts[failure] = counts.get(failure, 0) + 1
    return update(ws, run_id, failures=counts)


def update(ws: Workspace, run_id: str, **changes: Any) -> RunRecord:
    """Change fields of a run's record (progress, status) and save it."""
    record = load(ws, run_id).model_copy(update=changes)
    save(ws, record)
    return record
