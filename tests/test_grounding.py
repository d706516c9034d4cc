"""Grounding in the repository: plan schemas and checks, the coder's grammar and view, tool findings, and
search texts that are runs of whole lines. The real llama.cpp model where a grammar must compile and
constrain (marked ``model``); the real sandbox for dry runs (marked ``docker``)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from orchestrator.agents import findings
from orchestrator.agents.cards import Plan, PlanStep, load_cards
from orchestrator.agents.coding import coder_view, tokens
from orchestrator.agents.edits import (
    EditBlock,
    EditProposal,
    SearchAmbiguous,
    apply_edits,
    failure_of,
    replace_once,
)
from orchestrator.agents.grounding import ForcedStep, Ground, check_plan, edits_grammar, plan_schema
from orchestrator.agents.repomap import parse_all, repo_map_at
from orchestrator.agents.run import editors_of, named_in
from orchestrator.errors import EditError
from orchestrator.models.grammar import Grammar, unique_run_lengths
from orchestrator.store import generations
from orchestrator.store.reports import CommandResult
from orchestrator.store.runs import FailureClass
from orchestrator.store.workspace import Workspace
from tests.conftest import ROOT, MakeRepo, converge

CARDS = load_cards()
EDITORS = editors_of(CARDS)
GROUND = Ground(offered=("inventory/stock.py", "inventory/report.py"), known=frozenset({"inventory/stock.py", "a.py"}))


# --- plans ---------------------------------------------------------------------------------------------


def test_a_plan_schema_names_only_map_paths_and_forces_the_tool_first() -> None:
    schema = plan_schema(EDITORS, 2, GROUND, [ForcedStep("ruff-fix", ("inventory/stock.py",))])
    ok = {"title": "t", "agent": "ruff-fix", "targets": ["inventory/stock.py"], "acceptance": []}
    coder = {"title": "t", "agent": "coder", "targets": ["inventory/report.py"], "acceptance": []}
    jsonschema.validate({"goal": "g", "steps": [ok, coder]}, schema)
    for bad in (
        [coder],  # the forced tool is not first
        [ok, {**coder, "targets": ["coder.coder.coder"]}],  # a path the map does not offer
        [ok, coder, coder],  # past max_steps
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"goal": "g", "steps": bad}, schema)
    free = plan_schema(EDITORS, 2, None)  # for checking an answer: any path, check_plan names what is wrong
    jsonschema.validate({"goal": "g", "steps": [{**coder, "targets": ["coder.coder.coder"]}]}, free)


def test_check_plan_keeps_valid_steps_cleans_targets_and_says_what_is_wrong() -> None:
    plan = Plan(
        goal="g",
        steps=[
            PlanStep(title="one", agent="coder", targets=["./inventory/stock.py", "inventory/stock.py"]),
            PlanStep(title="two", agent="coder", targets=["inventory/stok.py"]),
            PlanStep(title="three", agent="coder", targets=["a.py"], creates=["pkg/new.py", "a.py"]),
        ],
    )
    checked = check_plan(plan, EDITORS, GROUND)
    assert [(s.title, s.targets, s.creates) for s in checked.plan.steps] == [
        ("one", ["inventory/stock.py"], []),
        ("three", ["a.py"], ["pkg/new.py"]),  # a file that exists is a target, not a creation
    ]
    assert checked.problems == [
        "Step 2 ('two') names 'inventory/stok.py', which is not a file of the repository "
        "(nearest: inventory/stock.py); name files from the map, or list a file the step creates under creates"
    ]


def test_the_files_a_goal_names_narrow_a_tools_targets() -> None:
    found = ["inventory/report.py", "inventory/stock.py", "tests/test_stock.py"]
    assert named_in("Remove the unused imports in the inventory package.", found) == found[:2]
    assert named_in("stock.py has imports nothing uses", found) == ["inventory/stock.py"]
    assert named_in("Drop dead imports", found) == []


# --- tool findings -------------------------------------------------------------------------------------


def _result(argv: list[str], out: str, code: int = 0) -> CommandResult:
    return CommandResult(argv=argv, exit_code=code, duration=0.0, stdout_tail=out)


def test_dry_run_output_reads_as_findings_by_rule_and_file() -> None:
    check = (
        "/src/pkg/a.py:3:8: F401 [*] `os` imported but unused\n"
        "pkg/b.py:1:1: B009 Do not call getattr with a constant\n"
        "README.md:1:1: F401 [*] in a code block\nFound 3 errors.\n"
    )
    assert findings.read_report("ruff-check", _result(["ruff"], check)) == [
        findings.Finding(path="pkg/a.py", rule="F401", fixable=True),
        findings.Finding(path="pkg/b.py", rule="B009", fixable=False),
    ]
    old = "Would reformat: pkg/a.py\n1 file would be reformatted\n"
    new = "unformatted: File would be reformatted\n --> pkg/c.py:1:6\n"
    concise = "pkg/d.py:1:6: unformatted: File would be reformatted\n"
    for out, path in ((old, "pkg/a.py"), (new, "pkg/c.py"), (concise, "pkg/d.py")):
        assert findings.read_report("ruff-format", _result(["ruff"], out, 1)) == [
            findings.Finding(path=path, rule="format")
        ]
    with pytest.raises(findings.SandboxError, match=r"exited 127.*installed in the sandbox"):
        findings.read_report("ruff-check", _result(["ruff"], "", 127))


@pytest.mark.parametrize(
    ("goal", "tool", "rules"),
    [
        ("Drop dead imports", "ruff-fix", ["F401"]),
        ("Tidy the imports", "ruff-fix", ["F401", "I001"]),
        ("There are leftover imports that aren't used. Get rid of them.", "ruff-fix", ["F401"]),
        ("Sort the imports the usual way", "ruff-fix", ["I001"]),
        ("Reformat render.py to match our code style", "ruff-format", []),
        ("Fix the import error in stock.py", None, []),
        ("Move the money formatting into a helper used in both places", None, []),
    ],
)
def test_a_goal_is_matched_to_the_tools_kinds_of_change(goal: str, tool: str | None, rules: list[str]) -> None:
    matched = findings.matched_tools(goal, CARDS)
    assert list(matched) == ([tool] if tool else [])
    if tool:
        assert findings.rules_of(matched[tool]) == rules


def test_a_tool_step_runs_only_its_rules_on_python_files() -> None:
    fix = CARDS["ruff-fix"].card
    families = findings.step_families(fix, "Remove the unused imports", "tidy the code")
    assert findings.scoped_argv(fix, fix.command or [], families, ["a.py"])[-3:] == ["--select", "F401", "a.py"]
    goal = "The imports in report.py are a mess: some aren't used and the rest aren't in order. Clean them up."
    both = findings.step_families(fix, "The import order is a mess", goal)  # the title names one of the two
    assert findings.rules_of(both) == ["F401", "I001"]
    assert findings.python_files(["README.md", "a.py", "b.pyi", "a.py"]) == ["a.py", "b.pyi"]
    fmt = CARDS["ruff-format"].card
    assert findings.scoped_argv(fmt, fmt.command or [], fmt.changes, []) == [*(fmt.command or []), "."]


def test_the_planner_reads_what_each_agent_does_and_would_change() -> None:
    reports = [
        findings.ToolReport(agent="ruff-fix", findings=[findings.Finding(path="a.py", rule="F401")]),
        findings.ToolReport(agent="ruff-format", error="no sandbox: engine down"),
    ]
    text = findings.summary(CARDS, reports, EDITORS)
    assert "- ruff-fix: Applies ruff's safe automatic lint fixes to Python files." in text
    assert "  would change now: unused imports: 1 in a.py" in text
    assert "  would change now: unknown (the dry run failed: no sandbox: engine down)" in text
    assert "- coder: " in text


@pytest.mark.docker
def test_dry_runs_in_the_real_sandbox_find_the_sample_repos_unused_imports(sample_ws: Workspace) -> None:
    head = generations.current(sample_ws, "sample").commit
    reports = {r.agent: r for r in findings.dry_runs(sample_ws, "sample", head, CARDS)}
    assert reports["ruff-fix"].error == "" and reports["ruff-format"].error == ""
    assert reports["ruff-fix"].files(["F401"]) == ["inventory/report.py", "inventory/stock.py"]
    assert reports["ruff-format"].findings == []


# --- search texts: whole lines, found once ----------------------------------------------------------


def test_unique_run_lengths_count_whole_lines() -> None:
    lines = ["a\n", "b\n", "a\n", "c\n", "a\n", "b\n", "d"]
    # "a b" occurs twice, so a start at line 0 needs three lines; "d" without its newline is still unique
    assert unique_run_lengths(lines) == [3, 2, 2, 1, 3, 2, 1]
    assert unique_run_lengths(["x\n", "x\n"]) == [2, 0], "the one run of both lines is unique"


def test_a_search_found_inside_lines_too_matches_where_it_is_whole_lines() -> None:
    text = "def f():\n    return 1\nreturn 1\n"
    assert replace_once(text, "return 1\n", "return 2\n") == ("def f():\n    return 1\nreturn 2\n", None)
    with pytest.raises(SearchAmbiguous):
        replace_once("x = 1\nx = 1\n", "x = 1\n", "x = 2\n")


def test_a_repeated_block_applies_once_and_overlapping_blocks_are_named(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "x = 1\ny = 2\n"})
    block = EditBlock(path="a.py", search="x = 1\n", replace="x = 10\n")
    assert apply_edits(repo, EditProposal(summary="s", edits=[block, block])).notes == (
        "block 2 repeats block 1; applied once",
    )
    overlap = [
        EditBlock(path="a.py", search="x = 10\ny = 2\n", replace="x = 3\n"),
        EditBlock(path="a.py", search="y = 2\n", replace="y = 4\n"),
    ]
    with pytest.raises(EditError, match="an earlier block already changed those lines") as caught:
        apply_edits(repo, EditProposal(summary="s", edits=overlap))
    assert failure_of(caught.value) == FailureClass.EDIT_INVALID


def test_the_edit_grammar_names_each_shown_file_and_new_file() -> None:
    grammar = edits_grammar({"pkg/a.py": 'x = "1"\ny = 2\n'}, ["pkg/new.py"])
    assert '"\\"pkg/a.py\\"" space' in grammar and '"\\"pkg/new.py\\"" space' in grammar
    assert '"x = \\\\\\"1\\\\\\"\\\\n"' in grammar, "the line as JSON text, as a GBNF literal"
    assert grammar.startswith("root ::= ")


def test_a_grammar_for_a_2000_line_file_is_built() -> None:
    text = "".join(f"    value_{n % 300} = compute({n % 7})\n" for n in range(2000))
    g = Grammar()
    search = g.line_run("big", text)
    g.rule("root", search)
    assert len(g.rules) > 2000 and f"{search} ::= " in g.text()


# --- the coder's view ------------------------------------------------------------------------------------


def test_the_coders_view_fits_the_window_and_reads_the_commit(sample_ws: Workspace) -> None:
    head = generations.current(sample_ws, "sample").commit
    (sample_ws.repo_path("sample") / "inventory" / "stock.py").write_text("moved on\n")  # the checkout moves on
    rmap = repo_map_at(sample_ws, "sample", head)
    coder = CARDS["coder"].card
    step = PlanStep(title="Make normalise_sku strict", agent="coder", targets=["inventory/stock.py"] * 2)
    wide = coder_view(sample_ws, "sample", head, rmap, coder, goal="strict skus", step=step, feedback=[], window=8192)
    assert [f.path for f in wide.files] == ["inventory/stock.py"] and "import os" in wide.files[0].text
    assert wide.files[0].note().startswith("Current content of inventory/stock.py:\n```\n")
    narrow = coder_view(sample_ws, "sample", head, rmap, coder, goal="strict skus", step=step, feedback=[], window=1700)
    shown = narrow.files[0]
    assert shown.first > 1 or shown.last < shown.total, "cut to whole lines around what the step is about"
    assert "def normalise_sku" in shown.text
    used = sum(tokens(t) for t in (coder.system, narrow.repo_map, *narrow.notes)) + coder.sampling.max_tokens
    assert used <= 1700


# --- large repo maps ---------------------------------------------------------------------------------------


def test_many_files_are_parsed_by_workers_as_they_would_be_here() -> None:
    sources = {f"k{n}": f"import os\n\n\ndef f{n}(x: int = {n}) -> int:\n    return x\n".encode() for n in range(300)}
    sources["bad"] = b"def broken(:\n"
    found = parse_all(sources)
    assert found["k7"].symbols[0].signature == "def f7(x: int = 7) -> int"
    assert found["bad"].error is not None and found["bad"].error.startswith("syntax error")
    assert len(found) == 301


def test_converge_add_builds_the_map_in_the_background(tmp_path: Path, make_repo: MakeRepo) -> None:
    w = tmp_path / "w"
    converge("init", str(w), check=True)
    converge("-w", str(w), "add", str(make_repo()), "--name", "inv", check=True)
    cache = w / "cache" / "repomap" / "inv" / "repomap-v2.json"
    deadline = time.monotonic() + 120  # a wait for the background process, not a speed assertion
    while not cache.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 5, "every Python file of the sample repo parsed"
    log = w / ".converge" / "logs" / "map-inv.log"
    while "mapped" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "mapped 7 files" in log.read_text()


def test_the_parse_worker_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.agents.parseworker", "1000"],
        input=pickle.dumps([b"def f(a, b=2):\n    pass\n"]),
        capture_output=True,
        cwd=ROOT,
        check=True,
    )
    [parsed] = pickle.loads(proc.stdout)
    assert parsed.symbols[0].signature == "def f(a, b=2)"


def test_an_edit_from_a_grounded_answer_applies(make_repo: MakeRepo) -> None:
    repo = make_repo()
    text = (repo / "inventory" / "stock.py").read_text()
    lines = text.splitlines(keepends=True)
    search = "".join(lines[2:4])  # a run of whole lines, found once
    proposal = EditProposal(summary="s", edits=[EditBlock(path="inventory/stock.py", search=search, replace="")])
    assert apply_edits(repo, proposal).changed == ("inventory/stock.py",)
