"""What the page's buttons do: the same library calls as the CLI, in one place.

Whatever the CLI refuses raises the same ConvergeError here, and the page shows its message.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Literal

from orchestrator.errors import ConvergeError, UsageError
from orchestrator.gate import review
from orchestrator.loop.driver import resume_run
from orchestrator.loop.factory import model_factory
from orchestrator.loop.state import Deps
from orchestrator.store import generations, runs
from orchestrator.store.changesets import Changeset
from orchestrator.store.generations import Generation
from orchestrator.store.workspace import Workspace

Decision = Literal["approve", "reject"]
DepsFor = Callable[[Workspace], Deps]


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_deps(ws: Workspace) -> Deps:
    """What `converge resume` drives a run with: the workspace's models, progress on stderr."""
    return Deps(ws=ws, model_for=model_factory(ws), on_event=_log)


class Resumer:
    """Resumes runs in background threads; ``wait`` joins them (shutdown, tests)."""

    def __init__(self, deps_for: DepsFor = default_deps) -> None:
        self.deps_for = deps_for
        self._threads: list[threading.Thread] = []

    def resume(self, ws: Workspace, run_id: str | None) -> bool:
        """Resume ``run_id`` if it waits on a review; True when a resume started."""
        if not run_id:
            return False
        try:
            record = runs.load(ws, run_id)
        except UsageError:
            return False  # a submitted patch, not a run
        if record.status != "waiting_review":
            return False
        thread = threading.Thread(target=self._drive, args=(ws, run_id), name=f"resume-{run_id}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return True

    def _drive(self, ws: Workspace, run_id: str) -> None:
        try:
            result = resume_run(self.deps_for(ws), run_id)
            record = result.record
            _log(f"run {run_id}: {record.status}" + (f" ({record.reason})" if record.reason else ""))
        except ConvergeError as exc:  # the run record says the rest; `converge resume` can go on
            _log(f"run {run_id}: {exc}")

    def running(self) -> list[str]:
        """Runs whose resume has not finished yet."""
        return [t.name.removeprefix("resume-") for t in self._threads if t.is_alive()]

    def wait(self, timeout: float | None = None) -> None:
        """Join every resume started so far."""
        for thread in list(self._threads):
            thread.join(timeout)


def decide(ws: Workspace, cs_id: str, decision: Decision, reason: str, resumer: Resumer) -> Changeset:
    """`converge changeset approve ID` / `reject ID --reason R`: decide, then resume the run that waits on it.

    The gate's approve (verify, sign with the person's key, promote) or reject (a reason required);
    the paused run is resumed in a background thread so the page answers at once and follows the
    run by its progress events.
    """
    cs = review.approve(ws, cs_id) if decision == "approve" else review.reject(ws, cs_id, reason)
    resumer.resume(ws, cs.run)
    return cs


def rollback(ws: Workspace, repo: str, to: int) -> Generation:
    """`converge rollback REPO --to K` (never ``--force``: uncommitted work is the CLI's to stash)."""
    gen, _ = generations.rollback(ws, repo, to, force=False)
    return gen
