"""Test integrity without a sandbox: the witness stream read and cross-checked, the base comparison, and the
collection, harness and test-changed rules on real git changes (the sandboxed corpus is test_integrity.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.policy.baseline import compare
from orchestrator.policy.change import Author, change_from_commits
from orchestrator.policy.engine import evaluate
from orchestrator.policy.model import Policy, load_policies, shipped_dir
from orchestrator.sandbox import crosscheck
from orchestrator.sandbox.scripted import PytestRun
from orchestrator.store.reports import CommandResult, TestReport
from tests.conftest import MakeRepo, git

A, B, C = "tests/test_a.py::test_one", "tests/test_a.py::test_two", "tests/test_b.py::TestB::test_three"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policies([shipped_dir()])


def _run(
    run: PytestRun, *, junit: str | None = None, witness: str | None = None, code: int | None = None
) -> TestReport:
    result = run.result(["python", "-I", "-c", "<witness>"])
    if code is not None:
        result = result.model_copy(update={"exit_code": code})
    if witness is not None:
        result = result.model_copy(update={"witness": witness})
    return crosscheck.test_report(result, run.junit() if junit is None else junit, "all")


# --- the witness stream, cross-checked ---------------------------------------------------------------


def test_a_clean_run_is_witnessed_and_agrees_with_junit() -> None:
    report = _run(PytestRun(passed=[A, C], skipped=[B]))
    assert (report.passed, report.skipped, report.tampered) == ([A, C], [B], [])
    assert report.witnessed and report.collected == [A, C, B] and report.ok


def test_a_junit_file_that_disagrees_is_tampering() -> None:
    honest = PytestRun(passed=[A], failed=[B])
    report = _run(honest, junit=PytestRun(passed=[A, B]).junit(), code=0)
    assert report.failed == [B] and not report.ok  # the witness's outcomes count, not the file's
    assert any("JUnit report disagrees" in e and B in e for e in report.tampered)
    assert any("exited 0 although tests failed" in e for e in report.tampered)


def test_lines_the_witness_did_not_write_and_a_flooded_stream_are_tampering() -> None:
    run = PytestRun(passed=[A])
    stream = run.witness(0)
    assert _run(run, witness=stream + "not json\n").tampered == [
        "1 line(s) on the witness stream that the witness did not write"
    ]
    flooded = _run(run, witness="[converge: output truncated, 9 earlier bytes dropped]\n" + stream)
    assert "size cap" in flooded.tampered[0]


def test_a_process_that_ends_before_pytest_returns_is_tampering_unless_it_was_killed() -> None:
    run = PytestRun(passed=[A])
    cut = "".join(line + "\n" for line in run.witness(0).splitlines() if '"exit"' not in line)
    assert "before pytest returned" in _run(run, witness=cut).tampered[0]
    killed = crosscheck.test_report(
        run.result(["python"]).model_copy(update={"witness": cut, "exit_code": 137}), run.junit(), "all"
    )
    assert killed.tampered == [] and not killed.ok


def test_no_witness_stream_is_never_trusted() -> None:
    result = CommandResult(argv=["pytest"], exit_code=0, duration=0.1)
    report = crosscheck.test_report(result, PytestRun(passed=[A]).junit(), "all")
    assert report.passed == [A] and report.tampered and not report.ok and not report.broken


def test_a_raised_test_reported_as_passed_or_skipped_is_tampering() -> None:
    events = [
        {"e": "start"},
        {"e": "collected", "ids": [A, B]},
        {"e": "collection_done", "count": 2},
        {"e": "made", "id": A, "when": "call", "outcome": "passed", "raised": "AssertionError", "junit": ["", "x"]},
        {"e": "made", "id": B, "when": "call", "outcome": "skipped", "raised": "ValueError", "junit": ["", "y"]},
        {"e": "logged", "id": A, "when": "call", "outcome": "passed"},
        {"e": "logged", "id": B, "when": "call", "outcome": "skipped"},
        {"e": "finish", "status": 0},
        {"e": "exit", "status": 0},
    ]
    stream = "".join(json.dumps(e) + "\n" for e in events)
    report = crosscheck.test_report(CommandResult(argv=["p"], exit_code=0, duration=0, witness=stream), None, "all")
    assert "raised" in report.tampered[0] and A in report.tampered[0] and B in report.tampered[0]


# --- base versus candidate ---------------------------------------------------------------------------


def _report(passed: list[str], **more: list[str]) -> TestReport:
    collected = [*passed, *more.get("skipped", []), *more.get("failed", [])]
    return TestReport(ran=True, passed=passed, collected=collected, witnessed=True, **more)


def test_compare_names_what_became_of_each_base_test() -> None:
    base = _report([A, B, C])
    renamed = "tests/test_a.py::test_one_renamed"
    candidate = _report([renamed], skipped=[B], deselected=[C])
    found = compare("b" * 40, base, candidate)
    assert (found.vanished, found.skipped, found.deselected) == ([A], [B], [C])
    assert [(r.old, r.new, r.passes) for r in found.renamed] == [(A, renamed, True)]
    assert found.weakened and found.count_dropped  # 3 collected at base, 2 now
    same = compare("b" * 40, base, _report([A, B, C, "tests/test_c.py::test_new"]))
    assert not same.weakened
    scoped = compare("b" * 40, base, _report([B]), scope=["tests/test_a.py"])
    assert scoped.vanished == [A] and C not in scoped.lost


def test_the_baseline_rule_rejects_a_model_and_asks_a_person(make_repo: MakeRepo, policy: Policy) -> None:
    repo = make_repo({"a.py": "X = 1\n"})
    (repo / "a.py").write_text("X = 2\n")
    git(repo, "commit", "-qam", "x")
    found = compare("b" * 40, _report([A, B]), _report([A]))
    change = replace(change_from_commits(repo, "HEAD~1", "HEAD", "app"), baseline=found)
    person = evaluate(change, policy)
    model = evaluate(replace(change, author=Author(agent="coder", model="0" * 64)), policy)
    assert (str(person.verdict), str(model.verdict)) == ("review", "reject")
    assert any(B in r.message for r in model.reasons if r.rule == "baseline")


# --- the collection and harness rules ----------------------------------------------------------------


def _rules(make_repo: MakeRepo, policy: Policy, before: dict[str, str], after: dict[str, str]) -> list[str]:
    repo = make_repo(before)
    for rel, text in after.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "change")
    verdict = evaluate(change_from_commits(repo, "HEAD~1", "HEAD", "app"), policy)
    return [f"{r.rule}: {r.message}" for r in verdict.reasons if str(r.decision) != "approve"]


CFG = "[metadata]\nname = app\n\n[tool:pytest]\ntestpaths = tests\n"
TOX = "[tox]\nenvlist = py311\n\n[pytest]\ntestpaths = tests\n\n[testenv]\ncommands = pytest\n"
PYPROJECT = '[project]\nname = "app"\nversion = "1"\n\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'


@pytest.mark.parametrize(
    ("before", "after", "quoted"),
    [
        ({"setup.cfg": CFG}, {"setup.cfg": CFG + "addopts = -k 'not slow'\n"}, "+addopts = -k 'not slow'"),
        ({"tox.ini": TOX}, {"tox.ini": TOX.replace("testpaths = tests", "testpaths = tests/unit")}, "-testpaths"),
        ({"tox.ini": TOX}, {"tox.ini": TOX.replace("commands = pytest", "commands = pytest -m fast")}, "pytest -m"),
        ({"pyproject.toml": PYPROJECT}, {"pyproject.toml": PYPROJECT + 'python_files = ["check_*.py"]\n'}, "python_"),
        (
            {"pyproject.toml": PYPROJECT},
            {"pyproject.toml": PYPROJECT + '\n[project.entry-points.pytest11]\nmine = "app.plugin"\n'},
            "pytest11",
        ),
        ({"a.py": "X = 1\n"}, {"sitecustomize.py": "import os\n"}, "Python loads it at start-up"),
        ({"a.py": "X = 1\n"}, {"_pytest/runner.py": "X = 1\n"}, "stands in for the test harness"),
        ({"a.py": "X = 1\n"}, {".github/ci.yml": "env:\n  PYTEST_ADDOPTS: -x\n"}, "PYTEST_ADDOPTS"),
        ({"Makefile": "test:\n\tpytest\n"}, {"Makefile": "test:\n\tpytest tests/unit\n"}, "+pytest tests/unit"),
        ({"tests/t.py": "def test_a():\n    pass\n"}, {"tests/t.py": "pytest_plugins = ['x']\n"}, "pytest_plugins"),
        ({"app/plugin.py": "X = 1\n"}, {"app/plugin.py": "def pytest_ignore_collect(path):\n    return 1\n"}, "hook"),
    ],
)
def test_what_decides_collection_is_quoted(
    make_repo: MakeRepo, policy: Policy, before: dict[str, str], after: dict[str, str], quoted: str
) -> None:
    said = _rules(make_repo, policy, before, after)
    assert any(s.startswith("collection:") and quoted in s for s in said), said


def test_the_rest_of_a_config_file_is_not_collection(make_repo: MakeRepo, policy: Policy) -> None:
    said = _rules(make_repo, policy, {"setup.cfg": CFG}, {"setup.cfg": CFG.replace("name = app", "name = app2")})
    assert said == []


@pytest.mark.parametrize(
    "line",
    [
        "builtins.print = lambda *a: None",
        "setattr(time, 'sleep', lambda s: None)",
        "unittest.TestCase.assertEqual = lambda *a: None",
        "sys.modules['pytest'] = object()",
        "os._exit = lambda code: None",
        "from _pytest.reports import TestReport",
        "patch('time.time', return_value=0).start()",
    ],
)
def test_non_test_code_patching_the_harness_is_flagged(make_repo: MakeRepo, policy: Policy, line: str) -> None:
    said = _rules(make_repo, policy, {"app/x.py": "X = 1\n"}, {"app/x.py": f"X = 1\n{line}\n"})
    assert said == [f"harness: patches the test harness from non-test code: {line}"]
    in_a_test = _rules(make_repo, policy, {"tests/test_x.py": "X = 1\n"}, {"tests/test_x.py": f"X = 1\n{line}\n"})
    assert not any(s.startswith("harness") for s in in_a_test)


def test_an_edited_test_is_shown_with_its_hunk(make_repo: MakeRepo, policy: Policy) -> None:
    repo = make_repo({"tests/test_x.py": "def test_x():\n    assert f() == 1\n\n\ndef test_y():\n    assert True\n"})
    (repo / "tests/test_x.py").write_text("def test_x():\n    assert f() == 2\n\n\ndef test_y():\n    assert True\n")
    git(repo, "commit", "-qam", "x")
    verdict = evaluate(change_from_commits(repo, "HEAD~1", "HEAD", "app"), policy)
    assert str(verdict.verdict) == "approve"
    shown = [r for r in verdict.reasons if r.rule == "test-changed"]
    assert [r.message for r in shown] == ["test changed: tests/test_x.py::test_x"]
    assert shown[0].excerpt is not None and "-    assert f() == 1\n+    assert f() == 2" in shown[0].excerpt
    shown_json = [r for r in verdict.to_json()["reasons"] if r["rule"] == "test-changed"]
    assert shown_json[0]["excerpt"] == shown[0].excerpt


def test_a_report_with_tampering_is_rejected(make_repo: MakeRepo, policy: Policy, tmp_path: Path) -> None:
    repo = make_repo({"a.py": "X = 1\n"})
    (repo / "a.py").write_text("X = 2\n")
    git(repo, "commit", "-qam", "x")
    forged = TestReport(ran=True, passed=[A], tampered=["the JUnit report disagrees with what ran: x"])
    verdict = evaluate(change_from_commits(repo, "HEAD~1", "HEAD", "app", tests=forged), policy)
    assert str(verdict.verdict) == "reject" and "tampered" in verdict.rules
