"""Agent cards: loading and validation, prompt assembly, answer validation, tool agents."""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

from orchestrator.agents.cards import (
    AgentCard,
    Plan,
    PlanStep,
    Review,
    get_card,
    load_card,
    load_cards,
)
from orchestrator.agents.edits import EditProposal, apply_edits
from orchestrator.agents.grounding import Ground, check_plan
from orchestrator.agents.prompts import build_prompt, output_schema, parse_output
from orchestrator.agents.run import editors_of
from orchestrator.agents.tools import run_tool_agent
from orchestrator.errors import ConfigError, ModelError, SandboxError, UsageError
from orchestrator.gate.candidates import Candidate
from orchestrator.sandbox import factory
from orchestrator.sandbox.docker_backend import DockerBackend, connect
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace, source_root
from tests.conftest import MakeRepo, git

SHIPPED = ("coder", "planner", "reviewer", "ruff-fix", "ruff-format")


def local_runner(worktree: Path, argv: Sequence[str]) -> CommandResult:
    """Runs the command on the host with the venv's tools (the graph passes the sandbox instead)."""
    tool = Path(sys.executable).parent / argv[0]
    start = time.monotonic()
    proc = subprocess.run(
        [str(tool) if tool.exists() else argv[0], *argv[1:]], cwd=worktree, capture_output=True, text=True, check=False
    )
    return CommandResult(
        argv=list(argv),
        exit_code=proc.returncode,
        duration=time.monotonic() - start,
        stdout_tail=proc.stdout[-2000:],
        stderr_tail=proc.stderr[-2000:],
    )


def write_card(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


MODEL_CARD = 'name = "{name}"\nrole = "coder"\nkind = "model"\noutput = "edits"\nsystem = "You code."\n'


def test_shipped_cards_load_with_digests() -> None:
    cards = load_cards()
    assert set(SHIPPED) <= set(cards)
    for name in SHIPPED:
        loaded = cards[name]
        assert loaded.digest == hashlib.sha256(loaded.path.read_bytes()).hexdigest()
        assert loaded.path == source_root() / "agents" / f"{name}.toml"
    assert cards["planner"].card.output == "plan"
    assert cards["reviewer"].card.output == "review"
    assert cards["coder"].card.binding() == ("role", "coder")
    assert cards["ruff-fix"].card.command is not None and cards["ruff-fix"].card.command[:3] == [
        "ruff",
        "check",
        "--fix",
    ]
    assert cards["ruff-format"].card.command is not None and cards["ruff-format"].card.command[:2] == ["ruff", "format"]


def test_workspace_cards_override_and_add(ws: Workspace) -> None:
    write_card(ws.root / "agents", "coder", MODEL_CARD.format(name="coder") + 'model = "qwen-coder"\n')
    write_card(ws.root / "agents", "doc-writer", MODEL_CARD.format(name="doc-writer"))
    cards = load_cards(ws)
    assert cards["coder"].card.binding() == ("model", "qwen-coder")
    assert cards["coder"].path == ws.root / "agents" / "coder.toml"
    assert cards["doc-writer"].card.role == "coder"
    assert cards["planner"].path.parent == source_root() / "agents"
    with pytest.raises(UsageError, match=r"unknown agent 'nobody' \(known: coder, doc-writer"):
        get_card(cards, "nobody")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MODEL_CARD + "[sampling]\ntemprature = 0.3\n",
            "agents/x.toml: sampling.temprature: Extra inputs are not permitted",
        ),
        (
            MODEL_CARD + "[sampling]\ntemperature = 7\n",
            "agents/x.toml: sampling.temperature: Input should be less than or equal to 2",
        ),
        (
            MODEL_CARD.replace('role = "coder"', 'role = "boss"'),
            "agents/x.toml: role: Input should be 'planner', 'coder', 'reviewer' or 'tool'",
        ),
        (MODEL_CARD.replace('output = "edits"\n', ""), "agents/x.toml: output: a model agent needs an output schema"),
        (
            MODEL_CARD.replace('system = "You code."\n', ""),
            "agents/x.toml: system: a model agent needs a system prompt",
        ),
        (MODEL_CARD + 'model = "a"\nmodel_role = "b"\n', "agents/x.toml: model: give model or model_role, not both"),
        (MODEL_CARD + 'command = ["ruff"]\n', "agents/x.toml: command: only tool agents run a command"),
        ('name = "x"\nrole = "tool"\nkind = "tool"\n', "agents/x.toml: command: a tool agent needs a command"),
        (
            'name = "x"\nrole = "coder"\nkind = "tool"\ncommand = ["ruff"]\n',
            "agents/x.toml: kind: kind 'tool' does not fit role 'coder'",
        ),
        (
            MODEL_CARD + '[prompt]\nstep = "Do {title} with {secret}"\n',
            "agents/x.toml: prompt.step: unknown placeholder {secret}; use {title}",
        ),
        (MODEL_CARD + '[prompt]\ntask = "Goal: {goal"\n', "agents/x.toml: prompt.task: bad template"),
        (
            MODEL_CARD.replace('name = "{name}"', 'name = "y"'),
            "agents/x.toml: name: 'y' differs from the file name; use 'x'",
        ),
        ('name = "x"\nrole = \n', "agents/x.toml: not valid TOML"),
    ],
)
def test_bad_cards_name_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write_card(tmp_path, "x", text.replace("{name}", "x"))
    with pytest.raises(ConfigError) as err:
        load_card(path)
    assert str(err.value).startswith(message)


def test_a_bad_workspace_card_stops_loading(ws: Workspace) -> None:
    write_card(ws.root / "agents", "coder", 'name = "coder"\nrole = "coder"\n')
    with pytest.raises(ConfigError, match=r"^agents/coder.toml: kind: Field required"):
        load_cards(ws)


def test_prompt_puts_stable_parts_first() -> None:
    coder = load_cards()["coder"].card
    step = PlanStep(title="Make SKUs strict", agent="coder", targets=["inventory/stock.py"], acceptance=["tests pass"])
    first = build_prompt(
        coder, goal="strict skus", repo_map="inventory/stock.py\n  def normalise_sku(sku)\n", step=step
    )
    retry = build_prompt(
        coder,
        goal="strict skus",
        repo_map="inventory/stock.py\n  def normalise_sku(sku)\n",
        step=step,
        feedback=["Edit block 1 of 1 (inventory/stock.py) failed: not found", "  "],
    )
    system, prefix, user = first
    assert system == coder.system.strip()
    assert prefix == "Repository map:\ninventory/stock.py\n  def normalise_sku(sku)\n\nGoal: strict skus"
    assert user.startswith("Step: Make SKUs strict\nTarget files: inventory/stock.py\nDone when: tests pass\n\n")
    assert user.endswith(
        "Answer with one JSON object with keys summary and edits (path, search, replace), nothing else."
    )
    # a retry changes only the user part: the system prompt and prefix stay byte-identical
    assert retry.system == first.system and retry.stable_prefix == first.stable_prefix
    assert (
        "Your previous attempt was rejected:\nEdit block 1 of 1 (inventory/stock.py) failed: not found\n" in retry.user
    )
    assert "rejected" not in first.user


def test_prompt_schema_placeholder_and_no_map() -> None:
    card = AgentCard.model_validate(
        {
            "name": "c",
            "role": "reviewer",
            "kind": "model",
            "output": "review",
            "system": "Review.",
            "prompt": {"answer": "Schema: {schema}"},
        }
    )
    prompt = build_prompt(card, goal="g", repo_map="", step=None, feedback=None)
    assert prompt.stable_prefix == "Goal: g"
    assert json.loads(prompt.user.removeprefix("Schema: ")) == Review.model_json_schema()


def test_answers_are_validated_against_the_card_schema() -> None:
    cards = load_cards()
    planner, coder = cards["planner"].card, cards["coder"].card
    assert output_schema(coder) == EditProposal.model_json_schema()
    answer = {"goal": "g", "steps": [{"title": "t", "agent": "coder", "targets": ["a.py"], "acceptance": []}]}
    plan = parse_output(planner, "```json\n" + json.dumps(answer) + "\n```")
    assert isinstance(plan, Plan) and plan.steps[0].agent == "coder"
    ground = Ground(offered=("a.py",), known=frozenset({"a.py"}))
    assert check_plan(plan, editors_of(cards), ground).plan == plan
    with pytest.raises(ModelError, match=r"does not match the plan schema: steps: List should have at least 1 item"):
        parse_output(planner, '{"goal": "g", "steps": []}')
    with pytest.raises(ModelError, match=r"does not match the edits schema: edits.0.search: Field required"):
        parse_output(coder, '{"summary": "s", "edits": [{"path": "a.py", "replace": ""}]}')
    with pytest.raises(ModelError, match="Invalid JSON"):
        parse_output(coder, "I would change the file")
    bad = Plan(goal="g", steps=[PlanStep(title="review it", agent="reviewer")])
    checked = check_plan(bad, editors_of(cards), ground)
    assert checked.plan.steps == []
    assert checked.problems == [
        "Step 1 ('review it') names agent 'reviewer', which does not exist or cannot edit; "
        "choose one of: ruff-fix, ruff-format, coder"
    ]


def test_ruff_fix_tool_agent_produces_edits_through_the_same_path(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo()  # the sample repo has unused imports
    card = load_cards()["ruff-fix"].card
    with Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=1, base="HEAD") as cand:
        proposal = run_tool_agent(card, cand.path, local_runner)
        assert proposal is not None
        assert git(cand.path, "status", "--porcelain") == ""  # the tool's own changes were put back
        paths = sorted(e.path for e in proposal.edits)
        assert "inventory/stock.py" in paths
        applied = apply_edits(cand.path, proposal)
        assert "inventory/stock.py" in applied.changed
        stock = (cand.path / "inventory/stock.py").read_text()
        assert "import os" not in stock and "import sys" not in stock
        cand.commit("ruff-fix")
        assert "inventory/stock.py" in cand.changed_paths()
        # run again on the fixed tree: nothing left to change
        cand.keep("candidates")
    with Candidate(
        repo, tmp_path / "wt", run="run", step=1, attempt=2, base="refs/converge/candidates/run/1-1"
    ) as again:
        assert run_tool_agent(card, again.path, local_runner) is None


def test_ruff_format_tool_agent(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"ugly.py": "x = {  'a':1,\n'b' :2}\n", "fine.py": "y = 1\n"})
    card = load_cards()["ruff-format"].card
    with Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=1, base="HEAD") as cand:
        proposal = run_tool_agent(card, cand.path, local_runner)
        assert proposal is not None
        assert [e.path for e in proposal.edits] == ["ugly.py"]
        apply_edits(cand.path, proposal)
        assert (cand.path / "ugly.py").read_text() == 'x = {"a": 1, "b": 2}\n'


def test_tool_agent_refuses_dirty_worktrees_and_model_cards(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a = 1\n"})
    cards = load_cards()
    with pytest.raises(UsageError, match="not a tool agent"):
        run_tool_agent(cards["coder"].card, repo, local_runner)
    (repo / "a.py").write_text("a = 2\n")
    with pytest.raises(SandboxError, match="uncommitted changes"):
        run_tool_agent(cards["ruff-format"].card, repo, local_runner)


def test_a_failing_tool_command_is_an_error_not_an_empty_change(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a = 1\n"})
    card = AgentCard.model_validate(
        {
            "name": "t",
            "role": "tool",
            "kind": "tool",
            "command": ["sh", "-c", "echo changed > a.py; echo boom >&2; exit 3"],
        }
    )
    with pytest.raises(SandboxError, match=r"agent 't': `sh -c .*` exited 3: boom"):
        run_tool_agent(card, repo, local_runner)
    assert git(repo, "status", "--porcelain") == ""  # half-done tool output is put back
    missing = card.model_copy(update={"command": ["sh", "-c", "exit 127"]})
    with pytest.raises(SandboxError, match="installed in the sandbox"):
        run_tool_agent(missing, repo, local_runner)


def test_tool_agent_new_files_become_create_blocks(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a = 1\n"})
    card = AgentCard.model_validate(
        {"name": "t", "role": "tool", "kind": "tool", "command": ["sh", "-c", "echo new > b.txt; echo 'a = 2' > a.py"]}
    )
    proposal = run_tool_agent(card, repo, local_runner)
    assert proposal is not None
    assert [(e.path, e.search, e.replace) for e in proposal.edits] == [
        ("a.py", "a = 1\n", "a = 2\n"),
        ("b.txt", "", "new\n"),
    ]
    assert git(repo, "status", "--porcelain") == ""
    apply_edits(repo, proposal)
    assert (repo / "b.txt").read_text() == "new\n"


@pytest.mark.docker
def test_tool_agent_runs_in_the_real_sandbox(sample_ws: Workspace) -> None:

    client = connect()
    script = "printf 'VERSION = 1\\n' > inventory/version.py && sed -i 's/^import os$//' inventory/stock.py"
    card = AgentCard.model_validate({"name": "t", "role": "tool", "kind": "tool", "command": ["sh", "-c", script]})
    repo = sample_ws.repo_path("sample")
    worktrees = sample_ws.cache / "worktrees"
    with Candidate(repo, worktrees, run="r", step=1, attempt=1, base="refs/converge/head") as cand:
        try:
            with factory.open_sandbox(
                sample_ws, "sample", cand.path, label="agents-test", backend=DockerBackend(client)
            ) as box:
                proposal = run_tool_agent(card, cand.path, lambda _worktree, argv: box.run(argv))
        finally:
            client.close()  # the test owns the engine connection
            with warnings.catch_warnings():
                # docker-py's exec_start leaves its socket to the garbage collector (a sandbox-side
                # leak, reported); collect it here rather than blame whichever test runs next
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
        assert proposal is not None
        assert [e.path for e in proposal.edits] == ["inventory/stock.py", "inventory/version.py"]
        assert git(cand.path, "status", "--porcelain") == ""
        applied = apply_edits(cand.path, proposal)
        assert applied.created == ("inventory/version.py",)
        cand.commit("tool agent")
        assert cand.changed_paths() == ["inventory/stock.py", "inventory/version.py"]
        assert "-import os\n" in cand.diff()
        cand.keep("candidates")
