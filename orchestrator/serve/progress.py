"""Where each run is, read from the files the loop already writes, and streamed as server-sent events.

Sources: ``.converge/runs/<id>.json`` (status, steps, the changeset it waits on), ``.converge/logs/<id>.jsonl``
(model calls, test runs, verdicts, the end) and ``cache/runs/<id>/<s>-<a>.*`` (each attempt's test report
and verdict). The stream sends every run once, then each run again when it changes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from anyio import to_thread
from pydantic import ValidationError

from orchestrator.store import runs
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import read_json
from orchestrator.store.workspace import Workspace

STAGE_OF = {"model": "propose", "tests": "verify", "verdict": "judge"}
RETRY_MS = 2000


@dataclass(frozen=True)
class RunProgress:
    """One run as the runs page shows it."""

    id: str
    repo: str
    goal: str
    status: str
    stage: str
    step: int | None
    attempt: int | None
    steps_done: int
    steps_planned: int
    tokens: int
    tokens_per_second: float | None
    tests: str
    waiting_on: str | None
    reason: str
    updated: str


@dataclass(frozen=True)
class LogEvent:
    """One line of a run's log, for people."""

    at: str
    kind: str
    step: int | None
    attempt: int | None
    text: str


@dataclass(frozen=True)
class AttemptView:
    """One attempt of one step: its tests and verdict, and the failing output."""

    step: int
    attempt: int
    tests: str
    failing: tuple[str, ...]
    output: str
    verdict: str


def _log_path(ws: Workspace, run_id: str) -> Path:
    return ws.state / "logs" / f"{run_id}.jsonl"


def read_log(ws: Workspace, run_id: str) -> list[dict[str, Any]]:
    """The run's log entries, oldest first (a torn last line, being written, is skipped)."""
    path = _log_path(ws, run_id)
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            entries.append(value)
    return entries


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _latest(entries: list[dict[str, Any]], *kinds: str) -> dict[str, Any]:
    return next((e for e in reversed(entries) if e.get("kind") in kinds), {})


def progress(ws: Workspace, record: runs.RunRecord) -> RunProgress:
    """Where ``record``'s run is now.

    The stage shown is the last stage the log recorded for the current step (``propose`` after a
    model call, ``verify`` after tests, ``judge`` after a verdict), or ``review`` while the run
    waits on a person.
    """
    entries = read_log(ws, record.id)
    last = _latest(entries, *STAGE_OF)
    model = _latest(entries, "model")
    tests = _latest(entries, "tests")
    out, seconds = model.get("tokens_out"), model.get("seconds")
    rate = round(out / seconds, 1) if isinstance(out, int) and isinstance(seconds, int | float) and seconds else None
    stage = STAGE_OF.get(str(last.get("kind")), "plan")
    if record.status == "waiting_review":
        stage = "review"
    elif record.status in ("completed", "failed"):
        stage = "done"
    return RunProgress(
        id=record.id,
        repo=record.repo,
        goal=record.goal,
        status=record.status,
        stage=stage,
        step=_int(last.get("step")),
        attempt=_int(last.get("attempt")),
        steps_done=len(record.steps),
        steps_planned=record.steps_planned,
        tokens=record.tokens,
        tokens_per_second=rate,
        tests=str(tests.get("summary") or ""),
        waiting_on=record.waiting_on,
        reason=record.reason,
        updated=record.updated,
    )


def events(ws: Workspace, run_id: str) -> list[LogEvent]:
    """The run's log as lines for people."""
    found = []
    for e in read_log(ws, run_id):
        kind = str(e.get("kind", "?"))
        if kind == "model":
            text = f"{e.get('agent', '?')}: {e.get('tokens_out', '?')} tokens out in {e.get('seconds', '?')}s"
        elif kind == "tests":
            text = f"{e.get('summary', '')} (exit {e.get('exit_code')}, {e.get('selection', '')})"
        elif kind == "verdict":
            text = f"{e.get('decision')} (risk {e.get('risk')})" + "".join(f"; {r}" for r in e.get("reasons") or [])
        else:
            text = f"{e.get('status', '')} {e.get('reason', '')}".strip()
        found.append(LogEvent(str(e.get("at", "")), kind, _int(e.get("step")), _int(e.get("attempt")), text))
    return found


def attempts(ws: Workspace, run_id: str) -> list[AttemptView]:
    """Every attempt that reached the tests, with the failing tests' output."""
    folder = runs.run_dir(ws, run_id)
    found = []
    for path in sorted(folder.glob("*-*.tests.json")) if folder.is_dir() else []:
        step, _, attempt = path.name.removesuffix(".tests.json").partition("-")
        if not (step.isdigit() and attempt.isdigit()):
            continue
        try:
            report = TestReport.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValidationError, OSError):
            continue
        verdict_file = path.with_name(path.name.replace(".tests.json", ".verdict.json"))
        verdict = str(read_json(verdict_file).get("decision", "")) if verdict_file.exists() else ""
        cmd = report.command
        output = "" if report.ok or cmd is None else (cmd.stdout_tail + "\n" + cmd.stderr_tail).strip()
        found.append(
            AttemptView(int(step), int(attempt), report.summary, (*report.failed, *report.errored), output, verdict)
        )
    return sorted(found, key=lambda a: (a.step, a.attempt))


def snapshot(ws: Workspace) -> list[RunProgress]:
    """Every run's progress, newest first."""
    return [progress(ws, r) for r in runs.list_runs(ws)]


async def stream(
    ws: Workspace, disconnected: Callable[[], Any], seconds: float, interval: float = 1.0
) -> AsyncIterator[str]:
    """Server-sent events: each run, then each change, for ``seconds`` (the browser reconnects after)."""
    yield f"retry: {RETRY_MS}\n\n"
    sent: dict[str, RunProgress] = {}
    deadline = time.monotonic() + seconds
    while True:
        for item in await to_thread.run_sync(snapshot, ws):
            if sent.get(item.id) != item:
                sent[item.id] = item
                yield f"event: run\ndata: {json.dumps(asdict(item), sort_keys=True)}\n\n"
        if time.monotonic() >= deadline or await disconnected():
            return
        await asyncio.sleep(interval)
