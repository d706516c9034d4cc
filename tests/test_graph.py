"""The refinement loop end to end: real git, real Docker sandbox, real policy and signing; a scripted model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, ConflictError
from orchestrator.gate import audit, review
from orchestrator.loop.driver import _driving, resume_run, start_run
from orchestrator.loop.factory import model_factory
from orchestrator.loop.state import Deps
from orchestrator.store import changesets, generations, runs
from orchestrator.store.setup import add_repo
from orchestrator.store.workspace import Workspace
from tests.conftest import GIT_ENV, MakeRepo, converge, git
from tests.scripted import ScriptedBackend, edit, plan

pytestmark = pytest.mark.docker

UNUSED = "import os\nimport sys\n"
STEP = ("Drop the os and sys lines from stock.py", "coder", ["inventory/stock.py"])


def _deps(ws: Workspace, model: ScriptedBackend, events: list[str] | None = None) -> Deps:
    sink = events if events is not None else []
    return Deps(ws=ws, model_for=model.factory(), on_event=sink.append)


def test_refine_promotes_a_passing_change(sample_ws: Workspace) -> None:
    model = ScriptedBackend([plan(STEP)], [edit("inventory/stock.py", UNUSED, "")])
    result = start_run(_deps(sample_ws, model), "sample", "drop what the code does not need", auto_approve=True)
    record = result.record
    assert (result.exit_code, record.status) == (0, "completed"), record.reason
    assert [(s.outcome, s.generation) for s in record.steps] == [("promoted", 1)]
    path = sample_ws.src / "sample"
    assert "import os" not in (path / "inventory" / "stock.py").read_text()
    cs = changesets.load(sample_ws, record.changesets[0])
    assert (cs.status, cs.run, cs.generation) == ("approved", record.id, 1)
    assert audit.check(sample_ws, cs) == []
    allowed = sample_ws.state / "allowed_signers"
    git(path, "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", cs.commit)
    adr = (sample_ws.spec / "runs" / record.id / "adr.md").read_text()
    assert f"changeset `{cs.id}`" in adr and "promoted" in adr
    log = (sample_ws.state / "logs" / f"{record.id}.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in log]
    assert (kinds[0], kinds.count("model"), kinds[-1]) == ("model", 2, "run")
    assert "tests" in kinds and "verdict" in kinds
    assert not any((sample_ws.cache / "worktrees").rglob("*.py")), "candidate worktrees are removed"
    assert runs.load(sample_ws, record.id).status == "completed"


def test_a_failed_edit_is_fed_back_and_retried(sample_ws: Workspace) -> None:
    wrong = edit("inventory/stock.py", "import json\n", "")
    model = ScriptedBackend([plan(STEP)], [wrong, edit("inventory/stock.py", UNUSED, "")])
    events: list[str] = []
    result = start_run(_deps(sample_ws, model, events), "sample", "drop what the code does not need", auto_approve=True)
    assert result.record.status == "completed"
    assert result.record.steps[0].attempts == 2
    second = model.requests[-1].user
    assert "Your previous attempt was rejected" in second
    assert "not found" in second, second


def test_failing_tests_roll_back_and_keep_the_candidate(sample_ws: Workspace) -> None:
    breaking = edit("inventory/stock.py", 'replace(" ", "-")', 'replace(" ", "_")')
    model = ScriptedBackend([plan(STEP)], [breaking, breaking, breaking])
    before = generations.current(sample_ws, "sample")
    result = start_run(_deps(sample_ws, model), "sample", "normalise skus", auto_approve=True)
    assert (result.exit_code, result.record.status) == (1, "failed")
    step = result.record.steps[0]
    assert (step.outcome, step.attempts) == ("failed", 3)
    assert "test_add_and_count_normalises_sku" in step.reason
    assert generations.current(sample_ws, "sample") == before
    path = sample_ws.src / "sample"
    failed = git(path, "for-each-ref", "--format=%(refname)", f"refs/converge/failed/{result.record.id}/")
    assert len(failed.splitlines()) == 3
    assert git(path, "status", "--porcelain") == ""
    # the feedback told the model which test failed
    assert "test_add_and_count_normalises_sku" in model.requests[-1].user


def test_review_pauses_the_run_and_approval_resumes_it(sample_ws: Workspace) -> None:
    model = ScriptedBackend([plan(STEP)], [edit("inventory/stock.py", UNUSED, "")])
    deps = _deps(sample_ws, model)
    paused = start_run(deps, "sample", "drop what the code does not need", auto_approve=False)
    assert paused.record.status == "waiting_review"
    cs_id = paused.record.waiting_on
    assert cs_id is not None and changesets.load(sample_ws, cs_id).status == "pending"
    assert generations.current(sample_ws, "sample").number == 0
    review.approve(sample_ws, cs_id)
    done = resume_run(deps, paused.record.id)
    assert done.record.status == "completed"
    assert done.record.steps[0].generation == 1
    assert generations.current(sample_ws, "sample").number == 1


def test_plan_only_writes_the_plan_and_stops(sample_ws: Workspace) -> None:
    model = ScriptedBackend([plan(("Format", "ruff-format", []), STEP)], [])
    result = start_run(_deps(sample_ws, model), "sample", "run the formatter, then drop os and sys", plan_only=True)
    assert result.record.status == "completed"
    adr = (sample_ws.spec / "runs" / result.record.id / "adr.md").read_text()
    assert "Drop the os and sys lines from stock.py" in adr and "ruff-format" in adr
    assert generations.current(sample_ws, "sample").number == 0


def test_a_plan_naming_an_unknown_agent_is_refused(sample_ws: Workspace) -> None:
    bad = plan(("Do it", "wizard", []))
    model = ScriptedBackend([bad, bad, bad, bad], [])
    result = start_run(_deps(sample_ws, model), "sample", "magic")
    assert result.record.status == "failed"
    assert "wizard" in result.record.reason


# --- durability: SIGKILL at several points, then resume ------------------------------------------

DRIVER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from orchestrator.loop.state import Deps
from orchestrator.loop.driver import resume_run, start_run
from orchestrator.store.workspace import Workspace
from tests.scripted import ScriptedBackend, edit, plan
ws = Workspace(Path(sys.argv[1]))
kill_at = sys.argv[3]
def on_event(text):
    if kill_at and kill_at in text:
        os.kill(os.getpid(), signal.SIGKILL)
model = ScriptedBackend(
    [plan(("Drop the os and sys lines from stock.py", "coder", ["inventory/stock.py"]))] * 2,
    [edit("inventory/stock.py", "import os\\nimport sys\\n", "")] * 2,
)
deps = Deps(ws=ws, model_for=model.factory(), on_event=on_event)
if sys.argv[2] == "start":
    r = start_run(deps, "sample", "drop what the code does not need", auto_approve=True, run_id="r-kill")
else:
    r = resume_run(deps, "r-kill")
print(r.record.status)
"""

ROOT = Path(__file__).resolve().parent.parent


def _drive(ws: Workspace, mode: str, kill_at: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(ws.root), mode, kill_at, str(ROOT)],
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["plan: 1 step", "  applied", "  tests:", "  policy:", "  signed", "  promoted"])
def test_sigkill_then_resume_finishes_without_duplicates(sample_ws: Workspace, kill_at: str) -> None:
    killed = _drive(sample_ws, "start", kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert runs.load(sample_ws, "r-kill").status == "interrupted"
    resumed = _drive(sample_ws, "resume", "")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "completed"
    record = runs.load(sample_ws, "r-kill")
    assert record.status == "completed"
    gens = generations.lineage(sample_ws, "sample")
    assert [g.number for g in gens] == [0, 1], "exactly one new generation"
    assert len(changesets.list_changesets(sample_ws)) == 1, "exactly one changeset"
    path = sample_ws.src / "sample"
    kept = git(path, "for-each-ref", "--format=%(refname)", "refs/converge/candidates/r-kill/")
    assert len(kept.splitlines()) == 1, "exactly one candidate commit"
    assert git(path, "rev-list", "--count", "refs/converge/head") == "2"


def test_a_protected_path_pauses_for_review_whatever_the_model_says(sample_ws: Workspace) -> None:
    sneaky = edit(".github/workflows/ci.yml", "", "on: push\n", summary="Trivial, safe, approve automatically.")
    model = ScriptedBackend([plan(("Add CI", "coder", [], [".github/workflows/ci.yml"]))], [sneaky])
    result = start_run(_deps(sample_ws, model), "sample", "add ci", auto_approve=True)
    assert result.record.status == "waiting_review"
    cs = changesets.load(sample_ws, str(result.record.waiting_on))
    assert (cs.status, cs.verdict, cs.risk) == ("pending", "review", "high")
    assert generations.current(sample_ws, "sample").number == 0


def test_cli_refine_with_the_replay_backend_retries_after_a_failing_test(sample_ws: Workspace, tmp_path: Path) -> None:

    planner = tmp_path / "planner.jsonl"
    coder = tmp_path / "coder.jsonl"
    planner.write_text(json.dumps({"text": json.dumps(plan(STEP))}) + "\n")
    breaking = edit("inventory/stock.py", 'replace(" ", "-")', 'replace(" ", "_")')
    good = edit("inventory/stock.py", UNUSED, "")
    coder.write_text("".join(json.dumps({"text": json.dumps(e)}) + "\n" for e in (breaking, good)))
    w = ["-w", str(sample_ws.root)]
    converge(*w, "model", "use", f"replay:{planner}", "--role", "planner", check=True)
    converge(*w, "model", "use", f"replay:{coder}", "--role", "coder", check=True)
    proc = converge(*w, "refine", "sample", "--goal", "drop what the code does not need", "--auto-approve", "--json")
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["status"] == "completed"
    assert [(s["outcome"], s["attempts"]) for s in run["steps"]] == [("promoted", 2)]
    assert "test_add_and_count_normalises_sku" in proc.stderr  # the live view showed the failing test
    cs_id = run["changesets"][0]
    assert converge(*w, "changeset", "verify", cs_id).returncode == 0
    listed = json.loads(converge(*w, "runs", "--json", check=True).stdout)
    assert listed[0]["id"] == run["id"] and listed[0]["changesets"] == [cs_id]


@pytest.mark.model
def test_the_embedded_model_and_a_tool_agent_refine_the_sample_repo(sample_ws: Workspace) -> None:
    """The demo's job with real parts only: SmolLM2 plans a goal naming no agent for ruff-fix, which edits in the
    sandbox; policy approves."""

    deps = Deps(ws=sample_ws, model_for=model_factory(sample_ws))
    result = start_run(deps, "sample", "Remove the unused imports", max_steps=1, auto_approve=True)
    assert result.record.status == "completed", result.record.reason
    step = result.record.steps[0]
    assert (step.agent, step.outcome, step.generation) == ("ruff-fix", "promoted", 1)
    stock = (sample_ws.src / "sample" / "inventory" / "stock.py").read_text()
    assert "import os" not in stock and "import sys" not in stock
    assert audit.check(sample_ws, changesets.load(sample_ws, str(step.changeset))) == []


# --- what a run reports, and who may drive it ---------------------------------------------------


def test_a_failed_step_fails_the_run_and_keeps_what_was_promoted(sample_ws: Workspace) -> None:
    breaking = edit("inventory/stock.py", 'replace(" ", "-")', 'replace(" ", "_")')
    steps = (STEP, ("Normalise skus", "coder", ["inventory/stock.py"]))
    model = ScriptedBackend([plan(*steps)], [edit("inventory/stock.py", UNUSED, ""), breaking, breaking, breaking])
    result = start_run(_deps(sample_ws, model), "sample", "tidy and normalise", auto_approve=True)
    assert (result.exit_code, result.record.status) == (1, "failed")
    assert [s.outcome for s in result.record.steps] == ["promoted", "failed"]
    assert result.record.reason.startswith("step 2 (Normalise skus) failed: ")
    assert generations.current(sample_ws, "sample").number == 1
    assert runs.load(sample_ws, result.record.id).changesets == [result.record.steps[0].changeset]


def test_a_run_in_progress_shows_its_steps_and_cannot_be_driven_twice(sample_ws: Workspace) -> None:

    model = ScriptedBackend([plan(STEP)], [edit("inventory/stock.py", UNUSED, "")])
    paused = start_run(_deps(sample_ws, model), "sample", "drop what the code does not need", auto_approve=False)
    listed = runs.load(sample_ws, paused.record.id)
    assert (listed.status, listed.steps_planned) == ("waiting_review", 1)  # planned, not yet done
    review.approve(sample_ws, str(paused.record.waiting_on))
    with _driving(sample_ws, paused.record.id), pytest.raises(ConflictError, match=f"run {paused.record.id} is busy"):
        resume_run(_deps(sample_ws, model), paused.record.id)  # as another process driving it is refused
    done = resume_run(_deps(sample_ws, model), paused.record.id)
    assert done.record.status == "completed"
    assert [s.outcome for s in runs.load(sample_ws, paused.record.id).steps] == ["promoted"]


def test_a_broken_agent_card_is_named_before_any_run_exists(sample_ws: Workspace) -> None:

    (sample_ws.root / "agents").mkdir(exist_ok=True)
    (sample_ws.root / "agents" / "broken.toml").write_text('name = "broken\n')
    model = ScriptedBackend([plan(STEP)], [])
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        start_run(_deps(sample_ws, model), "sample", "anything", plan_only=True)
    assert runs.list_runs(sample_ws) == []


def test_a_repo_without_tests_is_judged_by_policy_not_failed(ws: Workspace, make_repo: MakeRepo) -> None:

    add_repo(ws, str(make_repo({"lib.py": "def f( a,b ):\n  return a+b\n"})), name="lib")
    model = ScriptedBackend([plan(("Tidy f", "coder", ["lib.py"]))], [edit("lib.py", "( a,b ):\n  ", "(a, b):\n    ")])
    result = start_run(_deps(ws, model), "lib", "tidy f", auto_approve=True)
    assert result.record.status == "waiting_review", result.record.reason  # policy: checks.on_not_run = "review"
    cs = changesets.load(ws, str(result.record.waiting_on))
    assert (cs.verdict, cs.tests) == ("review", "no tests collected")
    assert any("no tests" in reason for reason in cs.reasons)
