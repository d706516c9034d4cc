"""Grounded generation with the real embedded model (SmolLM2-135M through llama.cpp): a tool goal is planned
for the tool whatever its wording, a coder's search text is always a run of whole lines of its file, a
2,000-line file's grammar compiles and constrains, and prompt-lookup drafts change nothing but the speed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.agents import findings
from orchestrator.agents.cards import PlanStep, load_cards
from orchestrator.agents.edits import SearchAmbiguous, SearchNotFound, replace_once
from orchestrator.agents.grounding import Ground, edits_grammar, edits_schema
from orchestrator.agents.prompts import build_prompt
from orchestrator.agents.repomap import build_repo_map
from orchestrator.agents.run import editors_of, forced_steps, plan
from orchestrator.models import runtime
from orchestrator.models.backends import CompletionRequest
from orchestrator.models.llama import LlamaBackend, ModelManager
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace
from tests.conftest import MakeRepo

pytestmark = pytest.mark.model
CARDS = load_cards()


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaBackend]:
    ws = Workspace(tmp_path_factory.mktemp("reg"))
    (ws.state / "locks").mkdir(parents=True)
    record = runtime.get_model(ws, runtime.DEFAULT_MODEL)
    with ModelManager(n_ctx=8192) as manager:
        yield LlamaBackend(record, manager)


def _local_dry_run(repo: Path) -> list[findings.ToolReport]:
    """ruff-fix's dry run, run here rather than in a sandbox (the same command, the same reader)."""
    card = CARDS["ruff-fix"].card
    argv = findings.scoped_argv(card, card.dry_run or [], card.changes, [])
    ruff = Path(sys.executable).parent / "ruff"  # the venv's, as the sandbox has it
    proc = subprocess.run([str(ruff), *argv[1:]], cwd=repo, capture_output=True, text=True, check=False)
    result = CommandResult(argv=argv, exit_code=proc.returncode, duration=0.0, stdout_tail=proc.stdout)
    return [findings.ToolReport(agent="ruff-fix", findings=findings.read_report("ruff-check", result))]


@pytest.mark.parametrize(
    "goal",
    [
        "Remove the unused imports in the inventory package without changing behaviour.",
        "Drop dead imports",
        "Tidy the imports",
        "There are leftover imports that nothing uses any more. Please clean them out.",
    ],
)
def test_the_embedded_model_plans_a_tool_goal_for_the_tool(smol: LlamaBackend, make_repo: MakeRepo, goal: str) -> None:
    repo = make_repo()
    rmap = build_repo_map(repo)
    repo_map, shown = rmap.render_shown(goal, 1024)
    reports = _local_dry_run(repo)
    editors = editors_of(CARDS)
    forced = forced_steps(goal, CARDS, reports)
    ground = Ground(offered=tuple(shown), known=frozenset(rmap.files))
    agents = findings.summary(CARDS, reports, editors)
    answer, invalid, _ = plan(
        CARDS["planner"], smol, editors, goal=goal, repo_map=repo_map, agents=agents, max_steps=1, ground=ground,
        forced=forced,
    )  # fmt: skip
    [step] = answer.value.steps
    assert invalid == []
    assert step.agent == "ruff-fix"
    assert set(step.targets) <= {
        "inventory/report.py",
        "inventory/stock.py",
        "inventory/__init__.py",
        "tests/test_stock.py",
    }
    assert step.targets, "the files with findings"


def test_the_coders_search_texts_are_whole_lines_of_the_file(smol: LlamaBackend, make_repo: MakeRepo) -> None:
    repo = make_repo()
    text = (repo / "inventory" / "stock.py").read_text()
    coder = CARDS["coder"]
    step = PlanStep(title="Remove the unused imports os and sys", agent="coder", targets=["inventory/stock.py"])
    note = f"Current content of inventory/stock.py:\n```\n{text}```"
    prompt = build_prompt(coder.card, goal="Remove unused imports", step=step, files=[note])
    request = CompletionRequest(
        system=prompt.system,
        user=prompt.user,
        json_schema=edits_schema(["inventory/stock.py"]),
        grammar=edits_grammar({"inventory/stock.py": text}, []),
        max_tokens=400,
    )
    for seed in (0, 1, 2):  # sampled too: the grammar holds whatever is drawn
        sampled = CompletionRequest(**{**request.__dict__, "temperature": 0.0 if seed == 0 else 0.8, "seed": seed})
        done = smol.complete(sampled)
        searches = search_texts(done.text)  # read even from an answer cut at max_tokens
        assert searches or done.finish_reason == "length"
        for search in searches:
            assert search and search.endswith("\n") and search in text
            try:
                replace_once(text, search, "")
            except (SearchNotFound, SearchAmbiguous) as exc:  # pragma: no cover - the point of the grammar
                pytest.fail(f"search text not grounded: {exc}")


def search_texts(answer: str) -> list[str]:
    """The complete search texts of an edit answer, even one cut off later on."""
    found, decoder, start = [], json.JSONDecoder(), answer.find('"search"')
    while start != -1:
        value_at = answer.index('"', answer.index(":", start) + 1)
        try:
            value, _ = decoder.raw_decode(answer, value_at)
        except json.JSONDecodeError:
            break  # cut inside it
        found.append(value)
        start = answer.find('"search"', value_at + 1)
    return found


def test_prompt_lookup_drafts_give_the_same_answer(smol: LlamaBackend, make_repo: MakeRepo) -> None:
    text = (make_repo() / "inventory" / "stock.py").read_text()
    user = f"Current content of inventory/stock.py:\n```\n{text}```\nRepeat the function normalise_sku exactly."
    base = CompletionRequest(system="You copy code.", user=user, json_schema=edits_schema([]), max_tokens=120)
    plain = smol.complete(base)
    drafted = smol.complete(CompletionRequest(**{**base.__dict__, "lookup": 8}))
    assert drafted.text == plain.text and drafted.tokens_out == plain.tokens_out


def test_a_2000_line_files_grammar_compiles_and_constrains(smol: LlamaBackend) -> None:
    text = "".join(f"def handler_{n}(request):\n    return respond(request, {n})\n\n" for n in range(667))
    assert text.count("\n") >= 2000
    grammar = edits_grammar({"app/handlers.py": text}, [])
    shown = "".join(text.splitlines(keepends=True)[:90])
    request = CompletionRequest(
        system="You change code with search/replace blocks.",
        user=f"Current content of app/handlers.py (lines 1-90):\n```\n{shown}```\nMake handler_3 return 4.",
        json_schema=edits_schema(["app/handlers.py"]),
        grammar=grammar,
        max_tokens=160,
    )
    for search in search_texts(smol.complete(request).text):
        assert search in text and search.endswith("\n")
