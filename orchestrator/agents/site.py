"""Where an agent works: a registered repo at one commit, and the sandboxes it may run tools in."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.sandbox.base import SandboxBackend
from orchestrator.sandbox.pool import SandboxPool
from orchestrator.store.workspace import Workspace


@dataclass(frozen=True)
class Site:
    """Registered ``repo`` of ``ws`` at ``commit``; tools run in ``pool``'s sandboxes (else ``backend``'s)."""

    ws: Workspace
    repo: str
    commit: str
    pool: SandboxPool | None = None
    backend: SandboxBackend | None = None
