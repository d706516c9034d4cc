"""The task inbox: TOML files dropped into ``spec/inbox/`` become runs, one at a time.

A task (keys ``repo``, ``goal``, ``max_steps``, ``auto_approve``) is claimed by a rename into ``running/``
and ends in ``done/`` or ``failed/`` with a ``<name>.result.json`` beside it (:class:`Inbox`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.config import format_validation_error, read_toml
from orchestrator.errors import ConvergeError, UsageError
from orchestrator.loop.driver import RunResult, resume_run, start_run
from orchestrator.loop.state import Deps
from orchestrator.store import runs
from orchestrator.store.storage import atomic_write_json, read_json
from orchestrator.store.workspace import Workspace

Log = Callable[[str], None]
DepsFactory = Callable[[Workspace], Deps]


class TaskFile(BaseModel):
    """A task dropped into ``spec/inbox/``: one run of ``goal`` on ``repo``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    repo: str = Field(min_length=1, description="A registered repo name.")
    goal: str = Field(min_length=1, description="What the run should achieve, in words.")
    max_steps: int | None = Field(default=None, ge=1, description="Plan steps to execute (default: converge.toml).")
    auto_approve: bool = Field(default=False, description="Promote what policy itself approves without asking.")


class TaskOutcome(BaseModel):
    """How one task file ended: written beside it as ``<name>.result.json``."""

    task: str
    status: Literal["done", "failed", "running"]  # running: stopped mid-run, resumed at the next start
    run_id: str | None = None
    run_status: runs.RunStatus | None = None
    reason: str = ""
    changesets: list[str] = Field(default_factory=list)
    resumed: bool = False
    finished: str = Field(default_factory=runs.now)


def load_task(ws: Workspace, path: Path) -> TaskFile:
    """Parse and check a task file; a ConvergeError names the file, key and what is wrong."""
    try:
        task = TaskFile.model_validate(read_toml(path))
    except ValidationError as exc:
        raise UsageError(format_validation_error(path.name, exc)) from exc
    ws.repo(task.repo)
    return task


class Inbox:
    """The task inbox of one workspace (``spec/inbox/``): claim, run, and file each task.

        inbox/x.toml ─claim (rename)─► running/x.toml + x.run.json (run id) ─► done/x.toml   + x.result.json
                                             │                              └► failed/x.toml + x.result.json
                                             └─ bad TOML, unknown key or repo ───► failed/x.toml + x.result.json

    The run id is recorded before the run starts, so a task found in ``running/`` (its runner was
    stopped or killed) is resumed from its run's last checkpoint. A failing task, whatever raised,
    is moved to ``failed/``; whoever works the inbox (``converge watch``) keeps going.
    """

    def __init__(self, ws: Workspace, deps_factory: DepsFactory, log: Log) -> None:
        self.ws = ws
        self.deps_factory = deps_factory
        self.log = log
        self.folder = ws.spec / "inbox"
        self.tasks: list[TaskOutcome] = []

    def prepare(self) -> None:
        """Make the inbox's folders (idempotent)."""
        for sub in ("running", "done", "failed"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def waiting(self, settled: float = 0.0) -> list[Path]:
        """Task files waiting in the inbox, oldest first; only those unchanged for ``settled`` seconds."""
        now = time.time()
        found = []
        for path in self.folder.glob("*.toml"):
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if not path.name.startswith(".") and now - mtime >= settled:
                found.append((mtime, path.name, path))
        return [p for _m, _n, p in sorted(found)]

    def resume_in_flight(self) -> list[TaskOutcome]:
        """Finish tasks left in ``running/`` by a watcher that was stopped or killed."""
        done = []
        for path in sorted((self.folder / "running").glob("*.toml")):
            self.log(f"watch: resuming task {path.name}")
            done.append(self._run_claimed(path, resumed=True))
        return done

    def take(self, path: Path) -> TaskOutcome | None:
        """Claim one inbox task (atomic rename into ``running/``) and run it; None if it was gone."""
        running = _free_name(self.folder / "running", path.name)
        try:
            path.rename(running)
        except FileNotFoundError:
            return None
        self.log(f"watch: task {path.name}: claimed")
        return self._run_claimed(running, resumed=False)

    def _run_claimed(self, path: Path, resumed: bool) -> TaskOutcome:
        sidecar = path.with_suffix(".run.json")
        run_id: str | None = None
        try:
            task = load_task(self.ws, path)
            if sidecar.is_file():
                run_id = str(read_json(sidecar)["run_id"])
            else:
                run_id = runs.new_run_id()
                atomic_write_json(sidecar, {"task": path.name, "run_id": run_id, "claimed": runs.now()})
            result = self._drive(task, run_id)
            if result.record.status == "interrupted":  # stopped: the task stays in running/, resumed next start
                self.log(f"watch: task {path.name}: stopped (run {run_id}), resumes next start")
                return TaskOutcome(task=path.name, status="running", run_id=run_id, resumed=resumed)
            outcome = _outcome(path.name, result, resumed)
        except ConvergeError as exc:
            outcome = TaskOutcome(task=path.name, status="failed", run_id=run_id, reason=str(exc), resumed=resumed)
        except Exception as exc:  # a model or sandbox crash fails the task, never the watcher
            reason = f"{type(exc).__name__}: {exc}"
            outcome = TaskOutcome(task=path.name, status="failed", run_id=run_id, reason=reason, resumed=resumed)
            self._mark_run_failed(run_id, reason)
        if outcome.run_id is not None and outcome.run_status is None:
            outcome.run_status = _run_status(self.ws, outcome.run_id)
        self._file(path, outcome)
        sidecar.unlink(missing_ok=True)
        self.tasks.append(outcome)
        detail = f" (run {outcome.run_id}: {outcome.run_status})" if outcome.run_id else ""
        self.log(
            f"watch: task {path.name}: {outcome.status}{detail}" + (f": {outcome.reason}" if outcome.reason else "")
        )
        return outcome

    def _drive(self, task: TaskFile, run_id: str) -> RunResult:
        deps = self.deps_factory(self.ws)
        try:
            runs.load(self.ws, run_id)
        except UsageError:  # claimed, but the run never started: start it under the recorded id
            return start_run(
                deps, task.repo, task.goal, max_steps=task.max_steps, auto_approve=task.auto_approve, run_id=run_id
            )
        return resume_run(deps, run_id)

    def _mark_run_failed(self, run_id: str | None, reason: str) -> None:
        if run_id is None:
            return
        try:
            record = runs.load(self.ws, run_id)
        except UsageError:
            return
        if record.status in ("running", "interrupted"):
            runs.save(self.ws, record.model_copy(update={"status": "failed", "reason": reason}))

    def _file(self, path: Path, outcome: TaskOutcome) -> None:
        """Write the outcome, then move the task file beside it (the result first: a kill between repeats)."""
        target = _free_name(self.folder / outcome.status, path.name)
        atomic_write_json(target.with_suffix(".result.json"), outcome.model_dump())
        path.rename(target)


def _outcome(name: str, result: RunResult, resumed: bool) -> TaskOutcome:
    record = result.record
    reason = record.reason
    if record.status == "waiting_review" and record.waiting_on:
        reason = f"waiting for review: converge changeset approve {record.waiting_on}"
    return TaskOutcome(
        task=name,
        status="done" if result.exit_code == 0 else "failed",
        run_id=record.id,
        run_status=record.status,
        reason=reason,
        changesets=record.changesets,
        resumed=resumed,
    )


def _run_status(ws: Workspace, run_id: str) -> runs.RunStatus | None:
    try:
        return runs.load(ws, run_id).status
    except ConvergeError:
        return None


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``stem-2.toml``, ``stem-3.toml`` ... when taken (nothing is overwritten)."""
    target = folder / name
    stem, suffix = target.stem, target.suffix
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target
