"""Loops in parallel: two refinement runs in separate processes on one workspace, and the shared model budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.errors import ModelError
from orchestrator.gate import audit
from orchestrator.models import budget, runtime
from orchestrator.models.llama import ModelManager
from orchestrator.store import changesets, generations, runs
from orchestrator.store.setup import add_repo
from orchestrator.store.workspace import Workspace
from tests.conftest import GIT_ENV, MakeRepo, git

ROOT = Path(__file__).resolve().parent.parent
MODEL = "a" * 64
GIB = 2**30

# --- two `refine` loops at once ----------------------------------------------------------------

LOOP = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from orchestrator.loop.state import Deps
from orchestrator.loop.driver import start_run
from orchestrator.store.workspace import Workspace
from tests.scripted import ScriptedBackend, edit, plan
ws, repo = Workspace(Path(sys.argv[1])), sys.argv[2]
model = ScriptedBackend(
    [plan(("Remove unused imports from stock.py", "coder", ["inventory/stock.py"]))],
    [edit("inventory/stock.py", "import os\\nimport sys\\n", "")],
)
start = time.time()
r = start_run(Deps(ws=ws, model_for=model.factory()), repo, "drop os and sys from stock.py", auto_approve=True)
print(r.record.id, r.record.status, start, time.time())
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **GIT_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.docker
def test_two_refine_loops_run_at_once_on_different_repos(ws: Workspace, make_repo: MakeRepo) -> None:
    for name in ("alpha", "beta"):
        add_repo(ws, str(make_repo(name=f"{name}-src")), name=name)
    procs = {name: _spawn(LOOP, str(ws.root), name, str(ROOT)) for name in ("alpha", "beta")}
    outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    spans = {}
    for name, (out, err) in outputs.items():
        assert procs[name].returncode == 0, err
        run_id, status, start, end = out.split()
        assert status == "completed", err
        spans[name] = (run_id, float(start), float(end))
    (a_id, a_start, a_end), (b_id, b_start, b_end) = spans["alpha"], spans["beta"]
    assert max(a_start, b_start) < min(a_end, b_end), "the two runs overlapped in time"

    for name, run_id in (("alpha", a_id), ("beta", b_id)):
        record = runs.load(ws, run_id)
        assert (record.repo, record.status) == (name, "completed")
        gens = generations.lineage(ws, name)
        assert [(g.number, g.parent, g.status) for g in gens] == [(0, None, "superseded"), (1, 0, "current")]
        mine = changesets.list_changesets(ws, repo=name)
        assert [(c.run, c.status, c.generation) for c in mine] == [(run_id, "approved", 1)]
        assert gens[1].changesets == (mine[0].id,) and gens[1].commit == mine[0].commit
        assert mine[0].base == gens[0].commit
        path = ws.src / name
        assert git(path, "rev-parse", "refs/converge/head") == gens[1].commit
        assert git(path, "rev-list", "--count", "refs/converge/head") == "2"
        assert "import os" not in (path / "inventory" / "stock.py").read_text()
        assert audit.check(ws, mine[0]) == []


# --- the shared model budget across processes --------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from orchestrator.models import budget
state, go = Path(sys.argv[2]), Path(sys.argv[3])
args = [int(a) for a in sys.argv[5:8]]
r = budget.reserve(state, __import__("os").getpid(), sys.argv[4], args[0], args[1], shared=args[2])
print("held", flush=True)
while not go.exists():
    time.sleep(0.05)
budget.release(r)
print("released", time.time(), flush=True)
"""


Hold = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def hold() -> Iterator[Hold]:
    """Start a process that reserves (state, go, model, bytes, budget, shared) and releases when ``go`` exists."""
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(state: Path, go: Path, model: str, nbytes: int, budget: int, shared: int = 0) -> subprocess.Popen[str]:
        proc = _spawn(HOLDER, str(ROOT), str(state), str(go), model, str(nbytes), str(budget), str(shared))
        started.append((proc, go))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held", proc.stderr.read() if proc.stderr else ""
        return proc

    yield start
    for proc, go in started:
        go.touch()
        proc.communicate(timeout=30)


def test_a_reservation_waits_until_another_process_releases(tmp_path: Path, hold: Hold) -> None:
    go = tmp_path / "go"
    holder = hold(tmp_path, go, MODEL, 6 * GIB, 10 * GIB, 5 * GIB)
    assert [(e.pid, e.bytes) for e in budget.holders(tmp_path)] == [(holder.pid, 6 * GIB)]
    # the same model in another process shares its weights: 6 GiB + (6 - 5) GiB fits under 10 GiB
    shared = budget.reserve(tmp_path, os.getpid(), MODEL, 6 * GIB, 10 * GIB, shared=5 * GIB, wait=0)
    budget.release(shared)
    # another model does not fit until the holder lets go
    threading.Timer(1.0, go.touch).start()
    asked = time.time()
    mine = budget.reserve(tmp_path, os.getpid(), "b" * 64, 6 * GIB, 10 * GIB, wait=30)
    granted = time.time()
    out, err = holder.communicate(timeout=30)
    released = float(out.split()[1])
    assert granted - asked >= 0.9 and granted >= released, err
    assert [(e.pid, e.model) for e in budget.holders(tmp_path)] == [(os.getpid(), "b" * 64)]
    budget.release(mine)
    budget.release(mine)  # idempotent
    assert budget.holders(tmp_path) == []


def test_a_reservation_that_cannot_fit_is_refused_or_times_out_naming_the_holder(tmp_path: Path, hold: Hold) -> None:
    with pytest.raises(ModelError, match="can never be loaded"):
        budget.reserve(tmp_path, os.getpid(), MODEL, 11 * GIB, 10 * GIB)
    go = tmp_path / "go"
    holder = hold(tmp_path, go, MODEL, 6 * GIB, 10 * GIB)
    with pytest.raises(ModelError, match=f"pid {holder.pid} holds model {MODEL[:12]}"):
        budget.reserve(tmp_path, os.getpid(), "b" * 64, 6 * GIB, 10 * GIB, wait=0.5)
    go.touch()
    holder.communicate(timeout=30)
    assert budget.holders(tmp_path) == []


def test_a_killed_holder_frees_its_share(tmp_path: Path, hold: Hold) -> None:
    holder = hold(tmp_path, tmp_path / "never", MODEL, 6 * GIB, 10 * GIB)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    mine = budget.reserve(tmp_path, os.getpid(), "b" * 64, 6 * GIB, 10 * GIB, wait=0)
    assert [e.pid for e in budget.holders(tmp_path)] == [os.getpid()]
    budget.release(mine)


MANAGER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from orchestrator.models import runtime
from orchestrator.models.llama import ModelManager
from orchestrator.store.workspace import Workspace
ws, go = Workspace(Path(sys.argv[2])), Path(sys.argv[3])
record = runtime.get_model(ws, runtime.DEFAULT_MODEL)
with ModelManager(budget=int(sys.argv[4]), n_ctx=1024, ledger=ws.state) as manager:
    manager.acquire(record)
    print("held", flush=True)
    while not go.exists():
        time.sleep(0.05)
print("released", time.time(), flush=True)
"""


@pytest.mark.model
def test_model_managers_of_two_processes_share_the_budget(ws: Workspace) -> None:
    record = runtime.get_model(ws, runtime.DEFAULT_MODEL)
    placement = ModelManager(n_ctx=1024).placement(record)
    estimate = placement.ram
    own = placement.kv_bytes + placement.compute  # what a second process does not share (weights are mmap'd)
    limit = estimate + own // 2  # one process fits; a second copy's KV cache and compute buffer do not
    go = ws.root / "go"
    other = _spawn(MANAGER, str(ROOT), str(ws.root), str(go), str(limit))
    assert other.stdout is not None and other.stdout.readline().strip() == "held"
    [entry] = budget.holders(ws.state)
    assert (entry.pid, entry.model, entry.bytes) == (other.pid, record.sha256, estimate)
    with ModelManager(budget=limit, n_ctx=1024, ledger=ws.state) as manager:
        threading.Timer(1.0, go.touch).start()
        manager.acquire(record)
        granted = time.time()
        out, _ = other.communicate(timeout=60)
        assert granted >= float(out.split()[1]), "loaded only after the other process released"
        assert [e.pid for e in budget.holders(ws.state)] == [os.getpid()]
    assert budget.holders(ws.state) == [], "closing the manager released the reservation"
