"""A test run's report from what the witness streamed, cross-checked with the JUnit file and the exit code.

The witness (``sandbox.witness``) was registered before any code of the repository ran and wrote
to a pipe the runner opened; the JUnit file and the exit code are what the test process itself
leaves behind. Where they disagree in a way only code inside that process explains — a JUnit file
rewritten, an early ``os._exit(0)``, an outcome changed on its way to the reporters, pytest's
machinery replaced — the report is ``tampered``, and the evidence says what and which tests.
The test ids of a witnessed report are the witness's (pytest's node ids), never the JUnit file's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from xml.etree import ElementTree

from orchestrator.errors import SandboxError
from orchestrator.store.reports import CommandResult, TestReport

Outcome = Literal["passed", "failed", "errored", "skipped"]
Selection = Literal["all", "selected"]
_RANK: dict[Outcome, int] = {"skipped": 0, "passed": 1, "failed": 2, "errored": 3}
_CALL: dict[str, Outcome] = {"passed": "passed", "failed": "failed", "skipped": "skipped"}
_AROUND: dict[str, Outcome] = {"failed": "errored", "skipped": "skipped"}  # setup and teardown
SHOWN = 5  # test ids named per piece of evidence
TRUNCATED = "[converge: output truncated"


@dataclass(frozen=True)
class Phase:
    """One phase of one test as pytest made its report (``made``) or as reporters got it (``logged``)."""

    test: str
    when: str
    outcome: str
    xfail: bool = False
    raised: str | None = None


@dataclass
class Events:
    """The witness stream, read."""

    started: bool = False
    collected: list[str] = field(default_factory=list)
    collection_done: bool = False
    deselected: list[str] = field(default_factory=list)
    collect_errors: list[str] = field(default_factory=list)
    collect_skips: list[str] = field(default_factory=list)
    made: list[Phase] = field(default_factory=list)
    logged: list[Phase] = field(default_factory=list)
    junit: dict[str, tuple[str, str]] = field(default_factory=dict)
    patched: list[str] = field(default_factory=list)
    finish: int | None = None
    exit: int | None = None
    unreadable: int = 0
    truncated: bool = False

    def outcomes(self) -> dict[str, Outcome]:
        """Each test's outcome as JUnit counts it: a failed setup or teardown is an error, a skip a skip."""
        found: dict[str, Outcome] = {test: "skipped" for test in self.collect_skips}
        found |= {test: "errored" for test in self.collect_errors}
        for phase in self.made:
            outcome = (
                _CALL.get(phase.outcome, "failed") if phase.when == "call" else _AROUND.get(phase.outcome, "passed")
            )
            before = found.get(phase.test)
            found[phase.test] = outcome if before is None or _RANK[outcome] > _RANK[before] else before
        return found


def read_events(text: str) -> Events:
    """Parse the witness's JSON lines (an unreadable line is counted, never fatal)."""
    ev = Events()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith(TRUNCATED):
            ev.truncated = True
            continue
        try:
            event = json.loads(line)
            _take(ev, event)
        except (ValueError, KeyError, TypeError, AttributeError):
            ev.unreadable += 1
    return ev


def _take(ev: Events, event: dict[str, object]) -> None:
    kind = event["e"]
    if kind == "start":
        ev.started = True
    elif kind in ("collected", "deselected"):
        ids = [str(i) for i in event["ids"]]  # type: ignore[attr-defined]
        (ev.collected if kind == "collected" else ev.deselected).extend(ids)
    elif kind == "collection_done":
        ev.collection_done = True
    elif kind in ("collect_error", "collect_skip"):
        (ev.collect_errors if kind == "collect_error" else ev.collect_skips).append(str(event["id"]))
        ev.junit[str(event["id"])] = _key(event["junit"])
    elif kind in ("made", "logged"):
        raised = event.get("raised")
        phase = Phase(
            str(event["id"]),
            str(event["when"]),
            str(event["outcome"]),
            bool(event.get("xfail")),
            None if raised is None else str(raised),
        )
        (ev.made if kind == "made" else ev.logged).append(phase)
        if "junit" in event:
            ev.junit[phase.test] = _key(event["junit"])
    elif kind == "patched":
        ev.patched.extend(str(n) for n in event["names"])  # type: ignore[attr-defined]
    elif kind == "finish":
        ev.finish = int(event["status"])  # type: ignore[call-overload]
    elif kind == "exit":
        ev.exit = int(event["status"])  # type: ignore[call-overload]
    else:
        raise ValueError(kind)


def _key(value: object) -> tuple[str, str]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"not a JUnit name: {value!r}")
    return str(value[0]), str(value[1])


def junit_outcomes(text: str) -> dict[tuple[str, str], Outcome]:
    """JUnit XML -> ``(classname, name)`` -> outcome (the worst, if a case is listed twice)."""
    root = ElementTree.fromstring(text)
    found: dict[tuple[str, str], Outcome] = {}
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        outcome: Outcome = (
            "errored"
            if "error" in kinds
            else "failed"
            if "failure" in kinds
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
        key = (case.get("classname", ""), case.get("name", ""))
        before = found.get(key)
        found[key] = outcome if before is None or _RANK[outcome] > _RANK[before] else before
    return found


def _named(what: str, ids: Iterable[str]) -> str:
    ids = list(ids)
    more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return f"{what}: {', '.join(ids[:SHOWN])}{more}"


def _ended_by_force(command: CommandResult) -> bool:
    return command.timed_out or command.oom_killed or command.exit_code >= 128


def evidence(ev: Events, outcomes: dict[str, Outcome], junit: str | None, command: CommandResult) -> list[str]:
    """What only code inside the test process explains: each item names the tests concerned."""
    found: list[str] = []
    if ev.truncated:
        found.append("the witness stream went past its size cap (something wrote to it besides the witness)")
    if ev.unreadable:
        found.append(f"{ev.unreadable} line(s) on the witness stream that the witness did not write")
    if ev.patched:
        found.append(_named("pytest's machinery was replaced while tests ran", ev.patched))
    found += _phases(ev)
    found += _ending(ev, outcomes, command)
    found += _against_junit(ev, outcomes, junit, command)
    return found


def _phases(ev: Events) -> list[str]:
    found = []
    raised = [f"{p.test} ({p.outcome}, raised {p.raised})" for p in ev.made if _swallowed(p)]
    if raised:
        found.append(_named("reported as passed or skipped although the test raised", raised))
    made = {(p.test, p.when): p.outcome for p in ev.made}
    logged = {(p.test, p.when): p.outcome for p in ev.logged}
    changed = [
        f"{t} ({w}: made {made[t, w]}, reported {o})" for (t, w), o in logged.items() if made.get((t, w), o) != o
    ]
    if changed:
        found.append(_named("outcome changed between pytest's report hook and the reporters", changed))
    unmade = [t for (t, w) in logged if (t, w) not in made]
    if unmade:
        found.append(_named("reported without passing through pytest's report hook", dict.fromkeys(unmade)))
    if ev.finish is not None:
        unlogged = [t for (t, w) in made if (t, w) not in logged]
        if unlogged:
            found.append(_named("outcome never reached the reporters", dict.fromkeys(unlogged)))
    return found


def _swallowed(phase: Phase) -> bool:
    """A test that raised (not a skip) yet passed, or was skipped without an xfail mark to say why."""
    if phase.when != "call" or phase.raised is None:
        return False
    return phase.outcome == "passed" or (phase.outcome == "skipped" and not phase.xfail)


def _ending(ev: Events, outcomes: dict[str, Outcome], command: CommandResult) -> list[str]:
    code = command.exit_code
    if not ev.started:
        return [f"the test process exited {code} without starting the witness"] if code == 0 else []
    found = []
    if ev.exit is None and not _ended_by_force(command):
        seen = len({p.test for p in ev.made})
        found.append(
            f"the test process exited {code} before pytest returned "
            f"(witnessed {seen} of {len(ev.collected)} collected tests)"
        )
    elif ev.exit is not None and ev.exit != code:
        found.append(f"pytest returned {ev.exit} but the test process exited {code}")
    bad = [t for t, o in outcomes.items() if o in ("failed", "errored")]
    if code == 0 and bad:
        found.append(_named("the test process exited 0 although tests failed", bad))
    if ev.finish == 0:
        never = [t for t in ev.collected if t not in outcomes]
        if never:
            found.append(_named("collected but never run, in a session that passed", never))
    return found


def _against_junit(ev: Events, outcomes: dict[str, Outcome], junit: str | None, command: CommandResult) -> list[str]:
    if junit is None:
        finished = ev.exit is not None and ev.exit in (0, 1)
        return ["pytest finished but no JUnit report was written"] if finished else []
    try:
        listed = junit_outcomes(junit)
    except ElementTree.ParseError as exc:
        return [f"the JUnit report is not valid XML ({exc})"]
    by_key = {ev.junit.get(t, ("", t)): (t, o) for t, o in outcomes.items()}
    found = []
    differ = [
        f"{by_key[k][0]} (JUnit {o}, witnessed {by_key[k][1]})"
        for k, o in listed.items()
        if k in by_key and by_key[k][1] != o
    ]
    if differ:
        found.append(_named("the JUnit report disagrees with what ran", differ))
    extra = ["::".join(part for part in k if part) for k in listed if k not in by_key]
    if extra:
        found.append(_named("the JUnit report lists tests that never ran", extra))
    missing = [t for k, (t, _o) in by_key.items() if k not in listed]
    if missing and not _ended_by_force(command):
        found.append(_named("the JUnit report leaves out tests that ran", missing))
    return found


def _differs(by_key: dict[tuple[str, str], tuple[str, Outcome]], key: tuple[str, str], outcome: Outcome) -> bool:
    return key in by_key and by_key[key][1] != outcome


def test_report(command: CommandResult, junit: str | None, selection: Selection) -> TestReport:
    """The report of one pytest run: outcomes as witnessed, and ``tampered`` with the evidence, if any."""
    if command.witness is None:
        return _unwitnessed(command, junit, selection)
    ev = read_events(command.witness)
    if not ev.started and junit is None:
        return TestReport(ran=False, command=command, selection=selection, tampered=evidence(ev, {}, None, command))
    outcomes = ev.outcomes()
    order = {t: i for i, t in enumerate([*ev.collect_errors, *ev.collect_skips, *ev.collected])}
    by: dict[Outcome, list[str]] = {"passed": [], "failed": [], "errored": [], "skipped": []}
    for test in sorted(outcomes, key=lambda t: order.get(t, len(order))):
        by[outcomes[test]].append(test)
    return TestReport(
        ran=True,
        command=command,
        selection=selection,
        passed=by["passed"],
        failed=by["failed"],
        errored=by["errored"],
        skipped=by["skipped"],
        collected=ev.collected if ev.collection_done else None,
        deselected=ev.deselected,
        witnessed=ev.started,
        tampered=evidence(ev, outcomes, junit, command),
    )


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


def _unwitnessed(command: CommandResult, junit: str | None, selection: Selection) -> TestReport:
    """A backend that gave no witness stream: the JUnit file's word, marked as not to be trusted."""
    why = ["no witness stream came back from the sandbox (its backend cannot open one)"]
    if junit is None:
        return TestReport(ran=False, command=command, selection=selection, tampered=why)
    try:
        listed = parse_junit(junit)
    except SandboxError as exc:
        return TestReport(ran=False, command=command, selection=selection, tampered=[*why, str(exc)])
    return TestReport(ran=True, command=command, selection=selection, tampered=why, **listed)
