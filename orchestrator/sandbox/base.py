"""Sandboxes: every build, test and tool command of a candidate runs in one, never on the host.

    open_sandbox(ws, repo, worktree, label=...)   context manager -> Sandbox
      ├── reap orphans of this workspace (containers whose owning process died)
      ├── image.resolve                            the offline base image's recipe, by digest
      ├── SandboxBackend.prepare_env(...)          the repo's test environment (env.ensure_env)
      └── SandboxBackend.start(spec)               one long-lived container per candidate
    Sandbox.run(argv)        -> CommandResult      one command in the container, with timeout and output cap
    Sandbox.run_tests(ids)   -> TestReport         pytest under Converge's witness, cross-checked with JUnit

Hardening is not optional: a :class:`SandboxSpec` always says network none (except the
dependency setup of a repo that ``sandbox.allow`` loosens), a read-only root, the worktree
as the only writable mount with its ``.git`` read-only, dropped capabilities, a non-root
uid and resource limits. No engine, no image: :class:`SandboxError` with the fix, never a
run on the host. :class:`ScriptedBackend` is the scripted fake for control-flow tests.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from orchestrator.config import SandboxConfig
from orchestrator.errors import SandboxError
from orchestrator.sandbox import crosscheck
from orchestrator.sandbox.image import ImageSpec
from orchestrator.store import diskimage
from orchestrator.store.reports import CommandResult, TestReport
from orchestrator.store.storage import pid_alive
from orchestrator.store.workspace import Workspace

Loosening = Literal["network-deps"]
LABEL = "converge.sandbox"
JUNIT_PATH = "/tmp/converge-junit.xml"
TIMEOUT_EXIT = 124  # what `timeout(1)` reports; used by the CLI for a timed-out command


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container and its commands."""

    memory: str = "2g"
    cpus: float = 1.0
    pids: int = 256
    timeout: float = 600.0
    output_limit: int = 1_000_000
    tmpfs_size: str = "256m"

    @classmethod
    def from_config(cls, cfg: SandboxConfig) -> Limits:
        return cls(cfg.memory, cfg.cpus, cfg.pids, cfg.timeout, cfg.output_limit, cfg.tmpfs_size)


@dataclass(frozen=True)
class SandboxSpec:
    """Everything one sandbox container is: image, mounts, limits, environment, labels."""

    image: ImageSpec
    worktree: Path
    env_dir: Path | None
    limits: Limits
    labels: dict[str, str]
    environment: dict[str, str]
    network: bool = False  # only ever true for a loosened dependency setup
    worktree_writable: bool = True
    env_writable: bool = False  # only while the env is being built
    extra_mounts: tuple[tuple[Path, str], ...] = ()  # (host path, sandbox path), read-only: local wheels


class SandboxSession(Protocol):
    """A started sandbox of some backend: run commands in it, then close it."""

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int, witness: bool = False) -> CommandResult:
        """Run ``argv`` in the sandbox's worktree; kill it at ``timeout`` seconds.

        ``witness``: give the command a pipe named in ``CONVERGE_WITNESS_FD`` before it starts, and
        return what it wrote there as the result's ``witness``.
        """
        ...

    def close(self) -> None:
        """Stop and remove the sandbox; idempotent."""
        ...


class SandboxBackend(Protocol):
    """A way to run sandboxes (Docker; a scripted fake in tests)."""

    name: str

    def start(self, spec: SandboxSpec, fill: Callable[[], None] | None = None) -> SandboxSession:
        """Start one long-lived sandbox, or raise SandboxError saying how to fix the engine.

        ``fill``, if given, writes the worktree's files (it holds only its ``.git`` until then):
        a backend may run it while the sandbox starts; both are done when ``start`` returns,
        and an error of either is raised with nothing left running.
        """
        ...

    def prepare_env(
        self, ws: Workspace, repo: str, spec: SandboxSpec, *, allow_network: bool, requirements: list[str] | None
    ) -> Path | None:
        """The test environment mounted at ``/env`` for ``spec``'s worktree (or ``requirements``),
        built now if it is new; None for a backend whose sandboxes need none (the scripted one)."""
        ...

    def reap(self, workspace: Path | None, include_live: bool = False) -> list[str]:
        """Remove sandboxes left by dead processes (of one workspace, or all); their ids."""
        ...

    def close(self) -> None:
        """Release the connection to the engine (sessions already started are closed first)."""
        ...


class Sandbox:
    """A running sandbox over one candidate worktree."""

    def __init__(self, session: SandboxSession, spec: SandboxSpec) -> None:
        self._session = session
        self.spec = spec

    def run(self, argv: Sequence[str], timeout: float | None = None, output_limit: int | None = None) -> CommandResult:
        """Run one command in the worktree (``/src``); the result says how it ended."""
        if not argv:
            raise SandboxError("empty command: give the program to run and its arguments")
        limits = self.spec.limits
        result = self._session.exec(list(argv), timeout or limits.timeout, output_limit or limits.output_limit)
        if not result.ok and diskimage.is_full(self.spec.worktree):
            note = (
                f"\nconverge: sandbox disk limit reached: {self.spec.worktree} is full (sandbox.disk in converge.toml)"
            )
            return result.model_copy(update={"stderr_tail": result.stderr_tail + note})
        return result

    def run_tests(
        self, test_ids: Sequence[str] | None = None, timeout: float | None = None, options: Sequence[str] = ()
    ) -> TestReport:
        """Run pytest (all tests, or the given ids; ``options`` before them) under Converge's witness.

        The outcomes are the witness's, cross-checked with the JUnit file and the exit code
        (:mod:`~orchestrator.sandbox.crosscheck`); the JUnit file is named afresh for each run,
        so a file left by an earlier one is never read as this one's.
        """
        junit = f"{JUNIT_PATH.removesuffix('.xml')}-{secrets.token_hex(8)}.xml"
        argv = [*witness_command(), "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
        argv += [f"--junitxml={junit}", *options, *(test_ids or [])]
        limits = self.spec.limits
        command = self._session.exec(argv, timeout or limits.timeout, limits.output_limit, witness=True)
        shown = [_witness_name() if arg == witness_source() else arg for arg in command.argv]
        command = command.model_copy(update={"argv": shown})  # reports and logs name the witness, not its text
        xml = self._session.exec(["cat", junit], 60.0, 64_000_000)
        text = xml.stdout_tail if xml.exit_code == 0 and xml.stdout_tail.strip() else None
        selection: Literal["all", "selected"] = "selected" if test_ids or options else "all"
        return crosscheck.test_report(command, text, selection)


def witness_command() -> list[str]:
    """The test run's interpreter, isolated (``-I``), with Converge's witness as its program (see sandbox.witness)."""
    return ["python", "-I", "-c", witness_source()]


@functools.cache
def witness_source() -> str:
    """The witness plugin's source, read once: it goes into the sandbox on the command line."""
    return (Path(__file__).parent / "witness.py").read_text(encoding="utf-8")


def _witness_name() -> str:
    return f"<converge-witness sha256:{hashlib.sha256(witness_source().encode()).hexdigest()[:16]}>"


def orphaned(labels: dict[str, str]) -> bool:
    """Whether the sandbox with these labels was left by a process of this host that is gone."""
    if labels.get("converge.host") != socket.gethostname():
        return False  # another machine's engine view: its owner cannot be checked from here
    pid = labels.get("converge.pid", "")
    return pid.isdigit() and not pid_alive(int(pid))


@dataclass(frozen=True)
class OutputTail:
    """The last ``limit`` bytes of a stream (``kept``) and how many bytes it had in all.

    The sandbox's runner keeps the tail as the command writes; this is its answer, made text.
    """

    kept: bytes
    total: int
    limit: int

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        kept = self.kept[-self.limit :] if self.limit else b""
        body = kept.decode("utf-8", errors="replace")
        if self.truncated:
            return f"[converge: output truncated, {self.total - len(kept)} earlier bytes dropped]\n{body}"
        return body


def describe(argv: Sequence[str]) -> str:
    """A command as a person would type it (for messages)."""
    return shlex.join(argv)
