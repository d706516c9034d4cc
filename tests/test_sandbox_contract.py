"""The sandbox contract, run over every backend: the Docker engine and the scripted fake.

The scripted backend answers the commands below as the engine does (see ``_as_the_engine``);
the same assertions then hold for both, so control-flow tests on the fake say something about
the real thing. Docker-specific hardening is tested in ``test_sandbox.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import Sandbox, SandboxBackend
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.factory import open_sandbox, sandbox_spec
from orchestrator.sandbox.scripted import KILLED, PytestRun, PytestScript, ScriptedBackend
from orchestrator.store.reports import CommandResult
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.workspace import Workspace
from tests.conftest import git

TESTS_PY = """\
import pytest

def test_ok():
    pass

def test_bad():
    assert 1 + 1 == 3

class TestGroup:
    @pytest.mark.parametrize("n", [1, 2])
    def test_param(self, n):
        assert n > 0

@pytest.mark.skip(reason="not today")
def test_skipped():
    pass
"""
T = "tests/test_mixed.py::"
MIXED = PytestRun(
    passed=[f"{T}test_ok", f"{T}TestGroup::test_param[1]", f"{T}TestGroup::test_param[2]"],
    failed=[f"{T}test_bad"],
    skipped=[f"{T}test_skipped"],
)
SELECTED = PytestRun(passed=[f"{T}test_ok"])
SHELL = ["sh", "-c", "echo out; echo err >&2; exit 3"]
LOUD = ["python", "-c", "print('x' * 5000)"]


def _as_the_engine(argv: list[str]) -> CommandResult:
    """The contract's commands, answered as the Docker runner answers them."""
    if argv == SHELL:
        return CommandResult(argv=argv, exit_code=3, duration=0.01, stdout_tail="out\n", stderr_tail="err\n")
    if argv[0] == "sleep":
        return CommandResult(argv=argv, exit_code=0, duration=float(argv[1]))
    if argv == LOUD:
        return CommandResult(argv=argv, exit_code=0, duration=0.01, stdout_tail="x" * 5000 + "\n")
    if argv == ["true"]:
        return CommandResult(argv=argv, exit_code=0, duration=0.0)
    raise AssertionError(f"the contract never runs {argv}")


def _scripted() -> ScriptedBackend:
    return ScriptedBackend(PytestScript([MIXED, SELECTED], other=_as_the_engine))


@pytest.fixture(
    scope="module",
    params=[pytest.param(DockerBackend, marks=pytest.mark.docker, id="docker"), pytest.param(_scripted, id="scripted")],
)
def backend(request: pytest.FixtureRequest) -> Iterator[SandboxBackend]:
    made: SandboxBackend = request.param()
    yield made
    made.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """A workspace with a repo whose tests pass, fail and skip, and a worktree of it (shared by the module)."""
    base = tmp_path_factory.mktemp("contract")
    ws = init_workspace(base / "ws")
    src = base / "src"
    (src / "tests").mkdir(parents=True)
    (src / "tests" / "test_mixed.py").write_text(TESTS_PY)
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "initial")
    add_repo(ws, str(src), name="mixed")
    tree = ws.cache / "worktrees" / "contract"
    git(ws.src / "mixed", "worktree", "add", "-q", "--detach", str(tree), "HEAD")
    return ws, tree


@pytest.fixture
def box(repo: tuple[Workspace, Path], backend: SandboxBackend) -> Iterator[Sandbox]:
    ws, tree = repo
    with open_sandbox(ws, "mixed", tree, label="contract", backend=backend) as opened:
        yield opened


def test_a_command_reports_its_exit_code_and_output(box: Sandbox) -> None:
    result = box.run(SHELL)
    assert (result.exit_code, result.stdout_tail, result.stderr_tail) == (3, "out\n", "err\n")
    assert not result.ok and not result.timed_out and not result.truncated


def test_a_command_past_its_timeout_is_stopped_and_reported(box: Sandbox) -> None:
    result = box.run(["sleep", "30"], timeout=0.5)
    assert (result.timed_out, result.exit_code, result.ok) == (True, KILLED, False)
    assert box.run(["true"]).ok, "the sandbox still runs commands"


def test_output_past_the_cap_keeps_its_tail_and_says_so(box: Sandbox) -> None:
    result = box.run(LOUD, output_limit=1000)
    assert result.ok and result.truncated
    assert result.stdout_tail == "[converge: output truncated, 4001 earlier bytes dropped]\n" + "x" * 999 + "\n"


def test_run_tests_parses_every_outcome_into_test_ids(box: Sandbox) -> None:
    report = box.run_tests()
    assert (report.ran, report.selection, report.ok) == (True, "all", False)
    assert (report.passed, report.failed, report.errored, report.skipped) == (
        list(MIXED.passed),
        list(MIXED.failed),
        [],
        list(MIXED.skipped),
    )
    assert report.command is not None and report.command.exit_code == 1
    selected = box.run_tests([f"{T}test_ok"])
    assert (selected.ok, selected.selection, selected.passed) == (True, "selected", [f"{T}test_ok"])


def test_a_closed_sandbox_refuses_commands(repo: tuple[Workspace, Path], backend: SandboxBackend) -> None:
    ws, tree = repo
    with open_sandbox(ws, "mixed", tree, label="contract", backend=backend) as box:
        assert box.run(["true"]).ok
    with pytest.raises(SandboxError, match="closed"):
        box.run(["true"])


def test_reap_removes_only_what_dead_processes_left(repo: tuple[Workspace, Path], backend: SandboxBackend) -> None:
    ws, tree = repo
    dead = subprocess.Popen(["true"])
    dead.wait()
    spec = sandbox_spec(ws, "mixed", tree, "contract", ws.config().sandbox, backend)
    orphan = backend.start(replace(spec, labels={**spec.labels, "converge.pid": str(dead.pid)}))
    live = backend.start(spec)
    try:
        assert len(backend.reap(ws.root)) == 1
        assert backend.reap(ws.root) == [], "nothing is left to reap"
        assert live.exec(["true"], 10.0, 1000).ok, "a live process's sandbox is untouched"
        with pytest.raises(SandboxError):
            orphan.exec(["true"], 10.0, 1000)
    finally:
        live.close()
        orphan.close()
        orphan.close()  # closing twice is harmless
