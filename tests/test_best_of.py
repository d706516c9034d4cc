"""Best of N without Docker or a model: real git, policy and signing, a scripted model, and a scripted
sandbox that answers each candidate's tests by that candidate's own tree. Ranking, the winner alone
signed, the losers kept and named in the ADR, retries when none passes, and resume after a crash or a
SIGKILL verifying no candidate twice and signing no second winner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.loop.adr import adr_path
from orchestrator.sandbox.base import SandboxSpec
from orchestrator.sandbox.scripted import PytestRun, TreeScript, no_change
from orchestrator.sandbox.scripted import ScriptedBackend as ScriptedSandbox
from orchestrator.store import changesets, generations, runs
from orchestrator.store.workspace import Workspace
from tests.conftest import GIT_ENV, ROOT, git
from tests.driving import RunResult, audit_problems, resume_run, scripted_deps, start_run
from tests.scripted import ScriptedBackend as ScriptedModel
from tests.scripted import edit, plan

STOCK = "inventory/stock.py"
UNUSED = "import os\nimport sys\n"
STEP = ("Drop the os and sys lines from stock.py", "coder", [STOCK])
SMALL = edit(STOCK, UNUSED, "", summary="drop both imports")
LARGER = edit(STOCK, UNUSED, "# no imports needed here\n", summary="drop them, say why")
BROKEN = edit(STOCK, UNUSED, "import os\nimport sys\nBROKEN = True\n", summary="breaks the tests")
SECRET = edit(STOCK, UNUSED, 'API_KEY = "sk_live_0123456789abcdefghijklmnop"\n', summary="leaks a key")
PASSING = PytestRun(passed=["tests/test_stock.py::test_add_and_count_normalises_sku"])
FAILING = PytestRun(failed=["tests/test_stock.py::test_add_and_count_normalises_sku"])


class Crash(Exception):
    """The process dies here (not a ConvergeError: nothing in the loop handles it)."""


class Sandboxes:
    """A scripted sandbox per verification, answering by the candidate's tree and noting which one it was."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, str]] = set()  # (session, the candidate's stock.py)
        self.backend = ScriptedSandbox(script=no_change, session_script=self._session)

    def _session(self, spec: SandboxSpec) -> TreeScript:
        number = len(self.backend.sessions) + 1
        return TreeScript(spec.worktree, lambda tree: self._decide(number, tree))

    def _decide(self, session: int, tree: Path) -> PytestRun:
        text = (tree / STOCK).read_text()
        self.seen.add((session, text))
        return FAILING if "BROKEN" in text else PASSING

    def verified(self) -> list[int]:
        """How many sandboxes each candidate's tests ran in, most first."""
        return sorted(Counter(text for _session, text in self.seen).values(), reverse=True)


def _run(
    ws: Workspace, model: ScriptedModel, sandbox: Sandboxes, n: int, on_event: Callable[[str], None] | None = None
) -> RunResult:
    deps = scripted_deps(ws, model, sandbox.backend, on_event)
    return start_run(
        deps, "sample", "drop what the code does not need", auto_approve=True, run_id="r-best", candidates=n
    )


def _refs(ws: Workspace, prefix: str) -> list[str]:
    return git(ws.src / "sample", "for-each-ref", "--format=%(refname)", prefix).splitlines()


def test_the_best_of_three_is_signed_and_the_others_are_kept_and_named(sample_ws: Workspace) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [BROKEN, LARGER, SMALL]), Sandboxes()
    result = _run(sample_ws, model, sandbox, 3)
    record = result.record
    assert (result.exit_code, record.status) == (0, "completed"), record.reason
    assert [(s.outcome, s.attempts, s.generation) for s in record.steps] == [("promoted", 1, 1)]
    [cs] = changesets.list_changesets(sample_ws)
    assert cs.id == record.changesets[0] and audit_problems(sample_ws, cs) == []
    assert "# no imports" not in (sample_ws.src / "sample" / STOCK).read_text(), "the smaller diff won"
    assert "import os" not in (sample_ws.src / "sample" / STOCK).read_text()
    kept = _refs(sample_ws, "refs/converge/candidates/r-best/")
    assert sorted(r.rsplit("/", 1)[1] for r in kept) == ["1c1-1", "1c2-1", "1c3-1"]
    assert _refs(sample_ws, "refs/converge/failed/") == []
    assert sandbox.verified() == [1, 1, 1, 1], "each candidate verified once, and the base once (its run is cached)"
    edits = model.requests[1:]
    assert len({(r.seed, r.temperature) for r in edits}) == 3, "each candidate sampled differently"
    adr = adr_path(sample_ws, "r-best").read_text()
    assert "candidate 3 of 3 went on" in adr
    assert "candidate 1 (`1c1-1`; tests 0 passed, 1 failed" in adr and "lost: tests: 0 passed, 1 failed" in adr
    assert "lost: larger diff: 3 lines against 2 for candidate 3" in adr
    assert sandbox.backend.open_sessions == 0


def test_a_passing_candidate_the_policy_rejects_loses_to_one_it_approves(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(STEP)], [SECRET, LARGER])
    result = _run(sample_ws, model, Sandboxes(), 2)
    assert result.record.status == "completed", result.record.reason
    assert "# no imports needed here" in (sample_ws.src / "sample" / STOCK).read_text()
    assert "API_KEY" not in (sample_ws.src / "sample" / STOCK).read_text()
    assert len(changesets.list_changesets(sample_ws)) == 1
    assert "lost: policy: reject (" in adr_path(sample_ws, "r-best").read_text()


def test_when_no_candidate_passes_the_attempt_is_retried_with_the_failure(sample_ws: Workspace) -> None:
    model = ScriptedModel([plan(STEP)], [BROKEN, BROKEN, SMALL, BROKEN])
    result = _run(sample_ws, model, Sandboxes(), 2)
    assert result.record.status == "completed", result.record.reason
    assert [(s.outcome, s.attempts) for s in result.record.steps] == [("promoted", 2)]
    assert "These tests fail after your change" in model.requests[3].user, "the next attempt hears why"
    failed = sorted(r.rsplit("/", 1)[1] for r in _refs(sample_ws, "refs/converge/failed/r-best/"))
    assert failed == ["1c1-1", "1c2-1"], "an attempt nobody won keeps its candidates as failed"
    assert changesets.load(sample_ws, result.record.changesets[0]).attempt == 2
    assert "none of 2 candidates could go on" in adr_path(sample_ws, "r-best").read_text()


def test_candidates_whose_edits_do_not_apply_lose_and_the_one_that_applies_wins(sample_ws: Workspace) -> None:
    stale = edit(STOCK, "import json\n", "")
    result = _run(sample_ws, ScriptedModel([plan(STEP)], [stale, SMALL]), Sandboxes(), 2)
    assert result.record.status == "completed", result.record.reason
    assert "failed: the search text was not found" in adr_path(sample_ws, "r-best").read_text()


def test_one_candidate_runs_the_single_candidate_path(sample_ws: Workspace) -> None:
    result = _run(sample_ws, ScriptedModel([plan(STEP)], [SMALL]), Sandboxes(), 1)
    assert result.record.status == "completed", result.record.reason
    assert [r.rsplit("/", 1)[1] for r in _refs(sample_ws, "refs/converge/candidates/r-best/")] == ["1-1"]
    assert "## Candidates" not in adr_path(sample_ws, "r-best").read_text()


# --- resume: nothing verified twice, no second winner -------------------------------------------------


def _crash_once_at(prefix: str) -> Callable[[str], None]:
    seen: list[str] = []

    def on_event(text: str) -> None:
        if text.startswith(prefix) and not seen:
            seen.append(text)
            raise Crash(text)

    return on_event


@pytest.mark.parametrize(
    "moment", ["step 1 attempt 1: coder proposes candidate 3", "  candidate 2: tests:", "  candidate 3: goes on"]
)
def test_a_crash_then_resume_verifies_no_candidate_twice(sample_ws: Workspace, moment: str) -> None:
    model, sandbox = ScriptedModel([plan(STEP)], [BROKEN, LARGER, SMALL]), Sandboxes()
    with pytest.raises(Crash):
        _run(sample_ws, model, sandbox, 3, on_event=_crash_once_at(moment))
    done = resume_run(scripted_deps(sample_ws, model, sandbox.backend), "r-best")
    assert done.record.status == "completed", done.record.reason
    assert sandbox.verified() == [1, 1, 1, 1], "each candidate verified once, and the base once (its run is cached)"
    assert len(changesets.list_changesets(sample_ws)) == 1
    assert [g.number for g in generations.lineage(sample_ws, "sample")] == [0, 1]
    assert len(model.requests) == 4, "the planner once, each candidate once"


DRIVER = """
import os, signal, sys, uuid
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from orchestrator.loop.state import Deps
from orchestrator.loop.driver import resume_run, start_run
from orchestrator.sandbox.scripted import PytestRun, TreeScript
from orchestrator.sandbox.scripted import ScriptedBackend as ScriptedSandbox
from orchestrator.store.workspace import Workspace
from tests.scripted import ScriptedBackend, edit, plan
ws, log = Workspace(Path(sys.argv[1])), Path(sys.argv[1]) / "verified.log"
kill_at = sys.argv[3]
def on_event(text):
    if kill_at and text.startswith(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
def decide(session, tree):
    text = (tree / "inventory/stock.py").read_text()
    with log.open("a") as handle:
        kind = "broken" if "BROKEN" in text else "base" if unused in text else "good"
        handle.write(f"{session} {kind}\\n")
    failing = "BROKEN" in text
    return PytestRun(**{"failed" if failing else "passed": ["tests/test_stock.py::test_value_sums_prices"]})
def session(spec):
    name = uuid.uuid4().hex
    return TreeScript(spec.worktree, lambda tree: decide(name, tree))
unused = "import os\\nimport sys\\n"
model = ScriptedBackend(
    [plan(("Drop the os and sys lines from stock.py", "coder", ["inventory/stock.py"]))],
    [edit("inventory/stock.py", unused, unused + "BROKEN = 1\\n"), edit("inventory/stock.py", unused, "")],
)
sandbox = ScriptedSandbox(script=lambda argv: None, session_script=session)
deps = Deps(ws=ws, model_for=model.factory(), on_event=on_event, sandbox_backend=sandbox)
if sys.argv[2] == "start":
    r = start_run(deps, "sample", "drop what the code does not need", auto_approve=True, run_id="r-kill", candidates=2)
else:
    r = resume_run(deps, "r-kill")
print(r.record.status)
"""


def _drive(ws: Workspace, mode: str, kill_at: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(ws.root), mode, kill_at, str(ROOT)],
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["  candidate 2: goes on", "  policy:", "  signed"])
def test_sigkill_then_resume_signs_one_winner_and_verifies_each_candidate_once(
    sample_ws: Workspace, kill_at: str
) -> None:
    killed = _drive(sample_ws, "start", kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _drive(sample_ws, "resume", "")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "completed"), resumed.stderr
    runs_of = set((sample_ws.root / "verified.log").read_text().splitlines())  # (sandbox, candidate) once each
    verified = Counter(line.split()[1] for line in runs_of)
    assert verified == {"broken": 1, "good": 1, "base": 1}, "no candidate verified twice, the base's run cached"
    [cs] = changesets.list_changesets(sample_ws)
    assert (cs.status, cs.run, cs.step, cs.attempt) == ("approved", "r-kill", 1, 1)
    assert cs.id == changesets.changeset_id("sample", cs.base, "r-kill/1c2/1"), "the winner's own key"
    assert [g.number for g in generations.lineage(sample_ws, "sample")] == [0, 1]
    assert runs.load(sample_ws, "r-kill").status == "completed"
