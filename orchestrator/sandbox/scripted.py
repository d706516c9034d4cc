"""The scripted sandbox backend: answers each command from a script and records what ran.

For control-flow tests of everything above the sandbox; the Docker backend passes the same
contract suite (``tests/test_sandbox_contract.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.sandbox.base import SandboxSession, SandboxSpec
from orchestrator.store.reports import CommandResult


@dataclass
class ScriptedBackend:
    """The scripted fake: answers each command with ``script(argv)``; records what ran."""

    script: Callable[[list[str]], CommandResult]
    name: str = "scripted"
    ran: list[list[str]] = field(default_factory=list)
    started: list[SandboxSpec] = field(default_factory=list)
    open_sessions: int = 0

    def start(self, spec: SandboxSpec, fill: Callable[[], None] | None = None) -> SandboxSession:
        if fill is not None:
            fill()
        self.started.append(spec)
        self.open_sessions += 1
        return _ScriptedSession(self)

    def reap(self, workspace: Path | None, include_live: bool = False) -> list[str]:
        return []

    def close(self) -> None:
        return None


@dataclass
class _ScriptedSession:
    backend: ScriptedBackend
    closed: bool = False

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int, witness: bool = False) -> CommandResult:
        self.backend.ran.append(list(argv))
        started = time.monotonic()
        result = self.backend.script(list(argv))
        return result.model_copy(update={"duration": result.duration or time.monotonic() - started})

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.open_sessions -= 1
