"""How tests drive refinement runs: the loop's and the review's entry points, imported here only.

If the loop's or the gate's entry points move, only the imports below change. :func:`scripted_deps`
wires a run to a scripted model and a scripted sandbox.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.gate.audit import check as audit_problems
from orchestrator.gate.review import approve, reject
from orchestrator.loop.driver import RunResult, resume_run, start_run
from orchestrator.loop.state import Deps
from orchestrator.sandbox.scripted import ScriptedBackend as ScriptedSandbox
from orchestrator.store.workspace import Workspace
from tests.scripted import ScriptedBackend as ScriptedModel

__all__ = ["Deps", "RunResult", "approve", "audit_problems", "reject", "resume_run", "scripted_deps", "start_run"]


def scripted_deps(
    ws: Workspace, model: ScriptedModel, sandbox: ScriptedSandbox, on_event: Callable[[str], None] | None = None
) -> Deps:
    """The dependencies of a run whose model and sandbox are scripted: nothing real but git, policy and signing."""
    return Deps(ws=ws, model_for=model.factory(), on_event=on_event or (lambda _text: None), sandbox_backend=sandbox)
