"""The nested sandbox backend: sandbox commands as plain child processes, only inside an outer sandbox.

The outer sandbox gives the isolation (no network, read-only root, limits); this backend maps the
sandbox's paths (``/env`` -> the spec's env dir) and enforces timeouts. It refuses to start unless
the outer sandbox's marker variable is set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import SandboxSpec
from orchestrator.sandbox.env import ensure_env
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace

SANDBOX_MARKER = "CONVERGE_IN_SANDBOX"
WITNESS_FD = "CONVERGE_WITNESS_FD"  # as the sandbox runner names the witness's pipe


def in_sandbox(environ: dict[str, str] | None = None) -> bool:
    """Whether this process runs inside an outer sandbox (its recipe/config sets the marker)."""
    env = os.environ if environ is None else environ
    return env.get(SANDBOX_MARKER) == "1"


@dataclass
class NestedBackend:
    """Runs sandbox commands as plain child processes: acceptable only inside an outer sandbox.

    The outer sandbox gives the isolation (no network, read-only root, limits); this backend only
    maps the sandbox's paths (``/env`` -> the spec's env dir) and enforces timeouts.
    """

    name: str = "nested"
    started: list[SandboxSpec] = field(default_factory=list)

    def start(self, spec: SandboxSpec, fill: Callable[[], None] | None = None) -> NestedSession:
        if not in_sandbox():
            raise SandboxError(
                f"the nested sandbox backend runs commands directly and is refused outside a sandbox "
                f"(${SANDBOX_MARKER} is not 1); use the docker backend"
            )
        if fill is not None:
            fill()
        self.started.append(spec)
        return NestedSession(spec)

    def prepare_env(
        self, ws: Workspace, repo: str, spec: SandboxSpec, *, allow_network: bool, requirements: list[str] | None
    ) -> Path | None:
        """The host-built environment Docker's sandboxes mount; its interpreter runs the commands."""
        return ensure_env(ws, repo, spec, self, allow_network=allow_network, requirements=requirements)

    def reap(self, workspace: Path | None, include_live: bool = False) -> list[str]:
        return []

    def close(self) -> None:
        return None


class NestedSession:
    """One nested "sandbox": commands run in the worktree with the spec's environment."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.env_dir: Path | None = spec.env_dir

    def _map(self, text: str) -> str:
        if self.env_dir is not None and (text == "/env" or text.startswith("/env/")):
            return str(self.env_dir) + text[4:]
        return text

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int, witness: bool = False) -> CommandResult:
        env = dict(self.spec.environment)
        env["PATH"] = ":".join(self._map(p) for p in env.get("PATH", "/usr/bin:/bin").split(":"))
        wit_r, wit_w = os.pipe() if witness else (None, None)
        if wit_w is not None:
            env[WITNESS_FD] = str(wit_w)
        events = bytearray()
        reader = threading.Thread(target=_drain, args=(wit_r, events), daemon=True) if wit_r is not None else None
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [self._map(a) for a in argv],
                cwd=self.spec.worktree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(wit_w,) if wit_w is not None else (),
            )
        except OSError as exc:
            if wit_r is not None:
                os.close(wit_r)
            return CommandResult(argv=list(argv), exit_code=127, duration=0.0, stderr_tail=str(exc))
        finally:
            if wit_w is not None:
                os.close(wit_w)
        if reader is not None:
            reader.start()
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        if reader is not None:
            reader.join(timeout=5.0)
        tail_out, tail_err = out[-output_limit:], err[-output_limit:]
        return CommandResult(
            argv=list(argv),
            exit_code=124 if timed_out else proc.returncode,
            duration=time.monotonic() - started,
            timed_out=timed_out,
            stdout_tail=tail_out.decode("utf-8", "replace"),
            stderr_tail=tail_err.decode("utf-8", "replace"),
            truncated=len(out) > output_limit or len(err) > output_limit,
            witness=bytes(events).decode("utf-8", "replace") if witness else None,
        )

    def close(self) -> None:
        return None


def _drain(fd: int, into: bytearray) -> None:
    """Read the witness's pipe to its end (a thread: the command's output pipes are read meanwhile)."""
    try:
        while chunk := os.read(fd, 65536):
            into += chunk
    finally:
        os.close(fd)
