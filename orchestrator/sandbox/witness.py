"""Converge's witness: a pytest plugin registered before any code of the repository, streaming what happens.

The sandbox runs ``python -I -c <this file> <pytest arguments>``: ``-I`` keeps the worktree and the
``PYTHON*`` variables off ``sys.path`` while pytest, pluggy and this plugin are imported, so no file
of the repository can stand in for them; the tree goes back on the path (as ``python -m pytest``
puts it) only then. The sandbox's runner opened a pipe before this process started and names its
write end in ``CONVERGE_WITNESS_FD``; each event is one JSON line on it, and the host cross-checks
the events with the JUnit file and the exit code (``sandbox.crosscheck``). Standard library and
pytest only: the file is shipped into the sandbox as source.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
import unittest
from collections.abc import Generator
from pathlib import Path
from typing import Any

import _pytest.junitxml
import _pytest.main
import _pytest.outcomes
import _pytest.python
import _pytest.reports
import _pytest.runner
import _pytest.skipping
import pluggy
import pytest

FD_VARIABLE = "CONVERGE_WITNESS_FD"
CHUNK = 500  # ids per event: lines stay short for the runner and the host
_SKIPS = (_pytest.outcomes.Skipped, _pytest.outcomes.XFailed, unittest.SkipTest)  # pytest reports these as skips
_JUNIT_NAMES = _pytest.junitxml.mangle_test_address  # taken now: how the JUnit file will name each test
_MISSING = object()

# What pytest's outcomes rest on: replaced while tests run, a report can say anything.
WATCHED = (
    "_pytest.runner:call_and_report",
    "_pytest.runner:runtestprotocol",
    "_pytest.runner:pytest_runtest_call",
    "_pytest.runner:CallInfo.from_call",
    "_pytest.runner:pytest_runtest_makereport",
    "_pytest.reports:TestReport.from_item_and_call",
    "_pytest.reports:TestReport.__init__",
    "_pytest.reports:BaseReport.passed",
    "_pytest.reports:BaseReport.failed",
    "_pytest.reports:BaseReport.skipped",
    "_pytest.reports:CollectReport.__init__",
    "_pytest.python:pytest_pyfunc_call",
    "_pytest.python:Function.runtest",
    "_pytest.skipping:pytest_runtest_makereport",
    "_pytest.skipping:evaluate_skip_marks",
    "_pytest.skipping:evaluate_xfail_marks",
    "_pytest.junitxml:LogXML.pytest_runtest_logreport",
    "_pytest.junitxml:LogXML.pytest_sessionfinish",
    "_pytest.junitxml:_NodeReporter.append_pass",
    "_pytest.junitxml:_NodeReporter.append_failure",
    "_pytest.junitxml:_NodeReporter.to_xml",
    "_pytest.junitxml:mangle_test_address",
    "_pytest.main:pytest_runtestloop",
    "_pytest.main:Session.perform_collect",
    "_pytest.outcomes:fail",
    "_pytest.outcomes:skip",
    "pytest:approx",
    "pytest:raises",
    "_pytest.approx:ApproxScalar.__eq__",
    "_pytest.approx:ApproxMapping.__eq__",
    "_pytest.approx:ApproxSequenceLike.__eq__",
    "_pytest.raises:RaisesExc.__exit__",
    "_pytest.raises:RaisesExc.matches",
    "pluggy._callers:_multicall",
    "pluggy._hooks:HookCaller.__call__",
    "builtins:AssertionError",
    "builtins:BaseException",
    "builtins:Exception",
    "builtins:isinstance",
    "builtins:issubclass",
    "unittest.case:TestCase.run",
    "unittest.case:TestCase.fail",
    "unittest.case:TestCase.assertEqual",
    "unittest.case:TestCase._baseAssertEqual",
    "unittest.case:TestCase.assertTrue",
    "unittest.case:TestCase.assertFalse",
    "unittest.case:TestCase.assertIn",
    "unittest.case:TestCase.assertRaises",
    "unittest.case:TestCase.failureException",
)
# imported here, before the tree is on the path, so that WATCHED names pytest's own objects
_IMPORTED = (builtins, unittest, pluggy, _pytest.junitxml, _pytest.main, _pytest.python)
_IMPORTED_TOO = (_pytest.reports, _pytest.runner, _pytest.skipping)


def junit_key(nodeid: str) -> list[str]:
    """The JUnit file's ``[classname, name]`` of a node id, by pytest's own rule."""
    names = _JUNIT_NAMES(nodeid)
    return [".".join(names[:-1]), names[-1]]


def _static(obj: object, name: str) -> object:
    """``obj.name`` as stored (no descriptor run): a class's own or inherited entry, a module's global."""
    if isinstance(obj, type):
        for klass in obj.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
        return _MISSING
    return getattr(obj, "__dict__", {}).get(name, _MISSING)


def walk(spec: str) -> tuple[object, ...] | None:
    """Every object on the way to ``module:attr.attr`` (None when something on it is missing)."""
    module_name, _, path = spec.partition(":")
    obj: object = sys.modules.get(module_name, _MISSING)
    found = []
    for name in path.split("."):
        if obj is _MISSING:
            return None
        obj = _static(obj, name)
        found.append(obj)
    return None if obj is _MISSING else tuple(found)


def _links(spec: str, found: tuple[object, ...]) -> list[tuple[str, Any, str, object]]:
    """``spec``'s chain as (spec, holder, name, object found there), the module first."""
    module_name, _, path = spec.partition(":")
    objects = (sys.modules[module_name], *found)
    holders = (sys.modules, *objects[:-1])
    return [(spec, h, n, o) for h, n, o in zip(holders, (module_name, *path.split(".")), objects, strict=True)]


class Stream:
    """The write end of the runner's pipe: one JSON line per event; a broken pipe ends the sending."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.open = True

    def send(self, event: dict[str, Any]) -> None:
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        while data and self.open:
            try:
                data = data[os.write(self.fd, data) :]
            except InterruptedError:
                continue
            except OSError:
                self.open = False


class Witness:
    """The plugin: collection, each phase's outcome as pytest made it and as reporters got it, the end."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.snapshot = {spec: found for spec in WATCHED if (found := walk(spec)) is not None}
        # each link as (holder, name, object): one lookup per link and test (the module's: in sys.modules)
        self.links = [link for spec, found in self.snapshot.items() for link in _links(spec, found)]
        self.patched: set[str] = set()
        self.raised: dict[str, str] = {}

    def check(self) -> None:
        """Name what was replaced since start-up (once each)."""
        new = []
        for spec, holder, name, obj in self.links:
            found = holder.get(name, _MISSING) if holder is sys.modules else _static(holder, name)
            if found is not obj and spec not in self.patched:
                self.patched.add(spec)
                new.append(spec)
        if new:
            self.stream.send({"e": "patched", "names": new})

    def _ids(self, kind: str, ids: list[str]) -> None:
        for start in range(0, len(ids), CHUNK):
            self.stream.send({"e": kind, "ids": ids[start : start + CHUNK]})

    @pytest.hookimpl(tryfirst=True)
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed or report.skipped:  # JUnit lists both (an error; a skipped module)
            kind = "collect_error" if report.failed else "collect_skip"
            self.stream.send({"e": kind, "id": report.nodeid, "junit": junit_key(report.nodeid)})

    @pytest.hookimpl(tryfirst=True)
    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self._ids("deselected", [item.nodeid for item in items])

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._ids("collected", [item.nodeid for item in session.items])
        self.stream.send({"e": "collection_done", "count": len(session.items)})
        self.check()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield)
        except BaseException as exc:
            if not isinstance(exc, _SKIPS):
                self.raised[item.nodeid] = type(exc).__qualname__
            raise

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        raised = self.raised.pop(item.nodeid, None) if call.when == "call" else None
        if raised is None and call.excinfo is not None and not isinstance(call.excinfo.value, _SKIPS):
            raised = type(call.excinfo.value).__qualname__
        if call.when == "call" or report.outcome != "passed":
            event = {"e": "made", "id": item.nodeid, "when": call.when, "outcome": report.outcome}
            extra = {"xfail": hasattr(report, "wasxfail"), "raised": raised, "junit": junit_key(item.nodeid)}
            self.stream.send({**event, **extra})
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            event = {"e": "logged", "id": report.nodeid, "when": report.when, "outcome": report.outcome}
            self.stream.send({**event, "xfail": hasattr(report, "wasxfail")})
        if report.when == "teardown":
            self.check()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.check()
        self.stream.send({"e": "finish", "status": int(exitstatus)})


def _tree_on_path() -> None:
    """What ``python -m pytest`` gives the tests and ``-I`` took away: the tree and PYTHONPATH on the path."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:0] = [str(Path.cwd()), *extra]
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))


def main() -> int:
    """Run pytest with the witness registered first; the exit status is pytest's."""
    fd_text = os.environ.pop(FD_VARIABLE, "")
    if not fd_text.isdigit():
        print(f"converge witness: ${FD_VARIABLE} is not set; run through the sandbox", file=sys.stderr)
        return 3
    fd = int(fd_text)
    os.set_inheritable(fd, False)  # the tests' child processes do not get it
    stream = Stream(fd)
    witness = Witness(stream)
    stream.send({"e": "start", "pytest": pytest.__version__, "watched": len(witness.snapshot)})
    _tree_on_path()
    status = int(pytest.main(sys.argv[1:], plugins=[witness]))
    witness.check()
    stream.send({"e": "exit", "status": status})
    return status


if __name__ == "__main__":
    sys.exit(main())
