"""Sandboxes: every build, test and tool command of a candidate runs in one, never on the host.

    open_sandbox(ws, repo, worktree, label=...)   context manager -> Sandbox
      ├── reap orphans of this workspace (containers whose owning process died)
      ├── image.resolve                            the offline base image's recipe, by digest
      ├── SandboxBackend.prepare_env(...)          the repo's test environment (env.ensure_env)
      └── SandboxBackend.start(spec)               one long-lived container per candidate
    Sandbox.run(argv)        -> CommandResult      one command in the container, with timeout and output cap
    Sandbox.run_tests(ids)   -> TestReport         pytest with JUnit XML, parsed into test ids

Hardening is not optional: a :class:`SandboxSpec` always says network none (except the
dependency setup of a repo that ``sandbox.allow`` loosens), a read-only root, the worktree
as the only writable mount with its ``.git`` read-only, dropped capabilities, a non-root
uid and resource limits. No engine, no image: :class:`SandboxError` with the fix, never a
run on the host. :class:`ScriptedBackend` is the scripted fake for control-flow tests.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from xml.etree import ElementTree

from orchestrator.config import SandboxConfig
from orchestrator.errors import SandboxError
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

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int) -> CommandResult:
        """Run ``argv`` in the sandbox's worktree; kill it at ``timeout`` seconds."""
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

    def run_tests(self, test_ids: Sequence[str] | None = None, timeout: float | None = None) -> TestReport:
        """Run pytest (all tests, or the given ids) and parse its JUnit XML into a TestReport."""
        argv = [
            "python",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "junit_family=xunit1",
            f"--junitxml={JUNIT_PATH}",
            *(test_ids or []),
        ]
        command = self.run(argv, timeout)
        xml = self._session.exec(["cat", JUNIT_PATH], 60.0, 64_000_000)
        selection: Literal["all", "selected"] = "selected" if test_ids else "all"
        if xml.exit_code != 0 or not xml.stdout_tail.strip():
            return TestReport(ran=False, command=command, selection=selection)
        outcome = parse_junit(xml.stdout_tail)
        return TestReport(ran=True, command=command, selection=selection, **outcome)


def orphaned(labels: dict[str, str]) -> bool:
    """Whether the sandbox with these labels was left by a process of this host that is gone."""
    if labels.get("converge.host") != socket.gethostname():
        return False  # another machine's engine view: its owner cannot be checked from here
    pid = labels.get("converge.pid", "")
    return pid.isdigit() and not pid_alive(int(pid))


def parse_junit(text: str) -> dict[str, list[str]]:
    """JUnit XML (pytest, xunit1 or xunit2) -> passed/failed/errored/skipped test ids."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise SandboxError(f"test report is not valid JUnit XML: {exc}") from exc
    found: dict[str, list[str]] = {"passed": [], "failed": [], "errored": [], "skipped": []}
    for case in root.iter("testcase"):
        test_id = _test_id(case.get("classname", ""), case.get("name", ""), case.get("file"))
        kinds = {child.tag for child in case}
        if "error" in kinds:
            found["errored"].append(test_id)
        elif "failure" in kinds:
            found["failed"].append(test_id)
        elif "skipped" in kinds:
            found["skipped"].append(test_id)
        else:
            found["passed"].append(test_id)
    return found


def _test_id(classname: str, name: str, file: str | None) -> str:
    """``tests.test_x.TestA`` + ``test_b`` (+ ``tests/test_x.py``) -> ``tests/test_x.py::TestA::test_b``."""
    if not classname:
        return name  # a collection error names the module in `name`
    if file and file.endswith(".py"):
        module = file[:-3].replace("/", ".")
        rest = classname[len(module) + 1 :] if classname.startswith(module) else ""
        return "::".join([file, *(p for p in rest.split(".") if p), name])
    parts = classname.split(".")
    classes = [p for p in parts if p[:1].isupper()]
    modules = parts[: len(parts) - len(classes)]
    return "::".join(["/".join(modules) + ".py", *classes, name])


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
