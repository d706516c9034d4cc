"""`converge watch`: live repo maps through a real watchdog observer, and the task inbox with real runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.agents.pyparse import blob_digest
from orchestrator.agents.repomap import CACHE_NAME
from orchestrator.errors import ConflictError
from orchestrator.loop.state import Deps
from orchestrator.sandbox.scripted import PytestRun, PytestScript
from orchestrator.sandbox.scripted import ScriptedBackend as ScriptedSandbox
from orchestrator.store import generations, runs
from orchestrator.store.workspace import Workspace
from orchestrator.watch.files import is_ignored
from orchestrator.watch.watcher import Watcher
from tests.conftest import GIT_ENV, ROOT, converge
from tests.scripted import ScriptedBackend, edit, plan

UNUSED = "import os\nimport sys\n"
STEP = ("Drop the os and sys lines from stock.py", "coder", ["inventory/stock.py"])
TASK = 'repo = "sample"\ngoal = "drop what the code does not need"\nmax_steps = 1\nauto_approve = true\n'


def _scripted(ws: Workspace) -> Deps:
    model = ScriptedBackend([plan(STEP)], [edit("inventory/stock.py", UNUSED, "")])
    return Deps(ws=ws, model_for=model.factory())


def _no_model(ws: Workspace) -> Deps:
    return Deps(ws=ws, model_for=ScriptedBackend([], []).factory())


def _wait(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def running(watcher: Watcher) -> Iterator[threading.Thread]:
    """run_forever in a thread, as `converge watch` runs it; stopped and joined on exit."""
    thread = threading.Thread(target=watcher.run_forever, daemon=True)
    thread.start()
    _wait(lambda: watcher.observer_kind != "none", what="the observer to start")
    try:
        yield thread
    finally:
        watcher.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


def _symbols(watcher: Watcher, repo: str, path: str) -> set[str]:
    entry = watcher.entry(repo, path)
    return {s.name for s in entry.parsed.symbols} if entry and entry.parsed else set()


def _result(folder: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / f"{name}.result.json").read_text())
    return data


def test_ignore_rules() -> None:
    for noise in (".git/index", "pkg/__pycache__/m.cpython-311.pyc", "m.pyc", "build/lib/x.py", "dist/x.whl"):
        assert is_ignored(noise), noise
    for noise in ("node_modules/a/b.js", ".venv/lib/x.py", ".pytest_cache/v", "cache/x", "a.egg-info/PKG-INFO"):
        assert is_ignored(noise), noise
    assert is_ignored("pkg/__pycache__", is_dir=True)
    for real in ("inventory/stock.py", "README.md", "builder.py", "docs/build.md", "distance/x.py"):
        assert not is_ignored(real), real


def test_map_follows_edits_new_files_and_deletions(sample_ws: Workspace) -> None:
    repo = sample_ws.src / "sample"
    with Watcher(sample_ws, _no_model) as watcher, running(watcher):
        assert watcher.entry("sample", "inventory/stock.py") is not None
        stock = repo / "inventory" / "stock.py"
        stock.write_text(stock.read_text() + "\n\ndef freshly_added(n: int) -> int:\n    return n\n")
        _wait(lambda: "freshly_added" in _symbols(watcher, "sample", "inventory/stock.py"), what="the edit")

        (repo / "extra").mkdir()
        (repo / "extra" / "helpers.py").write_text("def helper_in_new_dir() -> None:\n    pass\n")
        _wait(lambda: "helper_in_new_dir" in _symbols(watcher, "sample", "extra/helpers.py"), what="a new file")

        (repo / "extra" / "helpers.py").unlink()
        _wait(lambda: watcher.entry("sample", "extra/helpers.py") is None, what="a deletion")
    cache = (sample_ws.cache / "repomap" / "sample" / CACHE_NAME).read_text()
    assert "freshly_added" in cache, "refreshed parses are saved to cache/repomap/<repo>/ when the watcher stops"


def test_the_polling_observer_keeps_the_map_fresh_too(sample_ws: Workspace) -> None:
    """The fallback when inotify refuses (watch limit) or for network filesystems: `converge watch --polling`."""
    with Watcher(sample_ws, _no_model, polling=True) as watcher, running(watcher):
        assert watcher.observer_kind == "polling"
        (sample_ws.src / "sample" / "polled.py").write_text("def seen_by_polling() -> None: ...\n")
        _wait(lambda: "seen_by_polling" in _symbols(watcher, "sample", "polled.py"), what="a polled change")


def test_git_pycache_and_build_outputs_are_ignored(sample_ws: Workspace) -> None:
    repo = sample_ws.src / "sample"
    with Watcher(sample_ws, _no_model) as watcher, running(watcher):
        (repo / ".git" / "scratch.py").write_text("def in_git() -> None: ...\n")
        (repo / "inventory" / "__pycache__").mkdir(exist_ok=True)
        (repo / "inventory" / "__pycache__" / "stock.cpython-311.pyc").write_bytes(b"\0" * 16)
        (repo / "build").mkdir()
        (repo / "build" / "gen.py").write_text("def generated() -> None: ...\n")
        (repo / "inventory" / "stock.py.swp").write_text("x")
        # a real change after the noise: once it is seen, the noise before it has been seen too
        marker = repo / "marker.py"
        marker.write_text("def marker() -> None: ...\n")
        _wait(lambda: "marker" in _symbols(watcher, "sample", "marker.py"), what="the marker file")
        time.sleep(0.4)  # past one more debounce
        assert watcher.refreshed == {"sample": ["marker.py"]}
        assert watcher.entry("sample", "build/gen.py") is None
        assert not any(p.startswith((".git/", "inventory/__pycache__")) for p in watcher.map_of("sample").files)


def test_git_ignored_files_stay_out_of_the_map(sample_ws: Workspace) -> None:
    repo = sample_ws.src / "sample"
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("*.log\n")
    with Watcher(sample_ws, _no_model) as watcher, running(watcher):
        (repo / "run.log").write_text("noise\n")
        (repo / "kept.txt").write_text("kept\n")
        _wait(lambda: watcher.entry("sample", "kept.txt") is not None, what="kept.txt")
        assert watcher.entry("sample", "run.log") is None


def test_bad_tasks_fail_with_the_reason_and_the_watcher_keeps_going(sample_ws: Workspace) -> None:
    inbox = sample_ws.spec / "inbox"
    with Watcher(sample_ws, _no_model, debounce=0.05) as watcher, running(watcher) as thread:
        inbox.joinpath("broken.toml").write_text('repo = "sample"\ngoal = \n')
        inbox.joinpath("typo.toml").write_text('repo = "sample"\ngoal = "x"\nmax_step = 2\n')
        inbox.joinpath("nowhere.toml").write_text('repo = "nope"\ngoal = "x"\n')
        inbox.joinpath("crash.toml").write_text('repo = "sample"\ngoal = "the model has no answer"\n')
        failed = inbox / "failed"
        names = ("broken", "typo", "nowhere", "crash")
        _wait(lambda: all((failed / f"{n}.toml").is_file() for n in names), timeout=20, what="four failed tasks")
        assert "not valid TOML" in _result(failed, "broken")["reason"]
        assert "max_step" in _result(failed, "typo")["reason"]
        assert "unknown repo 'nope'" in _result(failed, "nowhere")["reason"]
        crash = _result(failed, "crash")
        assert "no answer left" in crash["reason"] and crash["run_id"]
        assert runs.load(sample_ws, crash["run_id"]).status == "failed"
        assert not list(inbox.glob("*.toml")) and not list((inbox / "running").iterdir())
        # still watching: a file edit still reaches the map
        assert thread.is_alive()
        (sample_ws.src / "sample" / "after.py").write_text("def still_watching() -> None: ...\n")
        _wait(lambda: "still_watching" in _symbols(watcher, "sample", "after.py"), what="an edit after the failures")


def test_one_watcher_per_workspace(sample_ws: Workspace) -> None:
    with Watcher(sample_ws, _no_model), pytest.raises(ConflictError, match="converge watch"):
        Watcher(sample_ws, _no_model).__enter__()


def test_watch_once_cli_files_a_bad_task_and_says_no(sample_ws: Workspace) -> None:
    (sample_ws.spec / "inbox").mkdir(exist_ok=True)
    (sample_ws.spec / "inbox" / "odd.toml").write_text('repo = "sample"\ngoal = "x"\nmax_steps = 0\n')
    proc = converge("-w", str(sample_ws.root), "watch", "--once", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["maps"]["sample"] > 0
    [task] = report["tasks"]
    assert (task["task"], task["status"]) == ("odd.toml", "failed")
    assert "max_steps" in task["reason"]
    assert (sample_ws.spec / "inbox" / "failed" / "odd.toml").is_file()


def test_watch_cli_runs_until_sigterm(sample_ws: Workspace) -> None:
    env = {**os.environ, **GIT_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "-w", str(sample_ws.root), "watch", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        inbox = sample_ws.spec / "inbox"
        _wait((inbox / "failed").is_dir, timeout=20, what="the watcher to start")
        (inbox / "bad.toml").write_text("repo = \n")
        _wait((inbox / "failed" / "bad.toml").is_file, timeout=20, what="the bad task to be filed")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["tasks"][0]["status"] == "failed"
    assert "stopping" in err


# --- real runs (Docker sandbox) -------------------------------------------------------------------


@pytest.mark.docker
def test_a_good_task_runs_to_done_with_its_run_id(sample_ws: Workspace) -> None:
    inbox = sample_ws.spec / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "tidy.toml").write_text(TASK)
    stock = sample_ws.src / "sample" / "inventory" / "stock.py"
    with Watcher(sample_ws, _scripted) as watcher:
        report = watcher.run_once()
        entry = watcher.entry("sample", "inventory/stock.py")
    assert entry is not None and entry.digest == blob_digest(stock.read_bytes()), "the map shows the promoted change"
    [task] = report.tasks
    assert (task.status, task.run_status) == ("done", "completed"), task.reason
    result = _result(inbox / "done", "tidy")
    assert result["run_id"] == task.run_id and result["changesets"] == task.changesets
    assert (inbox / "done" / "tidy.toml").read_text() == TASK
    assert runs.load(sample_ws, result["run_id"]).status == "completed"
    assert generations.current(sample_ws, "sample").number == 1
    assert not list((inbox / "running").iterdir())


WATCH_DRIVER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from orchestrator.loop.state import Deps
from orchestrator.agents import repomap
from orchestrator.agents.pyparse import blob_digest
from orchestrator.watch.watcher import Watcher
from orchestrator.store.workspace import Workspace
from tests.scripted import ScriptedBackend, edit, plan
from orchestrator.sandbox.scripted import PytestRun, PytestScript
from orchestrator.sandbox.scripted import ScriptedBackend as ScriptedSandbox
def on_event(text):
    if "  applied" in text:
        os.kill(os.getpid(), signal.SIGKILL)
def deps(ws):
    model = ScriptedBackend(
        [plan(("Drop the os and sys lines from stock.py", "coder", ["inventory/stock.py"]))],
        [edit("inventory/stock.py", "import os\\nimport sys\\n", "")],
    )
    return Deps(ws=ws, model_for=model.factory(), on_event=on_event)
with Watcher(Workspace(Path(sys.argv[1])), deps) as watcher:
    watcher.run_once()
"""


@pytest.mark.docker
def test_a_task_in_flight_resumes_after_the_watcher_restarts(sample_ws: Workspace) -> None:
    inbox = sample_ws.spec / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "tidy.toml").write_text(TASK)
    killed = subprocess.run(
        [sys.executable, "-c", WATCH_DRIVER, str(sample_ws.root), str(ROOT)],
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    claimed = json.loads((inbox / "running" / "tidy.run.json").read_text())
    run_id = claimed["run_id"]
    assert (inbox / "running" / "tidy.toml").is_file()
    assert runs.load(sample_ws, run_id).status == "interrupted"

    with Watcher(sample_ws, _no_model) as watcher:  # resuming needs no model: the proposal is on disk
        report = watcher.run_once()
    [task] = report.tasks
    assert (task.status, task.run_id, task.resumed, task.run_status) == ("done", run_id, True, "completed")
    assert _result(inbox / "done", "tidy")["run_id"] == run_id
    assert not list((inbox / "running").iterdir())
    assert [g.number for g in generations.lineage(sample_ws, "sample")] == [0, 1]
    assert "import os" not in (sample_ws.src / "sample" / "inventory" / "stock.py").read_text()


def test_a_stop_ends_the_run_in_progress_at_its_next_checkpoint_and_it_resumes(sample_ws: Workspace) -> None:
    inbox = sample_ws.spec / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "tidy.toml").write_text(TASK)
    planned = threading.Event()

    class SlowPlanner(ScriptedBackend):
        def complete(self, request: Any) -> Any:  # the planner answers, then the stop arrives mid-run
            answer = super().complete(request)
            planned.set()
            time.sleep(0.5)
            return answer

    model = SlowPlanner([plan(STEP)], [edit("inventory/stock.py", UNUSED, "")])
    sandbox = ScriptedSandbox(PytestScript([PytestRun(passed=["tests/test_stock.py::test_value_sums_prices"])]))

    def deps(ws: Workspace) -> Deps:
        return Deps(ws=ws, model_for=model.factory(), sandbox_backend=sandbox)

    with Watcher(sample_ws, deps) as watcher:
        worker = threading.Thread(target=watcher.run_forever)
        worker.start()
        assert planned.wait(30)
        watcher.stop()
        worker.join(30)
        assert not worker.is_alive()
    claimed = json.loads((inbox / "running" / "tidy.run.json").read_text())
    record = runs.load(sample_ws, claimed["run_id"])
    assert record.status == "interrupted" and (inbox / "running" / "tidy.toml").is_file()
    assert generations.current(sample_ws, "sample").number == 0, "the stop did not wait for the whole task"
    assert record.steps == [] and len(model.requests) == 1

    with Watcher(sample_ws, deps) as watcher:  # the next start finishes it from its checkpoint
        [task] = watcher.run_once().tasks
    assert (task.status, task.run_id, task.resumed, task.run_status) == ("done", claimed["run_id"], True, "completed")
    assert len(model.requests) == 2, "the plan was not asked for again"
