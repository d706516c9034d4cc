"""Tampering with the harness from code, and edits to existing tests.

``harness``: non-test code that patches ``builtins``, ``pytest`` (or ``_pytest``), ``unittest``,
``time`` or ``pluggy``, swaps modules in ``sys.modules``, replaces ``sys.exit``/``os._exit``, or
defines an operator that compares equal to anything, is HIGH risk and needs a person
(``checks.harness``). ``test_changes``: an edit to an existing test is allowed, and shown as
"test changed" with its diff hunk (a reason at approve level, with the hunk as its ``excerpt``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from orchestrator.policy.change import ChangeInput, FileChange
from orchestrator.policy.model import Policy
from orchestrator.policy.paths import CORE_TEST_PATHS, compile_globs
from orchestrator.policy.verdict import Decision, Reason, Risk

HARNESS_MODULES = r"(?:builtins|__builtins__|pytest|_pytest(?:\.\w+)*|unittest(?:\.\w+)*|time|pluggy(?:\.\w+)*)"
_PATCHES = (
    re.compile(rf"^\s*{HARNESS_MODULES}(?:\.\w+)+\s*(?:\[[^\]]*\]\s*)?=(?!=)"),
    re.compile(r"\b__builtins__\s*\[[^\]]+\]\s*=(?!=)"),
    re.compile(rf"\b(?:setattr|delattr)\s*\(\s*{HARNESS_MODULES}\b"),
    re.compile(rf"\b(?:mock\.)?patch(?:\.object)?\s*\(\s*(?:['\"]{HARNESS_MODULES}\.|{HARNESS_MODULES}\s*,)"),
    re.compile(rf"\bsys\.modules\s*\[\s*['\"]{HARNESS_MODULES}['\"]\s*\]\s*=(?!=)"),
    re.compile(r"^\s*(?:sys\.(?:exit|excepthook|settrace|setprofile)|os\._exit)\s*=(?!=)"),
    re.compile(r"^\s*(?:TestCase|AssertionError)(?:\.\w+)*\s*=(?!=)"),
    re.compile(r"^\s*(?:import\s+_pytest|from\s+_pytest(?:\.\w+)*\s+import)\b"),
)
_HINT = re.compile(r"builtins|test|TestCase|pluggy|time|setattr|delattr|patch|sys\.|_exit|AssertionError|__eq__|__ne__")
_NOT_CODE = ('"""', "'''", "#")
_ALWAYS = re.compile(r"^\s*def\s+(__eq__|__ne__)\s*\(")
_RETURNS = {
    "__eq__": re.compile(r"^\s*return\s+True\s*(?:#.*)?$"),
    "__ne__": re.compile(r"^\s*return\s+False\s*(?:#.*)?$"),
}
_DEF_TEST = re.compile(r"^[ +-]\s*(?:async\s+)?def\s+(test\w*)\s*\(")
MAX_HUNK_LINES = 40


def _is_test(policy: Policy) -> re.Pattern[str]:
    return compile_globs(tuple(dict.fromkeys([*CORE_TEST_PATHS, *policy.checks.test_paths])))


def harness(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Non-test code that patches the harness, quoted."""
    is_test = _is_test(policy)
    decision = Decision(policy.checks.harness)
    for f in change.files:
        if not f.path.endswith(".py") or is_test.match(f.path) or f.binary:
            continue
        for number, message in _tampering(f):
            yield Reason(rule="harness", message=message, file=f.path, line=number, decision=decision, risk=Risk.HIGH)


def _tampering(f: FileChange) -> Iterator[tuple[int, str]]:
    added = [(n, t) for n, t in f.added if t.strip()]
    for i, (number, text) in enumerate(added):
        if not _HINT.search(text):
            continue  # most lines: one cheap search instead of every pattern
        if any(p.search(text) for p in _PATCHES):
            yield number, f"patches the test harness from non-test code: {text.strip()[:160]}"
        always = _ALWAYS.match(text)
        if always:
            body = [t for _n, t in added[i + 1 : i + 4] if not t.strip().startswith(_NOT_CODE)]
            if body and _RETURNS[always[1]].match(body[0]):
                yield number, f"{always[1]} that answers the same for anything: {text.strip()} {body[0].strip()}"


def test_changes(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Each hunk that edits lines of an existing test file: allowed, shown with the hunk."""
    is_test = _is_test(policy)
    for f, hunks in zip(change.files, file_hunks(change.diff), strict=False):
        if f.status not in ("modified", "renamed") or not is_test.match(f.path):
            continue
        for hunk in hunks:
            if not any(line.startswith("-") for line in hunk[1:]):
                continue  # only additions: a new test, not a changed one
            where = _test_name(hunk)
            shown = hunk[:MAX_HUNK_LINES] + (
                [f"... {len(hunk) - MAX_HUNK_LINES} more lines"] if len(hunk) > MAX_HUNK_LINES else []
            )
            yield Reason(
                rule="test-changed",
                message=f"test changed: {f.path}{f'::{where}' if where else ''}",
                file=f.path,
                excerpt="\n".join(shown),
            )


def _test_name(hunk: list[str]) -> str | None:
    """The test a hunk edits: a ``def test...`` in it, else the one its header names."""
    for line in hunk[1:]:
        match = _DEF_TEST.match(line)
        if match:
            return match[1]
    header = re.search(r"@@[^@]*@@\s*(?:async\s+)?def\s+(\w+)", hunk[0])
    return header[1] if header else None


def file_hunks(diff: str) -> list[list[list[str]]]:
    """The hunks (header line first) of each file section of a ``git diff -p``, in order."""
    sections: list[list[list[str]]] = []
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            sections.append([])
        elif not sections:
            continue
        elif line.startswith("@@"):
            sections[-1].append([line])
        elif sections[-1] and line[:1] in (" ", "+", "-", "\\"):
            sections[-1][-1].append(line)
    return sections
