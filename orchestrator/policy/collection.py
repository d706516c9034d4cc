"""What decides which tests run, and how their outcomes are reported, is protected: a change to it is
HIGH risk and needs a person (``checks.collection``), with the exact line quoted.

Protected: ``conftest.py`` anywhere; the pytest sections of ``pyproject.toml`` (``[tool.pytest...]``),
``setup.cfg`` (``[tool:pytest]``) and ``tox.ini`` (``[pytest]``), and all of ``pytest.ini`` /
``pytest.toml``; plugin entry points (``pytest11``); in Python files ``pytest_plugins``,
``__test__``, module-level ``pytest.skip``/``importorskip``/``pytestmark``, ``collect_ignore`` and
pytest hooks outside ``conftest.py``; files that stand in for the harness (``sitecustomize.py``,
``*.pth``, a top-level ``pytest.py`` or ``_pytest/``); and the test command line (``pytest`` with
options that choose tests, ``PYTEST_ADDOPTS``, a changed test command in CI scripts and Makefiles).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath

from orchestrator.policy.change import ChangeInput, FileChange
from orchestrator.policy.model import Policy
from orchestrator.policy.verdict import Decision, Reason, Risk

PER_FILE = 3  # reasons per file: the first lines tell the story
_SECTION = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]")
_ENTRY_POINTS = r"""^(?:project\.entry-points|tool\.poetry\.plugins)\.["']?pytest11"""
_PYTEST_SECTION = {
    "pyproject.toml": re.compile(rf"^tool\.pytest(?:\.|$)|{_ENTRY_POINTS}"),
    "setup.cfg": re.compile(r"^tool:pytest$"),
    "tox.ini": re.compile(r"^pytest$"),
}
_WHOLE_FILE = ("pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml")
_CONFIG_LINE = re.compile(r"\bpytest11\b|^\s*(?:tool\.)?pytest\.")  # entry points; dotted TOML keys
_PYTHON = (
    (re.compile(r"^\s*pytest_plugins\s*[+:]?="), "pytest_plugins"),
    (re.compile(r"^\s*__test__\s*[:=]"), "__test__ decides whether pytest collects"),
    (re.compile(r"^(?:pytest\.(?:skip|importorskip)|\w+\s*=\s*pytest\.importorskip)\s*\("), "module-level skip"),
    (re.compile(r"\ballow_module_level\s*=\s*True"), "module-level skip"),
    (re.compile(r"^pytestmark\s*[+:]?="), "module-level marks"),
    (re.compile(r"\bcollect_ignore(?:_glob)?\b"), "collect_ignore"),
)
_HINT = re.compile(r"test|TEST|collect_ignore")  # every pattern below needs one of these
_PYTEST_ENV = re.compile(r"\bPYTEST_(?:ADDOPTS|PLUGINS|DISABLE_PLUGIN_AUTOLOAD)\b")
_HOOK = re.compile(r"^\s*(?:async\s+)?def\s+pytest_\w+\s*\(")
_OPTIONS = re.compile(
    r"\bpy\.?test\b.*(?:^|[\s\"'=,\[])(?:-[kmpcox]|--deselect|--ignore(?:-glob)?|--co|--collect-only|--override-ini"
    r"|--config-file|--rootdir|--confcutdir|--noconftest|--pyargs|--continue-on-collection-errors|--exitfirst"
    r"|--maxfail|--lf|--last-failed|--sw|--stepwise)\b"
)
_RUNS_PYTEST = re.compile(r"\bpy\.?test\b")
_COMMAND_FILE = re.compile(
    r"(?:^|/)(?:GNUmakefile|[Mm]akefile|[^/]*\.mk|tox\.ini|noxfile\.py|[Jj]ustfile|[^/]*\.sh|[^/]*\.ya?ml|run)$"
)
_DOCS = (".md", ".rst", ".txt", ".adoc")
_HARNESS_NAMES = ("sitecustomize.py", "usercustomize.py")
_HARNESS_TOP = ("pytest.py", "py.py", "_pytest", "pytest", "pluggy", "pluggy.py")


def collection(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Every change to what decides collection or reporting, quoted line by line (a few per file)."""
    decision = Decision(policy.checks.collection)
    for f in change.files:
        found = list(_findings(f, change))[:PER_FILE]
        for message, line in found:
            yield Reason(rule="collection", message=message, file=f.path, line=line, decision=decision, risk=Risk.HIGH)


def _findings(f: FileChange, change: ChangeInput) -> Iterator[tuple[str, int | None]]:
    name = PurePosixPath(f.path).name
    if name == "conftest.py" or any(PurePosixPath(p).name == "conftest.py" for p in f.paths):
        yield _conftest(f)
    shadow = _stands_in(f)
    if shadow:
        yield shadow, None
    if name in _WHOLE_FILE:
        yield from _quoted(f, "pytest's configuration changed")
    elif name in _PYTEST_SECTION and f.path in change.configs:
        yield from _config(f, change.configs[f.path], _PYTEST_SECTION[name])
    if name.endswith(".py") and name != "conftest.py":
        yield from _python(f)
    if not name.endswith(_DOCS):
        yield from _command_line(f)


def _quote(text: str) -> str:
    return text.strip()[:160]


def _conftest(f: FileChange) -> tuple[str, int | None]:
    """A conftest.py change, quoted by its most telling line (a hook, a skip, else the first changed)."""
    changed: list[tuple[str, int | None, str]] = [("+", n, t) for n, t in f.added]
    changed += [("-", n, t) for n, t in f.removed]
    telling = [c for c in changed if _HOOK.match(c[2]) or any(p.search(c[2]) for p, _w in _PYTHON)]
    pick = (telling or [c for c in changed if c[2].strip()] or [("", None, "")])[0]
    sign, number, text = pick
    what = f"conftest.py {f.status}: decides what pytest collects and how it reports"
    return (f"{what}: {sign}{_quote(text)}" if text.strip() else what), number if sign == "+" else None


def _stands_in(f: FileChange) -> str | None:
    """A file Python or pytest would load instead of (or before) the harness's own."""
    path = PurePosixPath(f.path)
    if path.name in _HARNESS_NAMES or path.suffix == ".pth":
        return f"{f.path} {f.status}: Python loads it at start-up, before any test"
    if path.parts and path.parts[0] in _HARNESS_TOP:
        return f"{f.path} {f.status}: stands in for the test harness ({path.parts[0]})"
    return None


def _sections(text: str | None) -> list[str]:
    """The section each line of an INI or TOML file is in (index: line number - 1)."""
    current, found = "", []
    for line in (text or "").splitlines():
        match = _SECTION.match(line)
        if match:
            current = match[1].strip().strip("\"'")
        found.append(current)
    return found


def _config(
    f: FileChange, texts: tuple[str | None, str | None], section: re.Pattern[str]
) -> Iterator[tuple[str, int | None]]:
    old, new = _sections(texts[0]), _sections(texts[1])

    def pytest_line(where: list[str], number: int, text: str) -> bool:
        inside = 0 < number <= len(where) and bool(section.search(where[number - 1]))
        return inside or (bool(_CONFIG_LINE.search(text)) and not text.lstrip().startswith("#"))

    for number, text in f.added:
        if text.strip() and pytest_line(new, number, text):
            yield f"pytest's configuration changed: +{_quote(text)}", number
    for number, text in f.removed:
        if text.strip() and pytest_line(old, number, text):
            yield f"pytest's configuration changed: -{_quote(text)}", None


def _quoted(f: FileChange, what: str) -> Iterator[tuple[str, int | None]]:
    lines = [("+", n, t) for n, t in f.added if t.strip()] + [("-", n, t) for n, t in f.removed if t.strip()]
    if not lines:
        yield f"{what}: {f.path} {f.status}", None
    for sign, number, text in lines:
        yield f"{what}: {sign}{_quote(text)}", number if sign == "+" else None


def _python(f: FileChange) -> Iterator[tuple[str, int | None]]:
    for sign, lines in (("+", f.added), ("-", f.removed)):
        for number, text in lines:
            if not _HINT.search(text):
                continue  # most lines: one cheap search instead of every pattern
            for pattern, what in _PYTHON:
                if pattern.search(text):
                    yield f"{what}: {sign}{_quote(text)}", number if sign == "+" else None
                    break
            else:
                if _HOOK.match(text):
                    yield f"a pytest hook outside conftest.py: {sign}{_quote(text)}", number if sign == "+" else None


def _command_line(f: FileChange) -> Iterator[tuple[str, int | None]]:
    command_file = bool(_COMMAND_FILE.search(f.path))
    for sign, lines in (("+", f.added), ("-", f.removed)):
        for number, text in lines:
            if not _HINT.search(text) or text.lstrip().startswith("#"):
                continue
            if _OPTIONS.search(text) or _PYTEST_ENV.search(text) or (command_file and _RUNS_PYTEST.search(text)):
                yield f"the test command line changed: {sign}{_quote(text)}", number if sign == "+" else None
