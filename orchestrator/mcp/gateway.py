"""The gate as the MCP server calls it: the only module of this package that calls into ``gate``.

Kept to two functions so that when the gate's stages move (``gate.stages`` splitting into
``gate.submit``, ``gate.audit``...), re-pointing the server is a change here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.gate import audit, stages
from orchestrator.store.changesets import Changeset
from orchestrator.store.workspace import Workspace


def submit(ws: Workspace, repo: str, patch_file: Path, message: str) -> Changeset:
    """A patch file through the whole gate, exactly as ``converge submit`` sends it (never auto-approved)."""
    return stages.submit(ws, repo, patch_file, message, auto_approve=False)


def problems(ws: Workspace, cs: Changeset) -> list[str]:
    """What does not verify about ``cs`` (commit signature, attestation, every digest); empty: it all does."""
    return [str(problem) for problem in audit.check(ws, cs)]
