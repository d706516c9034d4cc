"""The loop's control flow with neither Docker nor a model: real git, policy and signing; a scripted
model and a scripted sandbox. Retry with feedback, give-up, policy reject, review pause and resume,
budgets, failing sandboxes and tool agents, and resume after a crash at each node: judged by what
a user sees (the run record, its steps, changesets and generations)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from orchestrator.errors import SandboxError
from orchestrator.sandbox.scripted import PytestRun, PytestScript, is_test_run
from orchestrator.sandbox.scripted import ScriptedBackend as ScriptedSandbox
from orchestrator.store import changesets, generations, runs
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace
from tests.conftest import converge, git
from tests.driving import RunResult, approve, audit_problems, reject, resume_run, scripted_deps, start_run
from tests.scripted import ScriptedBackend as ScriptedModel
from tests.scripted import edit, plan

UNUSED = "import os\nimport sys\n"
STEP = ("Drop the os and sys lines from stock.py", "coder", ["inventory/stock.py"])
GOOD = edit("inventory/stock.py", UNUSED, "")
SKU_TEST = "tests/test_stock.py::test_add_and_count_normalises_sku"
PASSING = PytestRun(passed=[SKU_TEST, "tests/test_stock.py::test_value_sums_prices"])
FAILING = PytestRun(passed=["tests/test_stock.py::test_value_sums_prices"], failed=[SKU_TEST])


class Crash(Exception):
    """The process dies here (not a ConvergeError: nothing in the loop handles it)."""


def _run(
    ws: Workspace,
    model: ScriptedModel,
    sandbox: ScriptedSandbox,
    *,
    auto_approve: bool = True,
    on_event: Callable[[str], None] | None = None,
    goal: str = "tidy up stock.py",
) -> RunResult:
    deps = scripted_deps(ws, model, sandbox, on_event)
    return start_run(deps, "sample", goal, auto_approve=auto_approve, run_id="r-flow")


def _resume(ws: Workspace, model: ScriptedModel, sandbox: ScriptedSandbox) -> RunResult:
    return resume_run(scripted_deps(ws, model, sandbox), "r-flow")


def _refs(ws: Workspace, prefix: str) -> list[str]:
    return git(ws.src / "sample", "for-each-ref", "--format=%(refname)", prefix).splitlines()


def _set_run_budget(ws: Workspace, line: str) -> None:
    config = ws.state / "converge.toml"
    config.write_text(config.read_text().replace("[run]\n", f"[run]\n{line}\n"))


# --- one step, one attempt ----------------------------------------------------------------------


def test_a_passing_change_is_signed_and_promoted(sample_ws: Workspace) -> None:
    sandbox = ScriptedSandbox(PytestScript([PASSING]))
    result = _run(sample_ws, ScriptedModel([plan(STEP)], [GOOD]), sandbox)
    record = result.record
    assert (result.exit_code, record.status) == (0, "completed"), record.reason
    assert [(s.outcome, s.attempts, s.generation) for s in record.steps] == [("promoted", 1, 1)]
    cs = changesets.load(sample_ws, record.changesets[0])
    assert (cs.status, cs.run, cs.generation, cs.verdict) == ("approved", "r-flow", 1, "approve")
    assert audit_problems(sample_ws, cs) == []
    assert "import os" not in (sample_ws.src / "sample" / "inventory" / "stock.py").read_text()
    pytest_runs = [argv for argv in sandbox.ran if is_test_run(argv)]
    assert len(pytest_runs) == 3  # the selected tests, then all, and the base's own run of all (once)
    assert [argv[-1] for argv in pytest_runs].count("tests/test_stock.py") == 1
    assert sandbox.open_sessions == 0, "every sandbox is closed"
    assert not any((sample_ws.cache / "worktrees").rglob("*.py")), "candidate worktrees are removed"


# --- retries and giving up ----------------------------------------------------------------------


def test_an_edit_that_does_not_apply_is_fed_back_and_retried(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(STEP)], [edit("inventory/stock.py", "import json\n", ""), GOOD])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING])))
    assert result.record.status == "completed", result.record.reason
    assert [(s.outcome, s.attempts) for s in result.record.steps] == [("promoted", 2)]
    second = model.requests[-1].user
    assert "Your previous attempt was rejected" in second and "not found" in second


def test_failing_tests_are_fed_back_and_the_next_attempt_is_promoted(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(STEP)], [GOOD, GOOD])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([FAILING, PASSING])))
    assert result.record.status == "completed", result.record.reason
    assert [(s.outcome, s.attempts, s.generation) for s in result.record.steps] == [("promoted", 2, 1)]
    assert SKU_TEST in model.requests[-1].user, "the model is told which test failed"
    assert len(_refs(sample_ws, "refs/converge/failed/r-flow/")) == 1, "the failed candidate is kept"
    assert len(result.record.changesets) == 1


def test_a_step_gives_up_when_its_attempts_are_spent(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(STEP)], [GOOD, GOOD, GOOD])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([FAILING])))
    assert (result.exit_code, result.record.status) == (1, "failed")
    step = result.record.steps[0]
    assert (step.outcome, step.attempts, step.changeset) == ("failed", 3, None)
    assert SKU_TEST in step.reason and result.record.reason.startswith("step 1 (")
    assert generations.current(sample_ws, "sample").number == 0
    assert len(_refs(sample_ws, "refs/converge/failed/r-flow/")) == 3
    assert changesets.list_changesets(sample_ws) == []
    assert git(sample_ws.src / "sample", "status", "--porcelain") == ""


STEP_TWO = ("Tidy report.py", "coder", ["inventory/report.py"])


def test_a_failed_step_ends_the_run_by_default(sample_ws: Workspace) -> None:
    events: list[str] = []
    model = ScriptedModel([plan(STEP, STEP_TWO)], [GOOD, GOOD, GOOD])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([FAILING])), on_event=events.append)
    assert (result.exit_code, result.record.status) == (1, "failed")
    assert [s.step for s in result.record.steps] == [1], "step 2 builds on step 1: it is not attempted"
    assert result.record.steps_planned == 2
    failed_lines = [e for e in events if "attempt" in e and "failed:" in e]
    assert len(failed_lines) == 2 and all(SKU_TEST in line for line in failed_lines), "each reason, whole"


def test_on_step_failure_continue_goes_on_to_the_next_step(sample_ws: Workspace) -> None:
    _set_run_budget(sample_ws, 'on_step_failure = "continue"')
    other = edit("inventory/report.py", "import math\n", "import math\n\n")
    model = ScriptedModel([plan(STEP, STEP_TWO)], [GOOD, GOOD, GOOD, other])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([FAILING, FAILING, FAILING, PASSING])))
    assert [(s.step, s.outcome) for s in result.record.steps] == [(1, "failed"), (2, "promoted")]
    assert result.record.status == "failed" and result.record.reason.startswith("step 1 (")


def test_a_change_the_policy_rejects_is_fed_back(sample_ws: Workspace) -> None:
    leak = edit("inventory/stock.py", UNUSED, 'API_KEY = "sk_live_0123456789abcdefghijklmnop"\n')
    model = ScriptedModel([plan(STEP)], [leak, GOOD])
    events: list[str] = []
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING])), on_event=events.append)
    assert result.record.status == "completed", result.record.reason
    assert [(s.outcome, s.attempts) for s in result.record.steps] == [("promoted", 2)]
    assert "  policy: reject (risk high)" in events
    assert "Policy rejected the change" in model.requests[-1].user
    assert "API_KEY" not in (sample_ws.src / "sample" / "inventory" / "stock.py").read_text()
    assert len(changesets.list_changesets(sample_ws)) == 1, "a rejected candidate is never signed"


# --- review -------------------------------------------------------------------------------------


def test_review_pauses_and_approval_resumes_the_run_to_a_new_generation(sample_ws: Workspace) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [GOOD]), ScriptedSandbox(PytestScript([PASSING]))
    paused = _run(sample_ws, model, sandbox, auto_approve=False)
    assert (paused.exit_code, paused.record.status) == (0, "waiting_review")
    cs_id = str(paused.record.waiting_on)
    assert changesets.load(sample_ws, cs_id).status == "pending"
    assert generations.current(sample_ws, "sample").number == 0
    assert _resume(sample_ws, model, sandbox).record.status == "waiting_review", "undecided: it still waits"
    approve(sample_ws, cs_id)
    done = _resume(sample_ws, model, sandbox)
    assert done.record.status == "completed", done.record.reason
    assert [(s.outcome, s.changeset, s.generation) for s in done.record.steps] == [("promoted", cs_id, 1)]
    assert [g.number for g in generations.lineage(sample_ws, "sample")] == [0, 1]
    assert runs.load(sample_ws, "r-flow").waiting_on is None


def test_a_rejection_is_fed_back_and_the_next_attempt_waits_for_review(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(STEP)], [GOOD, GOOD])
    sandbox = ScriptedSandbox(PytestScript([PASSING]))
    first = _run(sample_ws, model, sandbox, auto_approve=False).record.waiting_on
    reject(sample_ws, str(first), "keep the imports sorted")
    again = _resume(sample_ws, model, sandbox)
    assert again.record.status == "waiting_review"
    assert again.record.waiting_on not in (None, first)
    assert "A reviewer rejected the change: keep the imports sorted" in model.requests[-1].user
    approve(sample_ws, str(again.record.waiting_on))
    done = _resume(sample_ws, model, sandbox).record
    assert [(s.outcome, s.attempts, s.generation) for s in done.steps] == [("promoted", 2, 1)]
    assert changesets.load(sample_ws, str(first)).status == "rejected"


def test_a_rejection_at_the_last_attempt_fails_the_run(sample_ws: Workspace) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [GOOD] * 3), ScriptedSandbox(PytestScript([PASSING]))
    result = _run(sample_ws, model, sandbox, auto_approve=False)
    for _ in range(3):
        reject(sample_ws, str(result.record.waiting_on), "not like this")
        result = _resume(sample_ws, model, sandbox)
    assert (result.exit_code, result.record.status) == (1, "failed")
    step = result.record.steps[0]
    assert (step.outcome, step.attempts) == ("rejected", 3)
    assert "not like this" in step.reason
    assert [cs.status for cs in changesets.list_changesets(sample_ws)] == ["rejected"] * 3
    assert generations.current(sample_ws, "sample").number == 0


# --- budgets and failing parts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "reason"),
    [("max_tokens = 1", "token budget of 1 spent"), ("wall_time = 0.001", "wall time budget of 0s spent")],
)
def test_a_spent_budget_fails_the_run_before_the_next_proposal(sample_ws: Workspace, budget: str, reason: str) -> None:
    _set_run_budget(sample_ws, budget)
    model = ScriptedModel([plan(STEP)], [GOOD])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING])))
    assert (result.exit_code, result.record.status, result.record.reason) == (1, "failed", reason)
    assert len(model.requests) == 1, "only the planner was asked"
    assert (result.record.steps_planned, result.record.steps, result.record.changesets) == (1, [], [])
    assert generations.current(sample_ws, "sample").number == 0


ENGINE_DOWN = "no Docker engine answers; start dockerd"
RUNNER_LOST = "sandbox runner lost while running 'python': gone"


@pytest.mark.parametrize(
    ("sandbox", "reason"),
    [
        (ScriptedSandbox(PytestScript(), start_error=SandboxError(ENGINE_DOWN)), ENGINE_DOWN),
        (ScriptedSandbox(PytestScript([SandboxError(RUNNER_LOST)])), RUNNER_LOST),
    ],
    ids=["engine-down", "lost-mid-tests"],
)
def test_a_failing_sandbox_fails_the_run_and_says_why(
    sample_ws: Workspace, sandbox: ScriptedSandbox, reason: str
) -> None:
    result = _run(sample_ws, ScriptedModel([plan(STEP)], [GOOD]), sandbox)
    assert (result.exit_code, result.record.status, result.record.reason) == (1, "failed", reason)
    assert changesets.list_changesets(sample_ws) == []
    assert generations.current(sample_ws, "sample").number == 0
    assert sandbox.open_sessions == 0


def test_a_tool_agent_whose_dry_run_finds_nothing_says_so(sample_ws: Workspace) -> None:
    sandbox = ScriptedSandbox(PytestScript([PASSING]))
    result = _run(sample_ws, ScriptedModel([plan(("Fix lint", "ruff-fix", []))], []), sandbox, goal="Fix lint")
    assert result.record.status == "completed", result.record.reason
    assert [(s.agent, s.outcome, s.changeset) for s in result.record.steps] == [("ruff-fix", "no-change", None)]
    assert result.record.steps[0].reason.startswith("ruff-fix found nothing to change (unused imports (F401), ")
    assert not any("--fix" in argv for argv in sandbox.ran), "nothing found: the fix never runs"
    assert generations.current(sample_ws, "sample").number == 0


def test_a_tool_agent_missing_from_the_sandbox_fails_the_run(sample_ws: Workspace) -> None:
    def missing(argv: list[str]) -> CommandResult:
        return CommandResult(argv=argv, exit_code=127, duration=0.0, stderr_tail="cannot run 'ruff'\n")

    sandbox = ScriptedSandbox(PytestScript([PASSING], other=missing))
    result = _run(sample_ws, ScriptedModel([plan(("Fix lint", "ruff-fix", []))], []), sandbox, goal="Fix lint")
    assert (result.exit_code, result.record.status) == (1, "failed")
    assert "agent 'ruff-fix'" in result.record.reason and "is it installed" in result.record.reason


# --- resume after a crash at each node ----------------------------------------------------------


def _crash_once_at(prefix: str) -> Callable[[str], None]:
    seen: list[str] = []

    def on_event(text: str) -> None:
        if text.startswith(prefix) and not seen:
            seen.append(text)
            raise Crash(text)

    return on_event


def _assert_finished_once(ws: Workspace, result: RunResult, attempts: int = 1) -> None:
    """The run completed with exactly one changeset, one new generation and one candidate commit."""
    record = result.record
    assert record.status == "completed", record.reason
    assert [(s.outcome, s.attempts, s.generation) for s in record.steps] == [("promoted", attempts, 1)]
    assert len(changesets.list_changesets(ws)) == 1 and len(record.changesets) == 1
    assert [g.number for g in generations.lineage(ws, "sample")] == [0, 1]
    assert len(_refs(ws, "refs/converge/candidates/r-flow/")) == 1
    assert git(ws.src / "sample", "rev-list", "--count", "refs/converge/head") == "2"
    assert runs.load(ws, "r-flow").status == "completed"


NODE_EVENTS = {
    "plan": "plan: 1 step",
    "propose": "step 1 attempt 1: coder proposes",
    "apply": "  applied",
    "verify": "  tests:",
    "judge": "  policy:",
    "sign": "  signed",
    "review": "  promoted",
    "advance": "step 1: promoted",
}


@pytest.mark.parametrize("node", list(NODE_EVENTS))
def test_a_crash_in_each_node_then_resume_finishes_without_duplicates(sample_ws: Workspace, node: str) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [GOOD]), ScriptedSandbox(PytestScript([PASSING]))
    with pytest.raises(Crash):
        _run(sample_ws, model, sandbox, on_event=_crash_once_at(NODE_EVENTS[node]))
    assert runs.load(sample_ws, "r-flow").status == "running"  # its process lives on here: `interrupted` once gone
    _assert_finished_once(sample_ws, _resume(sample_ws, model, sandbox))
    assert sandbox.open_sessions == 0


def test_a_crash_in_the_retry_node_then_resume_finishes_without_duplicates(sample_ws: Workspace) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [GOOD, GOOD]), ScriptedSandbox(PytestScript([FAILING, PASSING]))
    with pytest.raises(Crash):
        _run(sample_ws, model, sandbox, on_event=_crash_once_at("  attempt 1 failed"))
    _assert_finished_once(sample_ws, _resume(sample_ws, model, sandbox), attempts=2)
    assert len(_refs(sample_ws, "refs/converge/failed/r-flow/")) == 1


def test_a_crash_in_the_model_or_the_sandbox_then_resume_finishes_without_duplicates(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(STEP)], [Crash("killed while the coder thinks"), GOOD])
    sandbox = ScriptedSandbox(PytestScript([Crash("killed while the tests run"), PASSING]))
    with pytest.raises(Crash, match="coder"):
        _run(sample_ws, model, sandbox)
    with pytest.raises(Crash, match="tests"):
        _resume(sample_ws, model, sandbox)
    _assert_finished_once(sample_ws, _resume(sample_ws, model, sandbox))


def test_a_crash_while_pausing_for_review_resumes_after_the_decision(sample_ws: Workspace) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [GOOD]), ScriptedSandbox(PytestScript([PASSING]))
    with pytest.raises(Crash):
        _run(sample_ws, model, sandbox, auto_approve=False, on_event=_crash_once_at("  waiting for review"))
    waiting = _resume(sample_ws, model, sandbox).record
    assert waiting.status == "waiting_review" and waiting.waiting_on is not None
    approve(sample_ws, waiting.waiting_on)
    _assert_finished_once(sample_ws, _resume(sample_ws, model, sandbox))


def test_resuming_a_finished_run_changes_nothing(sample_ws: Workspace) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [GOOD]), ScriptedSandbox(PytestScript([PASSING]))
    _run(sample_ws, model, sandbox)
    ran = len(sandbox.ran)
    _assert_finished_once(sample_ws, _resume(sample_ws, model, sandbox))
    assert len(sandbox.ran) == ran and len(model.requests) == 2


def test_resume_takes_a_unique_prefix_of_a_run_id(sample_ws: Workspace) -> None:
    _run(sample_ws, ScriptedModel([plan(STEP)], [GOOD]), ScriptedSandbox(PytestScript([PASSING])))
    proc = converge("-w", str(sample_ws.root), "resume", "r-fl", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == "r-flow"
    runs.save(sample_ws, runs.RunRecord(id="r-flat", repo="sample", goal="g", status="failed"))
    ambiguous = converge("-w", str(sample_ws.root), "resume", "r-fl")
    assert ambiguous.returncode == 2 and "prefix of 2 runs" in ambiguous.stderr
