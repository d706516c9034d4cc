"""Grounded runs with neither Docker nor a model: plans checked against the repo, tool dry runs as the
planner's evidence and a tool step scoped to its rules and files, failure classes in the run record.
Real git, policy and signing; a scripted model and a scripted sandbox (whose ruff answers as ruff does)."""

from __future__ import annotations

import pytest

from orchestrator.sandbox.scripted import PytestRun, PytestScript
from orchestrator.sandbox.scripted import ScriptedBackend as ScriptedSandbox
from orchestrator.store import generations, runs
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace
from tests.driving import RunResult, scripted_deps, start_run
from tests.scripted import ScriptedBackend as ScriptedModel
from tests.scripted import edit, plan

PASSING = PytestRun(passed=["tests/test_stock.py::test_value_sums_prices"])
GOOD = edit("inventory/stock.py", "import os\nimport sys\n", "")
CODER_STEP = ("Drop os and sys from stock.py", "coder", ["inventory/stock.py"])
# what `ruff check --output-format concise` prints for the sample repo
FINDINGS = (
    "inventory/__init__.py:3:1: I001 [*] Import block is un-sorted or un-formatted\n"
    "inventory/report.py:3:8: F401 [*] `json` imported but unused\n"
    "inventory/stock.py:3:8: F401 [*] `os` imported but unused\n"
    "inventory/stock.py:4:8: F401 [*] `sys` imported but unused\n"
    "Found 4 errors.\n"
)


def ruff_answers(argv: list[str]) -> CommandResult:
    """The sample repo's ruff: findings for a dry run of the rules asked for, nothing else changes."""
    if argv[:2] == ["ruff", "check"] and "--fix" not in argv:
        rules = argv[argv.index("--select") + 1].split(",") if "--select" in argv else None
        lines = [line for line in FINDINGS.splitlines() if rules is None or any(f" {r} " in line for r in rules)]
        paths = [a for a in argv if a.endswith(".py")]
        lines = [line for line in lines if not paths or line.split(":")[0] in paths]
        return CommandResult(argv=argv, exit_code=0, duration=0.0, stdout_tail="\n".join(lines) + "\n")
    return CommandResult(argv=argv, exit_code=0, duration=0.0)


def _run(ws: Workspace, model: ScriptedModel, sandbox: ScriptedSandbox, goal: str) -> RunResult:
    return start_run(scripted_deps(ws, model, sandbox), "sample", goal, auto_approve=True, run_id="r-ground")


def test_a_goal_asking_for_a_tools_change_is_planned_for_the_tool_first(sample_ws: Workspace) -> None:
    sandbox = ScriptedSandbox(PytestScript([PASSING], other=ruff_answers))
    tool_step = ("Remove the unused imports", "ruff-fix", ["inventory/report.py", "inventory/stock.py"])
    model = ScriptedModel([plan(tool_step)], [])
    result = _run(sample_ws, model, sandbox, "Drop dead imports from the inventory package")
    request = model.requests[0]
    steps = request.json_schema["properties"]["steps"] if request.json_schema else {}
    first = steps["anyOf"][0]["prefixItems"][0]["properties"]
    assert first["agent"] == {"const": "ruff-fix"}, "the tool the goal asks for comes first"
    assert first["targets"] == {"const": ["inventory/report.py", "inventory/stock.py"]}, "its files: the findings"
    assert "unused imports: 3 in inventory/report.py, inventory/stock.py" in request.prefix
    # the step runs only the unused-imports rule, on the files with findings (never `.`: no README)
    assert ["ruff", "check", "--fix", "--exit-zero", "--no-cache", "--force-exclude", "--select", "F401",
            "inventory/report.py", "inventory/stock.py"] in sandbox.ran  # fmt: skip
    assert result.record.steps[0].agent == "ruff-fix"


def test_a_target_not_in_the_repo_is_fed_back_to_the_planner(sample_ws: Workspace) -> None:
    bad = plan(("Add type hints", "coder", ["coder.coder.coder"]))
    model = ScriptedModel([bad, plan(CODER_STEP)], [GOOD])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING])), "Add type hints to the stock module")
    assert result.record.status == "completed", result.record.reason
    correction = model.requests[1].followups[-1].content
    assert "names 'coder.coder.coder', which is not a file of the repository" in correction
    assert model.requests[1].followups[0].role == "assistant", "the planner sees its own answer, then why"


def test_a_plan_with_no_valid_step_fails_the_run_saying_why(sample_ws: Workspace) -> None:
    bad = plan(("Add type hints", "coder", ["inventory/stok.py"]))
    model = ScriptedModel([bad, bad], [])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING])), "Add type hints to the stock module")
    record = result.record
    assert (result.exit_code, record.status) == (1, "failed")
    assert record.reason.startswith("the plan has no step that can be carried out: Step 1 ('Add type hints') names")
    assert "(nearest: inventory/stock.py," in record.reason
    assert record.failures == {runs.FailureClass.PLAN_INVALID: 1}
    assert generations.current(sample_ws, "sample").number == 0


def test_a_new_file_is_declared_and_targets_are_deduplicated(sample_ws: Workspace) -> None:
    answer = plan(("Add a helper module", "coder", ["inventory/stock.py", "./inventory/stock.py"]))
    answer["steps"][0]["creates"] = ["inventory/helpers.py"]
    created = edit("inventory/helpers.py", "", "def double(x):\n    return 2 * x\n")
    model = ScriptedModel([answer], [created])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING])), "Add a helper module")
    assert result.record.status == "completed", result.record.reason
    coder = model.requests[1]
    assert "Target files: inventory/stock.py, inventory/helpers.py (new)" in coder.user
    assert coder.user.count("Current content of inventory/stock.py") == 1
    paths = coder.json_schema["$defs"]["EditBlock"]["properties"]["path"]["enum"] if coder.json_schema else []
    assert paths == ["inventory/stock.py", "inventory/helpers.py"]
    assert coder.grammar is not None and '"\\"inventory/helpers.py\\"" space' in coder.grammar


@pytest.mark.parametrize(
    ("first", "failure"),
    [
        (edit("inventory/stock.py", "import json\n", ""), runs.FailureClass.SEARCH_NOT_FOUND),
        (edit("inventory/stok.py", "import os\n", ""), runs.FailureClass.PATH_UNKNOWN),
        (edit("inventory/stock.py", "    return", "    return"), runs.FailureClass.SEARCH_AMBIGUOUS),
    ],
)
def test_each_failed_attempt_is_recorded_by_class(
    sample_ws: Workspace, first: dict[str, object], failure: runs.FailureClass
) -> None:
    model = ScriptedModel([plan(CODER_STEP)], [first, GOOD])
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING])), "Tidy up stock.py")
    record = result.record
    assert record.status == "completed", record.reason
    assert record.failures == {failure: 1}
    assert [(s.outcome, s.failures) for s in record.steps] == [("promoted", [failure])]
    logged = (sample_ws.state / "logs" / "r-ground.jsonl").read_text()
    assert f'"failure": "{failure.value}"' in logged
    assert record.to_json()["failures"] == {failure.value: 1}


def test_a_tool_step_whose_dry_run_finds_nothing_needs_no_model(sample_ws: Workspace) -> None:
    sandbox = ScriptedSandbox(PytestScript([PASSING]))  # ruff finds nothing
    model = ScriptedModel([plan(("Remove unused imports", "ruff-fix", []))], [])
    result = _run(sample_ws, model, sandbox, "Remove the unused imports")
    step = result.record.steps[0]
    assert (result.record.status, step.outcome) == ("completed", "no-change")
    assert step.reason == "ruff-fix found nothing to change (unused imports (F401)); the step is done without a change."
    assert len(model.requests) == 1, "only the planner was asked"


def test_tool_agents_are_offered_only_for_goals_that_ask_for_what_they_do(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(("Fix the off-by-one", "ruff-fix", [])), plan(CODER_STEP)], [GOOD])
    goal = "top_n in inventory/report.py returns one item fewer than asked for. Fix it."
    result = _run(sample_ws, model, ScriptedSandbox(PytestScript([PASSING], other=ruff_answers)), goal)
    schema = model.requests[0].json_schema or {}
    assert schema["$defs"]["Step"]["properties"]["agent"] == {"enum": ["coder"]}
    assert "steps/0/agent: 'ruff-fix' is not one of ['coder']" in model.requests[1].followups[-1].content
    assert [s.agent for s in result.record.steps] == ["coder"]


def test_the_formatter_never_touches_a_readmes_code_blocks(sample_ws: Workspace) -> None:
    def formatter(argv: list[str]) -> CommandResult:
        if argv[:3] == ["ruff", "format", "--check"]:  # ruff 0.17 formats Python blocks in Markdown too
            out = "unformatted: File would be reformatted\n --> README.md:4:6\n --> inventory/stock.py:1:6\n"
            return CommandResult(argv=argv, exit_code=1, duration=0.0, stdout_tail=out)
        return CommandResult(argv=argv, exit_code=0, duration=0.0)

    sandbox = ScriptedSandbox(PytestScript([PASSING], other=formatter))
    model = ScriptedModel([plan(("Reformat", "ruff-format", ["inventory/stock.py"]))], [])
    _run(sample_ws, model, sandbox, "Reformat the code to match our code style")
    writes = [argv for argv in sandbox.ran if argv[:2] == ["ruff", "format"] and "--check" not in argv]
    assert writes == [["ruff", "format", "--no-cache", "--force-exclude", "inventory/stock.py"]], "never `.`"
