"""`converge eval`: suites, results, figures; tiny suites run end to end with the Docker sandbox and a replay model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from pathlib import Path
from typing import TypeVar

import pytest

from orchestrator.errors import ModelError, UsageError
from orchestrator.evals import classify, stats, store, wiring
from orchestrator.evals.runner import EvalRequest, resume_eval, start_eval
from orchestrator.evals.store import EvalSpec, FailureClass, SuiteRef, TaskResult
from orchestrator.evals.suite import DEFAULT_CHECK, load_suite
from orchestrator.scale.local import LocalExecutor, bounded_workers, parse_size
from orchestrator.store.runs import RunRecord, StepOutcome
from orchestrator.store.workspace import Workspace
from tests.conftest import GIT_ENV, converge

# --- a tiny suite: one small repo, tasks with hidden checks, answers for the replay model ---------------

REPO = {
    "pyproject.toml": '[project]\nname = "calc"\nversion = "0.1.0"\n\n[tool.pytest.ini_options]\npythonpath = ["."]\n',
    "calc/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n\n\ndef last(items):\n    return items[len(items) - 2]\n",
    "tests/test_ops.py": "from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}
HIDDEN_LAST = {
    "tests/test_hidden.py": "from calc.ops import last\n\n\ndef test_last():\n    assert last([1, 2, 3]) == 3\n"
}
HIDDEN_ADD = {"tests/test_hidden.py": "from calc.ops import add\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n"}
PLAN = {
    "goal": "fix last",
    "steps": [{"title": "Fix last()", "agent": "coder", "targets": ["calc/ops.py"], "acceptance": ["tests pass"]}],
}
FIX = {"summary": "fix", "edits": [{"path": "calc/ops.py", "search": "len(items) - 2", "replace": "len(items) - 1"}]}
BREAK = {"summary": "oops", "edits": [{"path": "calc/ops.py", "search": "return a + b", "replace": "return a - b"}]}
MISS = {"summary": "miss", "edits": [{"path": "calc/ops.py", "search": "no such text", "replace": "x"}]}

Files = dict[str, str]
T = TypeVar("T")


def write(root: Path, files: Files) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def make_task(
    suite: Path, name: str, toml: str, repo: Files | None = REPO, check: Files | None = None, answers: list[object] = ()
) -> None:
    """A task directory under ``suite``, and its replay script under ``suite``'s sibling ``answers/``."""
    root = suite / name
    root.mkdir(parents=True)
    (root / "task.toml").write_text(toml)
    if repo is not None:
        write(root / "repo", repo)
    if check is not None:
        write(root / "check", check)
    script = suite.parent / "answers" / f"{name}.jsonl"
    script.parent.mkdir(exist_ok=True)
    script.write_text("".join(answer_line(a) for a in answers))


def answer_line(answer: object) -> str:
    """One scripted answer of the replay model, with what it pretends to cost."""
    return json.dumps({"text": json.dumps(answer), "tokens_in": 100, "tokens_out": 20, "seconds": 0.5}) + "\n"


def replay(tmp_path: Path) -> dict[str, str]:
    binding = f"replay:{tmp_path / 'answers'}"
    return {"planner": binding, "coder": binding}


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    """Three tasks: one the answers solve, one whose edits break the tests, one already done (invalid)."""
    suite = tmp_path / "suite"
    make_task(suite, "fix-last", 'goal = "last() returns the wrong item"\ntags = ["bug"]\n', check=HIDDEN_LAST,
              answers=[PLAN, FIX])  # fmt: skip
    make_task(suite, "break-add", 'goal = "fix last"\ntags = ["bug", "hard"]\n', check=HIDDEN_LAST,
              answers=[PLAN, BREAK, BREAK, BREAK])  # fmt: skip
    make_task(suite, "already-done", 'goal = "make add work"\n', check=HIDDEN_ADD, answers=[PLAN])
    return suite


# --- suites: the contract and its errors ---------------------------------------------------------------


def test_a_suite_names_each_broken_task_and_key_and_loads_the_others(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    make_task(suite, "good", 'goal = "fix it"\n', check=HIDDEN_LAST)
    make_task(suite, "no-goal", 'tags = ["x"]\n', check=HIDDEN_LAST)
    make_task(suite, "bad-key", 'goal = "fix it"\ncolour = "red"\n', check=HIDDEN_LAST)
    make_task(suite, "no-repo", 'goal = "fix it"\n', repo=None, check=HIDDEN_LAST)
    make_task(suite, "no-check", 'goal = "fix it"\n')
    make_task(suite, "bad-type", 'goal = "fix it"\ntimeout = "soon"\n', check=HIDDEN_LAST)
    (suite / "no-toml").mkdir()
    found = load_suite(suite)
    assert [t.name for t in found.tasks] == ["good"]
    errors = {b.name: b.error for b in found.broken}
    assert errors["no-goal"] == "task no-goal: task.toml: goal: Field required"
    assert errors["bad-key"].startswith("task bad-key: task.toml: colour: unknown key (known: goal, timeout")
    assert errors["no-repo"].startswith("task no-repo: repo/ missing")
    assert errors["no-check"].startswith("task no-check: check missing: give `check` in task.toml or hidden tests")
    assert errors["bad-type"].startswith("task bad-type: task.toml: timeout: Input should be a valid number")
    assert errors["no-toml"].startswith("task no-toml: task.toml missing")
    good = found.tasks[0]
    assert (good.spec.timeout, good.spec.max_steps, good.spec.tags, good.spec.check) == (900, 3, [], DEFAULT_CHECK)


def test_a_suite_whose_tasks_are_all_broken_is_refused_with_each_reason(ws: Workspace, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    make_task(suite, "no-goal", 'tags = ["x"]\n', check=HIDDEN_LAST)
    proc = converge("-w", str(ws.root), "eval", "run", str(suite), "--json")
    assert proc.returncode == 2, proc.stderr
    assert "task no-goal: task.toml: goal: Field required" in proc.stderr
    assert "has no runnable task" in proc.stderr and json.loads(proc.stdout)["error"]["exit"] == 2


def test_eval_list_shows_the_builtin_suite_and_the_workspace_tests(ws: Workspace) -> None:
    make_task(ws.root / "test", "mine", 'goal = "fix it"\n', check=HIDDEN_LAST)
    listed = json.loads(converge("-w", str(ws.root), "eval", "list", "--json", check=True).stdout)
    by_name = {s["name"]: s for s in listed["suites"]}
    assert by_name["refactor"]["builtin"] and by_name["refactor"]["tasks"] >= 24
    assert (by_name["test"]["tasks"], by_name["test"]["broken"]) == (1, 0)
    assert listed["evals"] == []


# --- figures -------------------------------------------------------------------------------------------


def test_wilson_interval_and_the_summary_per_tag() -> None:
    assert stats.wilson(0, 0) is None
    low, high = stats.wilson(0, 10) or (0, 0)
    assert (round(low, 4), round(high, 4)) == (0.0, 0.2775)
    low, high = stats.wilson(7, 10) or (0, 0)
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)
    spec = _spec("e1", ["a", "b", "c"])
    results = [
        TaskResult(task="a", tags=["tool"], solved=True, seconds=1.0, tokens_in=5),
        TaskResult(task="b", tags=["model"], failure=FailureClass.TESTS_FAILED, seconds=2.0),
        TaskResult(task="c", tags=["model"], invalid=True, seconds=0.5),
    ]
    summary = stats.summarize(spec, results)
    assert (summary.solved, summary.valid, summary.invalid, summary.complete) == (1, 2, 1, True)
    assert summary.rate.rate == 0.5 and summary.by_tag["tool"].rate == 1.0 and summary.by_tag["model"].valid == 1
    assert summary.failures == {"tests_failed": 1}
    assert (summary.seconds, summary.tokens_in) == (3.5, 5)


def test_compare_names_the_flipped_tasks_with_a_paired_test() -> None:
    a, b = _spec("ea", ["t1", "t2", "t3", "t4"]), _spec("eb", ["t1", "t2", "t3", "t4"])
    ra = [TaskResult(task="t1", solved=True), TaskResult(task="t2"), TaskResult(task="t3"), TaskResult(task="t4")]
    rb = [TaskResult(task="t1"), TaskResult(task="t2", solved=True), TaskResult(task="t3", solved=True),
          TaskResult(task="t4", invalid=True)]  # fmt: skip
    found = stats.compare(a, ra, b, rb)
    assert (found.now_solved, found.now_unsolved) == (["t2", "t3"], ["t1"])
    assert (found.rate_a.rate, found.rate_b.rate) == (0.25, round(2 / 3, 4))
    assert found.p_value == 1.0  # 2 against 1 is no evidence
    assert stats.mcnemar_exact(10, 0) == 0.002
    doc = found.to_json()
    assert doc["flipped"] == {"solved": ["t2", "t3"], "unsolved": ["t1"]}
    assert doc["tasks"][3] == {"task": "t4", "a": {"solved": 0, "valid": 1}, "b": None, "flipped": None}


def _spec(eval_id: str, tasks: list[str]) -> EvalSpec:
    suite = SuiteRef(name="s", path="/s")
    return EvalSpec(id=eval_id, created="2024", suite=suite, models={}, tasks=dict.fromkeys(tasks, "d"))


def test_a_result_line_torn_by_a_kill_is_dropped(ws: Workspace) -> None:
    spec = _spec("e-torn", ["a", "b"])
    store.create(ws, spec)
    store.append_result(ws, spec.id, TaskResult(task="a", solved=True))
    with (store.eval_dir(ws, spec.id) / store.RESULTS_FILE).open("a") as handle:
        handle.write('{"task": "b", "sol')
    assert [r.task for r in store.load_results(ws, spec.id)] == ["a"]
    with pytest.raises(UsageError, match="unknown eval 'nope'"):
        store.load_spec(ws, "nope")


def test_model_list_shows_each_models_latest_builtin_solve_rate(ws: Workspace) -> None:
    def record(eval_id: str, created: str, solved: list[bool], tags: list[str] | None = None) -> None:
        spec = _spec(eval_id, [f"t{n}" for n in range(len(solved))]).model_copy(
            update={"created": created, "models": {"planner": "default", "coder": "default"}, "tags": tags or [],
                    "suite": SuiteRef(name="refactor", path="/x", builtin=True)}
        )  # fmt: skip
        store.create(ws, spec)
        results = [TaskResult(task=f"t{n}", solved=ok) for n, ok in enumerate(solved)]
        store.save_summary(ws, stats.summarize(spec, results))

    record("e-old", "2024-01-01T00:00:00+00:00", [True, True])
    record("e-new", "2024-02-01T00:00:00+00:00", [True, False, False, False])
    record("e-part", "2024-03-01T00:00:00+00:00", [True], tags=["tool"])  # a part of the suite: not a score
    listing = json.loads(converge("-w", str(ws.root), "model", "list", "--json", check=True).stdout)
    score = next(m for m in listing["models"] if m["name"] == "default")["eval"]
    assert (score["id"], score["rate"], score["solved"], score["valid"]) == ("e-new", 0.25, 1, 4)
    shown = converge("-w", str(ws.root), "model", "list", env={"COLUMNS": "200"}, check=True).stdout
    assert "25% (1/4) e-new" in shown
    history = json.loads(converge("-w", str(ws.root), "stats", "--json", check=True).stdout)["evals"]
    assert [(e["id"], e["solved"], e["tags"]) for e in history] == [
        ("e-part", 1, ["tool"]), ("e-new", 1, []), ("e-old", 2, [])]  # fmt: skip


# --- failure classes ----------------------------------------------------------------------------------


def _record(status: str, reason: str = "", steps: list[StepOutcome] | None = None) -> RunRecord:
    return RunRecord.model_validate({"id": "r", "repo": "x", "goal": "g", "status": status, "reason": reason,
                                     "steps": steps or []})  # fmt: skip


def _step(outcome: str, attempts: int = 3, reason: str = "why") -> StepOutcome:
    return StepOutcome.model_validate(
        {"step": 1, "title": "t", "agent": "coder", "outcome": outcome, "attempts": attempts, "reason": reason}
    )


REJECT = {"kind": "verdict", "step": 1, "decision": "reject"}


@pytest.mark.parametrize(
    ("record", "events", "plan", "expected"),
    [
        (_record("completed"), [], True, None),
        (_record("failed", "model 'default' gave no valid answer"), [], False, FailureClass.PLAN_INVALID),
        (_record("failed", "wall time budget of 60s spent", [_step("promoted")]), [], True, FailureClass.BUDGET_SPENT),
        (_record("failed", "x", [_step("failed")]), [{"kind": "model", "step": 1, "attempt": 3}], True,
         FailureClass.EDIT_NOT_APPLICABLE),
        (_record("failed", "x", [_step("failed")]), [{"kind": "tests", "step": 1, "attempt": 3}], True,
         FailureClass.TESTS_FAILED),
        (_record("failed", "x", [_step("failed", 2)]),
         [{"kind": "tests", "step": 1, "attempt": 2}, {**REJECT, "attempt": 2}],
         True, FailureClass.POLICY_REJECTED),
        (_record("failed", "x", [_step("failed", 2)]),
         [{**REJECT, "attempt": 1}, {"kind": "model", "step": 1, "attempt": 2}],
         True, FailureClass.EDIT_NOT_APPLICABLE),
        (_record("waiting_review"), [{"kind": "verdict", "decision": "review", "reasons": ["protected path"]}], True,
         FailureClass.POLICY_REJECTED),
        (_record("failed", "sandbox engine down", []), [], True, FailureClass.ERROR),
    ],
)  # fmt: skip
def test_failure_classes(
    record: RunRecord, events: list[dict[str, object]], plan: bool, expected: FailureClass | None
) -> None:
    found, reason = classify.classify_run(record, events, plan)
    assert found == expected
    assert (reason == "") == (expected is None) and "\n" not in reason


# --- models of an eval --------------------------------------------------------------------------------


def test_model_overrides_are_checked(ws: Workspace, tmp_path: Path) -> None:
    assert wiring.parse_overrides(["coder=default", " planner = default "]) == {
        "coder": "default",
        "planner": "default",
    }
    with pytest.raises(UsageError, match="write it as ROLE=MODEL"):
        wiring.parse_overrides(["coder"])
    with pytest.raises(UsageError, match="no agent card runs on role 'cooder'"):
        wiring.resolve_bindings(ws, {"cooder": "default"})
    with pytest.raises(UsageError, match="unknown model 'nope'"):
        wiring.resolve_bindings(ws, {"coder": "nope"})
    (tmp_path / "answers").mkdir()
    bindings = wiring.resolve_bindings(ws, {"coder": f"replay:{tmp_path / 'answers'}"})
    assert bindings["coder"] == f"replay:{tmp_path / 'answers'}" and bindings["planner"] == "default"
    with pytest.raises(ModelError, match="no replay script for task t1"):
        wiring.task_models(ws, bindings, "t1", tmp_path / "calls.jsonl")


# --- the local executor -------------------------------------------------------------------------------


def test_workers_are_bounded_by_cores_and_sandbox_memory() -> None:
    gib = 2**30
    assert parse_size("2g") == 2 * gib and parse_size("512m") == 512 * 2**20
    assert bounded_workers(8, 2 * gib, cores=4, memory=64 * gib) == 4
    assert bounded_workers(8, 2 * gib, cores=16, memory=5 * gib) == 2
    assert bounded_workers(3, 2 * gib, cores=16, memory=1 * gib) == 1
    with pytest.raises(UsageError, match="--parallel 0"):
        bounded_workers(0, gib)


def test_the_local_executor_runs_jobs_and_hands_back_results_and_errors() -> None:
    def square(n: int) -> int:
        if n == 3:
            raise ValueError("three")
        return n * n

    with LocalExecutor(2) as pool:
        futures = {pool.submit(square, n): n for n in range(5)}
        done = {futures[f]: (f.exception() or f.result()) for f in as_completed(futures)}
    assert {n: v for n, v in done.items() if n != 3} == {0: 0, 1: 1, 2: 4, 4: 16}
    assert str(done[3]) == "three"
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(square, 1)


# --- end to end: Docker sandbox, the full gate, a replay model ------------------------------------------


@pytest.mark.docker
def test_a_tiny_suite_end_to_end(ws: Workspace, tiny_suite: Path, tmp_path: Path) -> None:
    make_task(tiny_suite, "broken", 'goal = "x"\ncolour = "red"\n', check=HIDDEN_LAST)
    args = ["-w", str(ws.root), "eval", "run", str(tiny_suite), "--json"]
    models = [f"--model={role}={binding}" for role, binding in replay(tmp_path).items()]
    proc = converge(*args, *models)
    assert proc.returncode == 2, proc.stderr  # the broken task is bad input; the others ran
    assert "task broken: task.toml: colour: unknown key" in proc.stderr
    doc = json.loads(proc.stdout)
    by_task = {r["task"]: r for r in doc["results"]}
    assert sorted(by_task) == ["already-done", "break-add", "fix-last"]
    for r in doc["results"]:
        assert {"task", "solved", "invalid", "failure", "seconds", "tokens_in", "tokens_out"} <= set(r)
    fixed, broke, done = by_task["fix-last"], by_task["break-add"], by_task["already-done"]
    assert (fixed["solved"], fixed["failure"], fixed["agents"], fixed["generation"], fixed["check_exit"]) == (
        True, None, ["coder"], 1, 0)  # fmt: skip
    assert (fixed["tokens_in"], fixed["tokens_out"], fixed["model_seconds"]) == (200, 40, 1.0)  # plan + edits
    assert fixed["seconds"] >= fixed["run_seconds"] > 0
    assert (broke["solved"], broke["failure"], broke["attempts"]) == (False, "tests_failed", 3)
    assert "test_add" in broke["reason"]
    assert (done["invalid"], done["solved"], done["run"]) == (True, False, None)
    summary = doc["summary"]
    assert (summary["solved"], summary["valid"], summary["invalid"], summary["complete"]) == (1, 2, 1, True)
    assert summary["by_tag"]["hard"]["rate"] == 0.0 and summary["failures"] == {"tests_failed": 1}
    assert doc["broken"] == {"broken": "task broken: task.toml: colour: unknown key (known: goal, timeout, "
                                       "max_steps, tags, check)"}  # fmt: skip
    folder = ws.cache / "eval" / doc["id"]
    assert len((folder / "results.jsonl").read_text().splitlines()) == 3
    assert json.loads((folder / "summary.json").read_text())["solved"] == 1
    assert not any((folder / "work").iterdir()), "throwaway workspaces are removed"
    assert ws.repos() == [], "the user's workspace gained no repo"
    shown = converge("-w", str(ws.root), "eval", "show", doc["id"], check=True)
    assert "fix-last" in shown.stdout and "tests_failed" in shown.stdout and "50%" in shown.stdout


@pytest.mark.docker
def test_repeats_parallel_runs_and_a_comparison(ws: Workspace, tiny_suite: Path, tmp_path: Path) -> None:
    suite = load_suite(tiny_suite)
    first = start_eval(ws, EvalRequest(suite=suite, models=replay(tmp_path), tags=["bug"]))
    assert [r.task for r in first.results] == ["break-add", "fix-last"]
    # a second eval in which the hard task's answers are fixed too
    (tmp_path / "answers" / "break-add.jsonl").write_text(answer_line(PLAN) + answer_line(FIX))
    seen: list[str] = []
    second = start_eval(
        ws,
        EvalRequest(suite=suite, models=replay(tmp_path), tags=["bug"], repeat=2, parallel=2),
        on_result=lambda result, _summary: seen.append(result.task),
    )
    assert sorted(seen) == ["break-add", "break-add", "fix-last", "fix-last"]
    assert [(r.task, r.trial, r.solved) for r in second.results] == [
        ("break-add", 0, True), ("fix-last", 0, True), ("break-add", 1, True), ("fix-last", 1, True)]  # fmt: skip
    proc = converge("-w", str(ws.root), "eval", "compare", first.spec.id, second.spec.id, "--json", check=True)
    found = json.loads(proc.stdout)
    assert found["flipped"] == {"solved": ["break-add"], "unsolved": []}
    assert (found["a"]["rate"], found["b"]["rate"]) == (0.5, 1.0)
    stats_doc = json.loads(converge("-w", str(ws.root), "stats", "--json", check=True).stdout)
    assert [e["id"] for e in stats_doc["evals"]] == [second.spec.id, first.spec.id]


@pytest.mark.docker
def test_invalid_tasks_are_found_before_any_run(ws: Workspace, tiny_suite: Path, tmp_path: Path) -> None:
    suite = load_suite(tiny_suite)
    outcome = start_eval(ws, EvalRequest(suite=suite, models=replay(tmp_path), tags=[]))
    done = next(r for r in outcome.results if r.task == "already-done")
    assert (done.invalid, done.failure, done.run, done.tokens_out) == (True, None, None, 0)
    # the start-tree verdict is remembered for the next eval of the same task files
    again = start_eval(ws, EvalRequest(suite=suite, models=replay(tmp_path), tags=[]))
    assert next(r for r in again.results if r.task == "already-done").check_seconds == 0.0


DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from orchestrator.cli import main
sys.argv = ["converge", "-w", sys.argv[1], "eval", "run", sys.argv[2], "--model", "planner=" + sys.argv[3],
            "--model", "coder=" + sys.argv[3], "--tag", "bug"]
main()
"""


@pytest.mark.docker
@pytest.mark.slow
def test_resume_after_sigkill_runs_only_the_unfinished_tasks(ws: Workspace, tiny_suite: Path, tmp_path: Path) -> None:
    make_task(tiny_suite, "fix-last-too", 'goal = "fix last"\ntags = ["bug"]\n', check=HIDDEN_LAST, answers=[PLAN, FIX])
    binding = replay(tmp_path)["coder"]
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-c", DRIVER, str(ws.root), str(tiny_suite), binding, str(root)]
    with subprocess.Popen(
        argv, env={**os.environ, **GIT_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        results = _wait_for(lambda: next((ws.cache / "eval").glob("e*/results.jsonl"), None), proc)
        _wait_for(lambda: results.read_text().strip() or None, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = results.read_text().splitlines()
    assert 1 <= len(finished) < 3
    eval_id = results.parent.name
    leftover = list((results.parent / "work").iterdir())
    resumed = resume_eval(ws, eval_id)
    lines = results.read_text().splitlines()
    assert lines[: len(finished)] == finished, "finished results are kept as they were"
    assert sorted(json.loads(line)["task"] for line in lines) == ["break-add", "fix-last", "fix-last-too"]
    assert resumed.summary.complete and resumed.summary.solved == 2
    assert not any((results.parent / "work").iterdir()), f"the kill's leftovers are cleared: {leftover}"
    status = json.loads(converge("-w", str(ws.root), "eval", "list", "--json", check=True).stdout)
    assert status["evals"][0]["summary"]["complete"]


def _wait_for(found: Callable[[], T | None], proc: subprocess.Popen[bytes], patience: float = 120.0) -> T:
    """Poll ``found`` until it gives something (the eval process must still be running)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(
                f"the eval ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    raise AssertionError("the eval made no progress")
