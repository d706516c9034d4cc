"""The base generation's own test report on a candidate's environment: run once, then read from the cache.

A candidate is judged against what its base passed (``policy.baseline``). The base's tests run in a
sandbox exactly like the candidate's — same image, test environment, limits and variables, over a
fresh checkout of the base — and the report is kept at
``cache/reference/<repo>/<base>-<environment digest>.json``; a lock makes concurrent verifies of
the same base wait for one run instead of starting several. A candidate's own full run is kept the
same way (:func:`remember`): promoted, it is the next step's base, whose run is then already there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from orchestrator.errors import ConvergeError
from orchestrator.sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from orchestrator.store import worktrees
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import atomic_write, file_lock, read_model
from orchestrator.store.workspace import Workspace

Run = Callable[[Sandbox], TestReport]


def environment_digest(spec: SandboxSpec, kind: str) -> str:
    """What the base's report depends on besides the base: image, test environment, variables, limits, the run."""
    doc = {
        "kind": kind,
        "image": spec.image.digest,
        "env": spec.env_dir.name if spec.env_dir is not None else None,
        "environment": spec.environment,
        "limits": [spec.limits.memory, spec.limits.cpus, spec.limits.pids, spec.limits.timeout],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cache_path(ws: Workspace, repo: str, base: str, spec: SandboxSpec, kind: str) -> Path:
    return ws.cache / "reference" / repo / f"{base}-{environment_digest(spec, kind)[:16]}.json"


def cached(ws: Workspace, repo: str, base: str, spec: SandboxSpec, kind: str) -> TestReport | None:
    """The base's report on this environment, if it was run before (a damaged file counts as absent)."""
    path = cache_path(ws, repo, base, spec, kind)
    if not path.is_file():
        return None
    try:
        return read_model(path, TestReport)
    except ConvergeError:
        return None


def remember(ws: Workspace, repo: str, commit: str, spec: SandboxSpec, report: TestReport, kind: str = "all") -> None:
    """Keep a full, untampered run of ``commit`` as its reference, should it become a base (first one wins)."""
    if not report.ran or report.tampered or (kind == "all" and report.selection != "all"):
        return
    path = cache_path(ws, repo, commit, spec, kind)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, report.model_dump_json(indent=2))


def reference_report(
    ws: Workspace, repo: str, base: str, spec: SandboxSpec, backend: SandboxBackend, run: Run, kind: str = "all"
) -> TestReport:
    """The report of ``run`` over ``base`` in a sandbox like ``spec``: from the cache, or run now and kept."""
    found = cached(ws, repo, base, spec, kind)
    if found is not None:
        return found
    path = cache_path(ws, repo, base, spec, kind)
    with file_lock(ws.state / "locks" / f"reference-{path.stem}.lock", "the base's reference test run", wait=True):
        found = cached(ws, repo, base, spec, kind)
        if found is not None:
            return found
        source = ws.repo_path(repo)
        tree = worktrees.scratch_worktree(ws, repo, base, fill=True)
        try:
            labels = {**spec.labels, "converge.candidate": f"reference-{base[:12]}"}
            at_base = replace(spec, worktree=tree, labels=labels)
            session = backend.start(at_base)
            try:
                report = run(Sandbox(session, at_base))
            finally:
                session.close()
        finally:
            worktrees.remove_worktree(source, tree)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, report.model_dump_json(indent=2))
    return report
