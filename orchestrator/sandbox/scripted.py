"""The scripted sandbox backend: answers each command from a script and records what ran.

For control-flow tests of everything above the sandbox (pool, gate, loop) with no engine: no
image, no test environment, no container. :class:`PytestScript` answers pytest runs on cue (the
command's result with its witness stream, then its JUnit XML), other commands (a tool agent's) with "done, no change",
and raises a SandboxError (or any exception) whose turn it is. Timeouts and the output cap
apply as in the Docker runner; both backends pass ``tests/test_sandbox_contract.py``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import JUNIT_PATH, OutputTail, SandboxSpec, orphaned
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace

Script = Callable[[list[str]], CommandResult]
KILLED = 128 + signal.SIGKILL  # what the runner reports for a command stopped at its timeout


def is_test_run(argv: Sequence[str]) -> bool:
    """A pytest run: under Converge's witness (``python -I -c <witness>``), or plain."""
    return list(argv[:3]) == ["python", "-I", "-c"] or "pytest" in argv[:3]


def no_change(argv: list[str]) -> CommandResult:
    """A command that succeeded quietly: a tool agent that found nothing to change."""
    return CommandResult(argv=argv, exit_code=0, duration=0.0)


@dataclass(frozen=True)
class PytestRun:
    """One pytest run as a sandbox reports it: test ids (``tests/test_a.py::TestB::test_c``) by outcome."""

    passed: Sequence[str] = ()
    failed: Sequence[str] = ()
    errored: Sequence[str] = ()
    skipped: Sequence[str] = ()

    def result(self, argv: list[str]) -> CommandResult:
        """The pytest command's result: exit 1 if anything failed, 5 if nothing was collected."""
        counts = {"passed": self.passed, "failed": self.failed, "errors": self.errored, "skipped": self.skipped}
        summary = ", ".join(f"{len(ids)} {word}" for word, ids in counts.items() if ids) or "no tests ran"
        code = 1 if self.failed or self.errored else 0 if self.passed or self.skipped else 5
        return CommandResult(
            argv=argv, exit_code=code, duration=0.0, stdout_tail=f"{summary}\n", witness=self.witness(code)
        )

    def witness(self, code: int) -> str:
        """The events Converge's witness (``sandbox.witness``) streams for this run."""
        events: list[dict[str, object]] = [{"e": "start"}]
        tests = [t for t in (*self.passed, *self.failed, *self.errored, *self.skipped) if "::" in t]
        events += [{"e": "collected", "ids": tests}, {"e": "collection_done", "count": len(tests)}]
        events += [{"e": "collect_error", "id": t, "junit": _names(t)} for t in self.errored if "::" not in t]
        phases = [(t, "call", "passed") for t in self.passed] + [(t, "call", "failed") for t in self.failed]
        phases += [(t, "setup", "failed") for t in self.errored if "::" in t]
        phases += [(t, "setup", "skipped") for t in self.skipped]
        for test, when, outcome in phases:
            events.append({"e": "made", "id": test, "when": when, "outcome": outcome, "junit": _names(test)})
            events.append({"e": "logged", "id": test, "when": when, "outcome": outcome})
        events += [{"e": "finish", "status": code}, {"e": "exit", "status": code}]
        return "".join(json.dumps(event) + "\n" for event in events)

    def junit(self) -> str:
        """The JUnit XML (xunit1, with ``file`` attributes) pytest writes for this run."""
        suite = ElementTree.Element("testsuite", name="pytest")
        for ids, outcome in ((self.passed, ""), (self.failed, "failure"), (self.errored, "error")):
            for test_id in ids:
                _case(suite, test_id, outcome)
        for test_id in self.skipped:
            _case(suite, test_id, "skipped")
        root = ElementTree.Element("testsuites")
        root.append(suite)
        return ElementTree.tostring(root, encoding="unicode")


def _names(test_id: str) -> list[str]:
    """The JUnit ``[classname, name]`` of a test id (a collection error: the module, dotted, as the name)."""
    file, sep, rest = test_id.partition("::")
    if not sep:
        return ["", file.removesuffix(".py").replace("/", ".")]
    *classes, name = rest.split("::")
    return [".".join([file.removesuffix(".py").replace("/", "."), *classes]), name]


def _case(suite: ElementTree.Element, test_id: str, outcome: str) -> None:
    classname, name = _names(test_id)
    file, sep, _rest = test_id.partition("::")
    if not sep:  # a collection error names the module only
        case = ElementTree.SubElement(suite, "testcase", classname="", name=name)
    else:
        case = ElementTree.SubElement(suite, "testcase", classname=classname, name=name, file=file)
    if outcome:
        ElementTree.SubElement(case, outcome, message=outcome)


@dataclass
class PytestScript:
    """A script: pytest answered with ``runs`` in order (the last one again once they are spent),
    ``cat`` of the JUnit file with the XML of the latest run (of the asking thread), anything else
    by ``other``. A reference sandbox (the base's run, ``sandbox.reference``) is answered with
    ``base``: by default every test any of ``runs`` passes, passing.

    An exception among ``runs`` is raised at its turn: a SandboxError (the sandbox broke), or
    anything else (the process died mid-step).
    """

    runs: list[PytestRun | BaseException] = field(default_factory=lambda: [PytestRun()])
    other: Script = no_change
    base: PytestRun | None = None
    latest_of: dict[int, PytestRun] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.base is None:  # taken now: runs are used up as they are answered
            passing = [t for run in self.runs if isinstance(run, PytestRun) for t in run.passed]
            self.base = PytestRun(passed=list(dict.fromkeys(passing)))

    @property
    def latest(self) -> PytestRun | None:
        return self.latest_of.get(threading.get_ident())

    def __call__(self, argv: list[str]) -> CommandResult:
        return self._answer(argv, reference=False)

    def reference(self, argv: list[str]) -> CommandResult:
        """The answer in the base's reference sandbox."""
        return self._answer(argv, reference=True)

    def _answer(self, argv: list[str], reference: bool) -> CommandResult:
        if is_test_run(argv):
            if reference:
                cue: PytestRun | BaseException = self.base or PytestRun()
            else:
                cue = self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]
            if isinstance(cue, BaseException):
                raise cue
            self.latest_of[threading.get_ident()] = cue
            return cue.result(argv)
        if len(argv) == 2 and argv[0] == "cat" and argv[1].startswith(JUNIT_PATH.removesuffix(".xml")):
            latest = self.latest
            if latest is None:
                missing = f"cat: {argv[1]}: No such file or directory\n"
                return CommandResult(argv=argv, exit_code=1, duration=0.0, stderr_tail=missing)
            return CommandResult(argv=argv, exit_code=0, duration=0.0, stdout_tail=latest.junit())
        return self.other(argv)


@dataclass
class ScriptedBackend:
    """The scripted fake: answers each command with ``script(argv)``; records what ran and what started.

    ``start_error``: raised by every start, as by an engine that is down.
    """

    script: Script
    start_error: SandboxError | None = None
    name: str = "scripted"
    ran: list[list[str]] = field(default_factory=list)
    started: list[SandboxSpec] = field(default_factory=list)
    sessions: list[ScriptedSession] = field(default_factory=list)

    @property
    def open_sessions(self) -> int:
        return sum(not s.closed for s in self.sessions)

    def start(self, spec: SandboxSpec, fill: Callable[[], None] | None = None) -> ScriptedSession:
        if self.start_error is not None:
            raise self.start_error
        if fill is not None:
            fill()
        self.started.append(spec)
        session = ScriptedSession(self, spec, f"scripted-{len(self.sessions) + 1}")
        self.sessions.append(session)
        return session

    def prepare_env(
        self, ws: Workspace, repo: str, spec: SandboxSpec, *, allow_network: bool, requirements: list[str] | None
    ) -> None:
        return None  # nothing runs for real: no environment to build

    def reap(self, workspace: Path | None, include_live: bool = False) -> list[str]:
        """Close the open sessions a dead process of this host left (of ``workspace``, or all)."""
        reaped = []
        for session in self.sessions:
            labels = session.spec.labels
            mine = workspace is None or labels.get("converge.workspace") == str(workspace)
            if not session.closed and mine and (include_live or orphaned(labels)):
                session.close()
                reaped.append(session.id)
        return reaped

    def close(self) -> None:
        return None


@dataclass
class ScriptedSession:
    """One scripted sandbox: commands go to the backend's script."""

    backend: ScriptedBackend
    spec: SandboxSpec
    id: str
    closed: bool = False

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int, witness: bool = False) -> CommandResult:
        if self.closed:
            raise SandboxError("sandbox already closed")
        self.backend.ran.append(list(argv))
        started = time.monotonic()
        script = self.backend.script
        reference = self.spec.labels.get("converge.candidate", "").startswith("reference-")
        result = script.reference(list(argv)) if reference and isinstance(script, PytestScript) else script(list(argv))
        duration = result.duration or time.monotonic() - started
        out = OutputTail(result.stdout_tail.encode(), len(result.stdout_tail.encode()), output_limit)
        err = OutputTail(result.stderr_tail.encode(), len(result.stderr_tail.encode()), output_limit)
        update: dict[str, object] = {
            "duration": duration,
            "stdout_tail": out.text(),
            "stderr_tail": err.text(),
            "truncated": out.truncated or err.truncated,
        }
        if duration > timeout:  # the runner would have killed it at its timeout
            update |= {"exit_code": KILLED, "timed_out": True, "duration": timeout}
        return result.model_copy(update=update)

    def close(self) -> None:
        self.closed = True
