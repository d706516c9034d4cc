"""Driving runs: start, resume, finish; one process per run; the SQLite checkpointer that owns its connection.

A run is a LangGraph thread checkpointed in ``.converge/runs.sqlite``; kill it at any point and
:func:`resume_run` continues from the last checkpoint, repeating no side effect (every one is keyed
by run, step and attempt).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command
from pydantic import BaseModel

from orchestrator.agents.cards import load_cards
from orchestrator.errors import ConvergeError, UsageError
from orchestrator.loop import adr
from orchestrator.loop.graph import build_graph
from orchestrator.loop.state import Deps, RunState, RunStopped
from orchestrator.sandbox.pool import SandboxPool
from orchestrator.scale.factory import Deferred
from orchestrator.store import changesets, generations, runs
from orchestrator.store.storage import file_lock
from orchestrator.store.workspace import Workspace

CHECKPOINTS = "runs.sqlite"
MAX_CANDIDATES = 16


class RunResult(BaseModel):
    """How a run ended, for the command line."""

    record: runs.RunRecord
    exit_code: int


def start_run(
    deps: Deps,
    repo: str,
    goal: str,
    *,
    plan_only: bool = False,
    max_steps: int | None = None,
    auto_approve: bool = False,
    run_id: str | None = None,
    candidates: int | None = None,
) -> RunResult:
    """Start a run of ``goal`` on ``repo`` and drive it until it ends or waits for review.

    ``candidates``: proposals per attempt, verified side by side (default ``run.candidates``).
    """
    ws = deps.ws
    ws.repo(repo)
    if not goal.strip():
        raise UsageError("--goal: give the goal in words")
    rid = run_id or runs.new_run_id()
    steps = max_steps if max_steps is not None else ws.config().run.max_steps
    if steps <= 0:
        raise UsageError(f"--max-steps {steps}: must be at least 1")
    many = candidates if candidates is not None else ws.config().run.candidates
    if not 1 <= many <= MAX_CANDIDATES:
        raise UsageError(f"--candidates {many}: must be between 1 and {MAX_CANDIDATES}")
    load_cards(ws)  # a broken card is reported before a run record exists that could never go on
    record = runs.RunRecord(id=rid, repo=repo, goal=goal, pid=os.getpid(), started=runs.now())
    state: RunState = {
        "run_id": rid,
        "repo": repo,
        "goal": goal,
        "auto_approve": auto_approve,
        "plan_only": plan_only,
        "max_steps": steps,
        "candidates": many,
        "started": time.time(),
        "tokens": 0,
        "done": [],
    }
    with _driving(ws, rid):
        runs.save(ws, record)
        deps.on_event(f"run {rid}: {repo}: {goal}")
        return _drive(deps, rid, state)


def resume_run(deps: Deps, run_id: str) -> RunResult:
    """Continue a run from its last checkpoint (after a kill, or after a review decision).

    A run another process is driving is refused (ConflictError, naming that process).
    """
    runs.load(deps.ws, run_id)  # an unknown id is named before any lock is taken
    with _driving(deps.ws, run_id):
        record = runs.load(deps.ws, run_id)
        if record.status in ("completed", "failed"):
            return RunResult(record=record, exit_code=0 if record.status == "completed" else 1)
        waiting = record.status == "waiting_review" and record.waiting_on
        if waiting and changesets.load(deps.ws, str(record.waiting_on)).status == "pending":
            return RunResult(record=record, exit_code=0)
        runs.update(deps.ws, run_id, status="running", pid=os.getpid())
        deps.on_event(f"run {run_id}: resuming")
        return _drive(deps, run_id, None)


@contextmanager
def checkpointer(ws: Workspace) -> Iterator[SqliteSaver]:
    """The SQLite checkpointer of the workspace, owning its connection."""
    conn = sqlite3.connect(ws.state / CHECKPOINTS, check_same_thread=False, timeout=30)
    try:
        _write_ahead_log(conn)
        # a commit reaches the OS without waiting for the disk: a killed Converge loses no
        # checkpoint; a power cut may lose the last few, and resume redoes those (idempotent) nodes
        conn.execute("PRAGMA synchronous=NORMAL")
        # the state's own enums are the only non-builtin types it holds: allowed by name, nothing else is
        # (checkpoints of runs before failure classes were kept as strings hold FailureClass values)
        allowed = [("orchestrator.loop.state", "Outcome"), ("orchestrator.store.runs", "FailureClass")]
        serde = JsonPlusSerializer(allowed_msgpack_modules=allowed)
        saver = SqliteSaver(conn, serde=serde)
        saver.setup()
        yield saver
    finally:
        conn.close()


def _write_ahead_log(conn: sqlite3.Connection, patience: float = 30.0) -> None:
    """Put the checkpoint database in WAL mode (it stays so, in the file), waiting out other processes.

    Switching needs the database to itself, and SQLite answers "database is locked" at once, without
    its busy timeout, when two runs starting together both try: the one refused tries again.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def _driving(ws: Workspace, run_id: str) -> Iterator[None]:
    """Hold the run's lock while driving it: one process at a time, a second is told which one has it."""
    with file_lock(ws.state / "locks" / f"run-{run_id}.lock", f"run {run_id}"):
        yield


def _drive(deps: Deps, run_id: str, state: RunState | None) -> RunResult:
    ws = deps.ws
    config: Any = {"configurable": {"thread_id": run_id}, "recursion_limit": 500}
    with (
        _sandboxes(deps, run_id, state) as run_deps,  # the first sandbox starts first
        _executor(run_deps) as run_deps,
        checkpointer(ws) as saver,
    ):
        graph = build_graph(run_deps).compile(checkpointer=saver)
        payload: Any = state
        if state is None:
            snapshot = graph.get_state(config)
            if not snapshot.next and not snapshot.values:
                raise UsageError(f"run {run_id} has no checkpoint to resume from")
            pending = [i for t in snapshot.tasks for i in t.interrupts]
            payload = Command(resume="decided") if pending else None
        try:
            graph.invoke(payload, config, durability="sync")
        except RunStopped:
            record = runs.update(ws, run_id, status="interrupted", pid=None, reason="stopped; resume goes on")
            return RunResult(record=record, exit_code=1)
        except ConvergeError as exc:
            return _finish(ws, run_id, graph.get_state(config).values, "failed", str(exc))
        snapshot = graph.get_state(config)
        if snapshot.next:
            return RunResult(record=runs.load(ws, run_id), exit_code=0)
        return _finish(ws, run_id, snapshot.values, "completed", "")


@contextmanager
def _sandboxes(deps: Deps, run_id: str, state: RunState | None) -> Iterator[Deps]:
    """``deps`` with the run's sandbox pool, its first sandbox starting now (while the planner thinks).

    Converge's own repo verifies through selfhost, which starts its own sandboxes: no pool.
    """
    repo = state["repo"] if state is not None else runs.load(deps.ws, run_id).repo
    skip = (state or {}).get("plan_only") or (state or {}).get("candidates", 1) > 1  # N candidates: N sandboxes
    if deps.sandboxes is not None or deps.ws.repo(repo).is_self or skip:
        yield deps
        return
    with SandboxPool(deps.ws, repo, backend=deps.sandbox_backend) as pool:
        pool.warm(generations.current(deps.ws, repo).commit)
        yield replace(deps, sandboxes=pool)


@contextmanager
def _executor(deps: Deps) -> Iterator[Deps]:
    """``deps`` with an executor for candidates side by side: the one given, else ``[scale]``'s, made on first use.

    Closing waits for the jobs still running, so none outlives its run (a Ctrl-C does not wait).
    """
    if deps.executor is not None:
        yield deps
        return
    made = Deferred(deps.ws)
    try:
        yield replace(deps, executor=made)
    except KeyboardInterrupt:
        made.close(wait=False)
        raise
    finally:
        made.close()


def _finish(ws: Workspace, run_id: str, values: Any, status: runs.RunStatus, reason: str) -> RunResult:
    done = [runs.StepOutcome.model_validate(d) for d in values.get("done", [])]
    promoted = [d for d in done if d.outcome == "promoted"]
    failed = [d for d in done if d.outcome in ("failed", "rejected")]
    if status == "completed" and failed:  # what was promoted stays promoted; the run did not do all it planned
        first = failed[0]
        why = first.reason.splitlines()[0] if first.reason else "no reason given"
        status, reason = "failed", f"step {first.step} ({first.title}) {first.outcome}: {why}"
    elif status == "completed" and done and not promoted and not all(d.outcome == "no-change" for d in done):
        status, reason = "failed", "no step was promoted"
    updated = runs.update(
        ws,
        run_id,
        status=status,
        reason=reason,
        steps=done,
        steps_planned=len(values.get("steps", [])),
        changesets=[d.changeset for d in done if d.changeset],
        tokens=values.get("tokens", 0),
        waiting_on=None,
        seconds=round(time.time() - values.get("started", time.time()), 1),
    )
    adr.write_adr(ws, updated)
    runs.run_log(ws, run_id, "run", status=status, reason=reason, changesets=updated.changesets)
    return RunResult(record=updated, exit_code=0 if status == "completed" else 1)
