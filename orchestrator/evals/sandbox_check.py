"""The hidden check: a task's ``check`` in a fresh sandbox over one commit of its repo, ``check/`` overlaid.

It runs on the start tree before the run (a task whose check passes there is invalid) and on
the final generation after it. The check files go into a scratch worktree that no agent ever
sees, and the sandbox is a new one over that worktree. The start-tree verdict depends only
on the task's files and the sandbox's image and tools, so it is remembered under a digest of
those in ``cache/eval/validity/`` of the user's workspace: repeats and later evals skip it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import time
from dataclasses import dataclass

from orchestrator.evals.suite import SKIPPED, Task
from orchestrator.sandbox.factory import open_sandbox
from orchestrator.sandbox.image import resolve
from orchestrator.store import worktrees
from orchestrator.store.storage import atomic_write_json, read_json
from orchestrator.store.workspace import Workspace

TAIL_LINES = 3
TIMED_OUT = 124  # the exit code a timed-out check reports, as timeout(1) does


@dataclass(frozen=True)
class CheckOutcome:
    """How a check ended."""

    exit_code: int
    seconds: float
    tail: str  # the last lines of its output, for the one-line reason
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def run_check(ws: Workspace, repo: str, commit: str, task: Task, label: str) -> CheckOutcome:
    """``task``'s check in a fresh sandbox over ``commit`` of ``repo`` with ``check/`` copied in."""
    started = time.monotonic()
    path = worktrees.scratch_worktree(ws, repo, commit)
    try:
        if task.check_dir is not None:
            shutil.copytree(task.check_dir, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*SKIPPED, "*.pyc"))
        with open_sandbox(ws, repo, path, label=label) as box:
            result = box.run(task.check_argv, timeout=task.spec.timeout)
    finally:
        worktrees.remove_worktree(ws.repo_path(repo), path)
    output = (result.stdout_tail + "\n" + result.stderr_tail).strip().splitlines()
    exit_code = TIMED_OUT if result.timed_out else result.exit_code
    return CheckOutcome(exit_code, round(time.monotonic() - started, 3), "\n".join(output[-TAIL_LINES:]))


def start_tree(user: Workspace, ws: Workspace, repo: str, commit: str, task: Task) -> CheckOutcome:
    """The check on the start tree (``commit``), remembered across evals of the same task files and sandbox."""
    cache = user.cache / "eval" / "validity" / f"{validity_key(ws, task)}.json"
    if cache.is_file():
        found = read_json(cache)
        return CheckOutcome(int(found["exit_code"]), 0.0, str(found.get("tail", "")), cached=True)
    outcome = run_check(ws, repo, commit, task, label=f"eval-start-{task.name}")
    if outcome.exit_code != TIMED_OUT:  # a slow machine's timeout says nothing lasting about the task
        atomic_write_json(cache, {"task": task.name, "exit_code": outcome.exit_code, "tail": outcome.tail})
    return outcome


def validity_key(ws: Workspace, task: Task) -> str:
    """A digest of what the start-tree check depends on: the task's files, the sandbox image, its tools."""
    versions = {name: _version(name) for name in ("pytest", "ruff")}
    doc = {"task": task.digest, "image": resolve(ws).digest, "tools": versions}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (for a one-line reason)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
