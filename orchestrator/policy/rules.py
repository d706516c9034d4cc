"""The rules of the policy engine: each reads a ChangeInput and a Policy and yields Reasons.

Rules never read what a change *says* about itself — only what it does, as git reports it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator

from orchestrator.policy.change import SUBMODULE, SYMLINK, ChangeInput, symlink_escapes
from orchestrator.policy.collection import collection
from orchestrator.policy.dependencies import dependencies
from orchestrator.policy.harness import harness, test_changes
from orchestrator.policy.integrity import baseline, tampered
from orchestrator.policy.model import Policy
from orchestrator.policy.paths import CORE_PROTECTED, CORE_SELF_PROTECTED, CORE_TEST_PATHS, compile_globs
from orchestrator.policy.scan import SecretScanner, confusable_identifiers, hidden_characters
from orchestrator.policy.verdict import Decision, Reason, Risk

Rule = Callable[[ChangeInput, Policy], Iterable[Reason]]

# --- protected paths ----------------------------------------------------------------------


def protected_paths(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """A change to a protected path always needs a human: HIGH risk, never auto-approved."""
    rule = policy.protected
    globs = [*CORE_PROTECTED, *rule.paths]
    if change.is_self:
        globs += [*CORE_SELF_PROTECTED, *rule.self_paths]
    matcher = compile_globs(tuple(dict.fromkeys(globs)))
    for f in change.files:
        for path in f.paths:
            if matcher.match(path):
                yield Reason(
                    rule="protected-path",
                    message=f"{path} is protected ({f.status}); a human must sign off",
                    file=path,
                    decision=Decision(rule.action),
                    risk=Risk.HIGH,
                )
                break


# --- blast radius -------------------------------------------------------------------------


def blast_radius(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Changes bigger than the thresholds need review."""
    rule = policy.blast_radius
    deleted = sum(1 for f in change.files if f.status == "deleted")
    measures = (
        ("files touched", len(change.files), rule.max_files),
        ("lines added", change.lines_added, rule.max_added),
        ("lines removed", change.lines_removed, rule.max_removed),
        ("files deleted", deleted, rule.max_deleted_files),
    )
    for what, value, limit in measures:
        if value > limit:
            yield Reason(
                rule="blast-radius",
                message=f"{value} {what}, over the limit of {limit}",
                decision=Decision(rule.action),
                risk=Risk.MEDIUM if value <= 2 * limit else Risk.HIGH,
            )


# --- required checks ----------------------------------------------------------------------

_SKIP = re.compile(
    r"pytest\.mark\.(?:skip|skipif|xfail)\b|pytest\.(?:skip|xfail|importorskip)\s*\("
    r"|\bunittest\.(?:skip|skipIf|skipUnless|expectedFailure)\b|\.skipTest\s*\(|@(?:skip|skipIf|skipUnless|xfail)\b"
    r"|\bcollect_ignore|--deselect\b|\bxfail_strict\s*=\s*false"
)
_ASSERT = re.compile(
    r"^\s*(?:assert\b|self\.assert\w*\s*\(|(?:with\s+)?pytest\.(?:raises|warns)\b|\w+\.assert_\w+\s*\(|expect\s*\()"
)
_TRIVIAL = re.compile(
    r"^\s*assert\s+(?:True|1|not\s+(?:False|None|0)|\S+\s+or\s+True|\(\s*\)|\"[^\"]*\"|'[^']*')\s*(?:#.*)?$"
)


def _test_report(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    rule = policy.checks
    tests = change.tests
    if tests is None:
        yield Reason(rule="tests", message="tests not evaluated: no test report was given")
        return
    if not rule.require_tests:
        return
    if not tests.ran:
        yield Reason(rule="tests", message="tests did not run", decision=Decision(rule.on_not_run), risk=Risk.MEDIUM)
    elif tests.no_tests:
        message = "the repo has no tests: nothing checked the change"
        yield Reason(rule="tests", message=message, decision=Decision(rule.on_not_run), risk=Risk.MEDIUM)
    elif tests.failed or tests.errored or (tests.command is not None and not tests.command.ok):
        bad = [*tests.failed, *tests.errored][:5]
        detail = f": {', '.join(bad)}" if bad else f" (exit {tests.command.exit_code if tests.command else '?'})"
        yield Reason(
            rule="tests",
            message=f"tests failed ({tests.summary}){detail}",
            decision=Decision(rule.on_failed),
            risk=Risk.HIGH,
        )
    elif not tests.passed:
        yield Reason(rule="tests", message="no test passed", decision=Decision(rule.on_not_run), risk=Risk.MEDIUM)


def required_checks(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Tests ran and passed, and the change does not delete, skip or weaken them."""
    yield from _test_report(change, policy)
    rule = policy.checks
    is_test = compile_globs(tuple(dict.fromkeys([*CORE_TEST_PATHS, *rule.test_paths])))
    weak = Decision(rule.weakening)

    def reason(message: str, file: str, line: int | None = None) -> Reason:
        return Reason(rule="test-weakening", message=message, file=file, line=line, decision=weak, risk=Risk.MEDIUM)

    for f in change.files:
        old = f.old_path or f.path
        if f.status == "deleted" and is_test.match(old):
            yield reason(f"test file {old} deleted", old)
            continue
        if f.status == "renamed" and is_test.match(old) and not is_test.match(f.path):
            yield reason(f"test file {old} moved out of the test paths to {f.path}", f.path)
        config = f.path.endswith(("pyproject.toml", "setup.cfg", "pytest.ini", "tox.ini"))
        if not (is_test.match(f.path) or config):
            continue
        added_skips = [(n, t) for n, t in f.added if _SKIP.search(t)]
        removed_skips = sum(1 for _, t in f.removed if _SKIP.search(t))
        if len(added_skips) > removed_skips:
            n, text = added_skips[removed_skips]
            yield reason(f"skips or deselects tests: {text.strip()[:80]}", f.path, n)
        if config:
            continue
        added_asserts = [(n, t) for n, t in f.added if _ASSERT.match(t)]
        trivial = [(n, t) for n, t in added_asserts if _TRIVIAL.match(t)]
        removed_asserts = [(n, t) for n, t in f.removed if _ASSERT.match(t)]
        if trivial:
            yield reason(f"trivial assertion added: {trivial[0][1].strip()[:80]}", f.path, trivial[0][0])
        if len(removed_asserts) > len(added_asserts) - len(trivial):
            n, text = removed_asserts[0]
            yield reason(
                f"{len(removed_asserts)} assertion(s) removed, {len(added_asserts) - len(trivial)} added "
                f"(first removed, old line {n}: {text.strip()[:60]})",
                f.path,
            )


# --- secrets and Unicode ------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _scanner(patterns: tuple[tuple[str, str], ...], use_detect_secrets: bool) -> SecretScanner:
    return SecretScanner(dict(patterns), use_detect_secrets)


def secrets(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Credentials on added lines are rejected."""
    rule = policy.secrets
    scanner = _scanner(tuple(sorted(rule.patterns.items())), rule.detect_secrets)
    for hit in scanner.scan((f.path, f.added) for f in change.files if not f.binary):
        yield Reason(
            rule="secret",
            message=f"possible secret added ({hit.kind})",
            file=hit.file,
            line=hit.line,
            decision=Decision(rule.action),
            risk=Risk.HIGH,
        )


def unicode_tricks(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Hidden/bidirectional characters and confusable identifiers on added lines."""
    rule = policy.unicode
    code_suffixes = tuple(rule.code_extensions) or (".py",)
    for f in change.files:
        code = f.path.endswith(code_suffixes)
        hidden_in_path = hidden_characters(f.path) if not f.path.isascii() else []
        if hidden_in_path:  # a name that reads as another one (``txt.py`` shown for ``\u202eyp.txt``)
            yield Reason(
                rule="hidden-unicode",
                message="hidden or bidirectional character(s) in the file name: "
                + ", ".join(dict.fromkeys(hidden_in_path)),
                file=f.path,
                decision=Decision(rule.hidden),
                risk=Risk.HIGH,
            )
        for number, text in f.added:
            if text.isascii():
                continue
            hidden = hidden_characters(text)
            if hidden and not (number == 1 and hidden == ["ZERO WIDTH NO-BREAK SPACE"] and text.startswith("\ufeff")):
                yield Reason(
                    rule="hidden-unicode",
                    message=f"hidden or bidirectional character(s): {', '.join(dict.fromkeys(hidden))}",
                    file=f.path,
                    line=number,
                    decision=Decision(rule.hidden),
                    risk=Risk.HIGH,
                )
            for problem in confusable_identifiers(text, code)[:1]:
                yield Reason(
                    rule="confusable-identifier",
                    message=problem,
                    file=f.path,
                    line=number,
                    decision=Decision(rule.confusables),
                    risk=Risk.HIGH,
                )


# --- file kinds ---------------------------------------------------------------------------


def file_kinds(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """Binary files, exec-bit changes, submodules and symlinks (a link leaving the repo is rejected)."""
    rule = policy.files
    for f in change.files:
        if f.status == "deleted":
            continue
        if f.new_mode == SYMLINK:
            target = f.symlink_target or ""
            if symlink_escapes(f.path, target):
                yield Reason(
                    rule="symlink",
                    message=f"symlink to {target!r} leaves the repository",
                    file=f.path,
                    decision=Decision(rule.symlink_outside),
                    risk=Risk.HIGH,
                )
            else:
                yield Reason(
                    rule="symlink",
                    message=f"symlink to {target!r}",
                    file=f.path,
                    decision=Decision(rule.symlink_inside),
                    risk=Risk.MEDIUM,
                )
            continue
        if f.new_mode == SUBMODULE:
            yield Reason(
                rule="submodule",
                message="submodule added or moved",
                file=f.path,
                decision=Decision(rule.submodule),
                risk=Risk.HIGH,
            )
        if f.binary:
            yield Reason(
                rule="binary",
                message="binary file (its content cannot be reviewed as text)",
                file=f.path,
                decision=Decision(rule.binary),
                risk=Risk.MEDIUM,
            )
        if f.exec_bit_set:
            yield Reason(
                rule="exec-bit",
                message=f"made executable ({f.old_mode} -> {f.new_mode})",
                file=f.path,
                decision=Decision(rule.exec_bit),
                risk=Risk.MEDIUM,
            )


RULES: tuple[Rule, ...] = (
    protected_paths,
    blast_radius,
    required_checks,
    tampered,
    baseline,
    collection,
    harness,
    test_changes,
    secrets,
    unicode_tricks,
    dependencies,
    file_kinds,
)

__all__ = ["RULES", "Rule", "compile_globs"]
