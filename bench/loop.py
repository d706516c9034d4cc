"""Cost of the refinement loop itself, side by side with the tests it runs, in one run.

A generated repo (a package of ``--modules`` modules, one test file per module, >= 200 tests
each doing a little real work) is registered in a temporary workspace. Then:

1. ``--runs`` real one-step refinement runs (``graph.start_run``: plan, propose, apply, verify
   in the Docker sandbox with selected tests then the full suite, judge, sign, promote), the
   scripted model making a one-line change to one module each time. Each step's wall time is
   split into model time (the backend's ``complete``, timed), sandbox command time (every
   exec in a sandbox container, timed) and the rest: orchestration (graph, checkpoints, git
   worktrees, repo map, policy, signing, and container start/stop).
2. In ONE sandbox session over the current generation, the tests the repo map selects for a
   one-file change against the full suite, alternating for ``--rounds`` rounds.

Prints `name: value` lines (medians over runs / rounds):
  tests_total             tests in the generated repo (>= 200)
  tests_selected          tests the repo map selects for a one-file change
  step_wall_s             one refinement step, start_run to its return
  model_s                 time inside the model backend's complete()
  sandbox_s               time inside sandbox commands (every exec: pytest runs, junit reads)
  sandbox_lifecycle_s     part of the overhead: open_sandbox setup + teardown (container start/stop, env check)
  overhead_s              step_wall_s - model_s - sandbox_s
  raw_test_s              the full suite's duration in the step (its TestReport's command.duration)
  overhead_share          overhead_s / raw_test_s (target <= 0.10)
  selected_tests_s        the selected tests' pytest run, one sandbox session, median
  full_suite_s            the full suite's pytest run, same session, median
  selected_speedup        full_suite_s / selected_tests_s (target >= 3)
Usage: python bench/loop.py [--modules M] [--tests-per-module T] [--work N] [--runs R] [--rounds K]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import graph, runs, sandbox, sandbox_docker
from orchestrator.agents import LoadedCard
from orchestrator.model_backends import Completion, CompletionRequest, ModelBackend, ModelIdentity
from orchestrator.repomap import build_repo_map
from orchestrator.reports import CommandResult, TestReport
from orchestrator.workspace import Workspace, add_repo, init_workspace
from tests.scripted import ScriptedBackend, edit, plan

ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b"}
ENV |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
PACKAGE = "calc"
CHANGE_FROM = "total += (k * SCALE) % 7"
CHANGE_TO = "total += (SCALE * k) % 7"

MODULE = '''"""Module {i} of the generated package."""

SCALE = {scale}


def churn(n: int) -> int:
    """A little real work: a loop of ``n`` iterations."""
    total = 0
    for k in range(n):
        {change_from}
    return total


def checksum(values: list[int]) -> int:
    return sum(v * SCALE for v in values) % 1_000_003
'''

TEST = """import pytest

from {package} import {module}

N = {work}


@pytest.mark.parametrize("extra", range({count}))
def test_churn(extra: int) -> None:
    n = N + extra
    assert {module}.churn(n) == sum((k * {scale}) % 7 for k in range(n))


def test_checksum() -> None:
    assert {module}.checksum([1, 2, 3]) == (6 * {scale}) % 1_000_003
"""


def make_repo(root: Path, modules: int, tests_per_module: int, work: int) -> Path:
    """A git repo: ``modules`` modules, one test file each importing only its module."""
    src = root / "generated"
    (src / PACKAGE).mkdir(parents=True)
    (src / "tests").mkdir()
    (src / PACKAGE / "__init__.py").write_text('"""A generated package for the loop benchmark."""\n')
    (src / "pyproject.toml").write_text(
        '[project]\nname = "calc"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = []\n\n'
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
    )
    for i in range(modules):
        name = f"mod{i:02d}"
        scale = i + 1
        text = MODULE.format(i=i, scale=scale, change_from=CHANGE_FROM)
        (src / PACKAGE / f"{name}.py").write_text(text)
        test = TEST.format(package=PACKAGE, module=name, work=work, count=tests_per_module - 1, scale=scale)
        (src / "tests" / f"test_{name}.py").write_text(test)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "generated"]):
        subprocess.run(["git", *args], cwd=src, env=ENV, check=True)
    return src


# --- meters ---------------------------------------------------------------------------------

NODES = ("plan", "propose", "apply", "verify", "judge", "sign", "review", "advance", "retry")


@dataclass
class Meter:
    """Time of one step by kind: model calls, sandbox execs, sandbox setup/teardown, and per graph node."""

    model_s: float = 0.0
    exec_s: float = 0.0
    lifecycle_s: float = 0.0
    node_overhead: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Meter]:
        """Wrap, in this process only, every DockerSession.exec, open_sandbox and graph node."""
        original_exec = sandbox_docker.DockerSession.exec
        original_open = sandbox.open_sandbox
        original_nodes = {name: getattr(graph._Nodes, name) for name in NODES}
        meter = self

        def timed_exec(session: Any, argv: Sequence[str], timeout: float, output_limit: int) -> CommandResult:
            started = time.perf_counter()
            try:
                return original_exec(session, argv, timeout, output_limit)
            finally:
                meter.exec_s += time.perf_counter() - started

        @contextlib.contextmanager
        def timed_open(*args: Any, **kwargs: Any) -> Iterator[sandbox.Sandbox]:
            started = time.perf_counter()
            inside = 0.0
            try:
                with original_open(*args, **kwargs) as box:
                    entered = time.perf_counter()
                    try:
                        yield box
                    finally:
                        inside = time.perf_counter() - entered
            finally:
                meter.lifecycle_s += time.perf_counter() - started - inside

        def timed_node(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
            def node(nodes: Any, state: Any) -> Any:
                before = time.perf_counter() - meter.exec_s - meter.model_s
                try:
                    return method(nodes, state)
                finally:
                    spent = time.perf_counter() - meter.exec_s - meter.model_s - before
                    meter.node_overhead[name] = meter.node_overhead.get(name, 0.0) + spent

            return node

        setattr(sandbox_docker.DockerSession, "exec", timed_exec)  # noqa: B010 - patched in this process only
        setattr(sandbox, "open_sandbox", timed_open)  # noqa: B010
        for name, method in original_nodes.items():
            setattr(graph._Nodes, name, timed_node(name, method))
        try:
            yield self
        finally:
            setattr(sandbox_docker.DockerSession, "exec", original_exec)  # noqa: B010
            setattr(sandbox, "open_sandbox", original_open)  # noqa: B010
            for name, method in original_nodes.items():
                setattr(graph._Nodes, name, method)


class TimedModel:
    """A model backend that adds the time of every ``complete`` of the backend it wraps to a meter."""

    def __init__(self, inner: ModelBackend, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter

    @property
    def identity(self) -> ModelIdentity:
        return self.inner.identity

    def complete(self, request: CompletionRequest) -> Completion:
        started = time.perf_counter()
        try:
            return self.inner.complete(request)
        finally:
            self.meter.model_s += time.perf_counter() - started

    def factory(self) -> Callable[[LoadedCard], ModelBackend]:
        return lambda _card: self


# --- the two measurements -----------------------------------------------------------------------


@dataclass(frozen=True)
class StepFigures:
    wall: float
    meter: Meter
    raw_test: float

    @property
    def overhead(self) -> float:
        return self.wall - self.meter.model_s - self.meter.exec_s

    @property
    def share(self) -> float:
        return self.overhead / self.raw_test


def one_step(ws: Workspace, repo: str, module: str) -> StepFigures:
    """One real refinement step making a one-line change to ``module``; its time split up."""
    path = f"{PACKAGE}/{module}.py"
    scripted = ScriptedBackend([plan((f"Tidy {module}", "coder", [path]))], [edit(path, CHANGE_FROM, CHANGE_TO)])
    meter = Meter()
    deps = graph.Deps(ws=ws, model_for=TimedModel(scripted, meter).factory())
    with meter.installed():
        started = time.perf_counter()
        result = graph.start_run(deps, repo, f"tidy {module}", auto_approve=True, max_steps=1)
        wall = time.perf_counter() - started
    record = result.record
    if record.status != "completed" or [s.outcome for s in record.steps] != ["promoted"]:
        raise SystemExit(f"run {record.id} did not promote its step: {record.status} {record.reason}")
    reports = sorted(runs.run_dir(ws, record.id).glob("*.tests.json"))
    report = TestReport.model_validate_json(reports[-1].read_text())
    if report.selection != "all" or report.command is None or not report.ok:
        raise SystemExit(f"run {record.id}: the step's last test report is not a passing full suite")
    return StepFigures(wall, meter, report.command.duration)


def side_by_side(ws: Workspace, repo: str, changed: str, rounds: int) -> tuple[list[float], list[float], int, int]:
    """Selected tests vs the full suite, alternating, in one sandbox session over the current generation."""
    selected_s: list[float] = []
    full_s: list[float] = []
    with sandbox.generation_worktree(ws, repo) as tree:
        selected = build_repo_map(tree).tests_for([changed])
        if not selected:
            raise SystemExit(f"the repo map selects no test for {changed}")
        with sandbox.open_sandbox(ws, repo, tree, label="bench-loop") as box:
            box.run_tests(selected)  # warm the page cache and bytecode once, outside the figures
            n_selected = n_total = 0
            for _ in range(rounds):
                part = box.run_tests(selected)
                full = box.run_tests()
                for rep in (part, full):
                    if not rep.ok or rep.command is None:
                        raise SystemExit(f"tests failed in the bench sandbox: {rep.summary}")
                assert part.command is not None and full.command is not None
                selected_s.append(part.command.duration)
                full_s.append(full.command.duration)
                n_selected, n_total = len(part.passed), len(full.passed)
    return selected_s, full_s, n_selected, n_total


def _med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modules", type=int, default=20)
    parser.add_argument("--tests-per-module", type=int, default=12)
    parser.add_argument("--work", type=int, default=40_000, help="loop iterations per test")
    parser.add_argument("--runs", type=int, default=4, help="one-step refinement runs (the first is reported as cold)")
    parser.add_argument("--rounds", type=int, default=5, help="selected/full rounds in one sandbox")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()
    if not 2 <= args.runs <= args.modules:
        parser.error("--runs: between 2 and --modules (the first run is cold; each run changes another module)")
    base = Path(tempfile.mkdtemp(prefix="converge-bench-loop-"))
    try:
        src = make_repo(base, args.modules, args.tests_per_module, args.work)
        ws = init_workspace(base / "ws")
        add_repo(ws, str(src), name="gen")
        # (2) first: it also builds the image and test environment, outside the step figures
        sel, full, n_sel, n_all = side_by_side(ws, "gen", f"{PACKAGE}/mod00.py", args.rounds)
        steps = [one_step(ws, "gen", f"mod{i:02d}") for i in range(args.runs)]
        cold, warm = steps[0], steps[1:]
        nodes = {n: _med([s.meter.node_overhead.get(n, 0.0) for s in warm]) for n in NODES}
        in_nodes = [sum(s.meter.node_overhead.values()) for s in warm]
        figures: list[tuple[str, object]] = [
            ("tests_total", n_all),
            ("tests_selected", n_sel),
            ("runs", f"{len(warm)} warm + 1 cold"),
            ("step_wall_s", _med([s.wall for s in warm])),
            ("model_s", _med([s.meter.model_s for s in warm])),
            ("sandbox_s", _med([s.meter.exec_s for s in warm])),
            ("overhead_s", _med([s.overhead for s in warm])),
            ("sandbox_lifecycle_s", _med([s.meter.lifecycle_s for s in warm])),
            ("overhead_in_nodes_s", _med(in_nodes)),
            ("overhead_by_node_s", " ".join(f"{n}={v}" for n, v in nodes.items() if v)),
            ("raw_test_s", _med([s.raw_test for s in warm])),
            ("overhead_share", _med([s.share for s in warm])),
            ("overhead_share_target", 0.10),
            ("cold_step_wall_s", round(cold.wall, 3)),
            ("cold_overhead_share", round(cold.share, 3)),
            ("rounds", args.rounds),
            ("selected_tests_s", _med(sel)),
            ("full_suite_s", _med(full)),
            ("selected_speedup", round(statistics.median(full) / statistics.median(sel), 2)),
            ("selected_speedup_target", 3.0),
        ]
        for name, value in figures:
            print(f"{name}: {value}")
    finally:
        if args.keep:
            print(f"workspace: {base / 'ws'}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
