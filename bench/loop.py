"""Cost of the refinement loop itself, side by side with the tests it runs, in one run.

A generated repo (a package of ``--modules`` modules, one test file per module, >= 200 tests
each doing a little real work) is registered in a temporary workspace. Then:

1. Real refinement runs (``driver.start_run``: plan, then per step propose, apply, verify in
   the Docker sandbox with the selected tests then the full suite, judge, sign, promote),
   the scripted model making a one-line change to another module in each step: one cold
   run of one step, then ``--runs`` runs of ``--steps`` steps (converge.toml's default
   ``max_steps``). A run's wall time is split into model time (the backend's ``complete``,
   timed; ~0 here, which leaves nothing for the run's sandbox pool to hide container starts
   behind but the tests), sandbox command time (every exec in a sandbox container, timed)
   and the rest: orchestration (graph, checkpoints, git worktrees, repo map, policy,
   signing, and any wait for a sandbox). Per-step figures are a run's divided by its steps.
2. In ONE sandbox session over the current generation, the tests the repo map selects for a
   one-file change against the full suite, alternating for ``--rounds`` rounds.

Prints `name: value` lines (medians over runs / rounds):
  tests_total             tests in the generated repo (>= 200)
  tests_selected          tests the repo map selects for a one-file change
  run_wall_s              one run of --steps steps, start_run to its return
  step_wall_s             run_wall_s / steps
  model_s                 time inside the model backend's complete(), per step
  sandbox_s               time inside sandbox commands (every exec: pytest runs, junit reads), per step
  sandbox_lifecycle_s     part of the overhead: getting a sandbox and giving it back, per step
  first_sandbox_wait_s    part of that, per run: the first step waiting for the run's first container
                          to start (~0.35 s of engine work here), which a model that thinks at all
                          hides: the pool starts it when the run starts
  overhead_s              step_wall_s - model_s - sandbox_s
  overhead_by_node_s      the overhead inside each graph node, per step (the rest is between nodes)
  raw_test_s              the full suite's duration in a step (its TestReport's command.duration)
  overhead_share          overhead_s / raw_test_s (target <= 0.10)
  overhead_share_past_first_sandbox   the same without first_sandbox_wait_s (for information only)
  cold_run_*              the same for the first run in this process, of one step: imports, cold
                          caches and run setup included (what a one-step `converge refine` pays)
  selected_tests_s        the selected tests' pytest run, one sandbox session, median
  full_suite_s            the full suite's pytest run, same session, median
  selected_speedup        full_suite_s / selected_tests_s (target >= 3)
Usage: python bench/loop.py [--modules M] [--tests-per-module T] [--work N] [--steps S] [--runs R] [--rounds K]
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

from orchestrator.agents.cards import LoadedCard
from orchestrator.agents.repomap import build_repo_map
from orchestrator.loop import driver, graph, state
from orchestrator.models.backends import Completion, CompletionRequest, ModelBackend, ModelIdentity
from orchestrator.sandbox import base, docker_backend, factory, pool
from orchestrator.store import runs, worktrees
from orchestrator.store.reports import CommandResult, TestReport
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.workspace import Workspace
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
    first_wait_s: float | None = None  # the first sandbox of the run: its container start, waited for
    node_overhead: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Meter]:
        """Wrap, in this process only, every DockerSession.exec, SandboxPool.at and graph node."""
        original_exec = docker_backend.DockerSession.exec
        original_at = pool.SandboxPool.at
        original_nodes = {name: getattr(graph.Nodes, name) for name in NODES}
        meter = self

        def timed_exec(session: Any, argv: Sequence[str], timeout: float, output_limit: int) -> CommandResult:
            started = time.perf_counter()
            try:
                return original_exec(session, argv, timeout, output_limit)
            finally:
                meter.exec_s += time.perf_counter() - started

        @contextlib.contextmanager
        def timed_at(*args: Any, **kwargs: Any) -> Iterator[tuple[Path, base.Sandbox]]:
            started = time.perf_counter()
            inside = 0.0
            try:
                with original_at(*args, **kwargs) as box:
                    entered = time.perf_counter()
                    try:
                        yield box
                    finally:
                        inside = time.perf_counter() - entered
            finally:
                spent = time.perf_counter() - started - inside
                meter.lifecycle_s += spent
                if meter.first_wait_s is None:
                    meter.first_wait_s = spent

        def timed_node(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
            def node(nodes: Any, state: Any) -> Any:
                before = time.perf_counter() - meter.exec_s - meter.model_s
                try:
                    return method(nodes, state)
                finally:
                    spent = time.perf_counter() - meter.exec_s - meter.model_s - before
                    meter.node_overhead[name] = meter.node_overhead.get(name, 0.0) + spent

            return node

        setattr(docker_backend.DockerSession, "exec", timed_exec)  # noqa: B010 - patched in this process only
        setattr(pool.SandboxPool, "at", timed_at)  # noqa: B010
        for name, method in original_nodes.items():
            setattr(graph.Nodes, name, timed_node(name, method))
        try:
            yield self
        finally:
            setattr(docker_backend.DockerSession, "exec", original_exec)  # noqa: B010
            setattr(pool.SandboxPool, "at", original_at)  # noqa: B010
            for name, method in original_nodes.items():
                setattr(graph.Nodes, name, method)


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
class RunFigures:
    """One run of ``steps`` steps, its time split up; per-step figures are the run's divided by its steps."""

    steps: int
    wall: float
    meter: Meter
    raw_tests: list[float]

    @property
    def overhead(self) -> float:
        return (self.wall - self.meter.model_s - self.meter.exec_s) / self.steps

    @property
    def raw_test(self) -> float:
        return statistics.median(self.raw_tests)

    @property
    def share(self) -> float:
        return self.overhead / self.raw_test

    @property
    def share_past_first_wait(self) -> float:
        return (self.overhead - (self.meter.first_wait_s or 0.0) / self.steps) / self.raw_test


def one_run(ws: Workspace, repo: str, modules: list[str]) -> RunFigures:
    """One real refinement run with a step per module, each making a one-line change to it."""
    paths = [f"{PACKAGE}/{module}.py" for module in modules]
    steps = [(f"Tidy {module}", "coder", [path]) for module, path in zip(modules, paths, strict=True)]
    scripted = ScriptedBackend([plan(*steps)], [edit(path, CHANGE_FROM, CHANGE_TO) for path in paths])
    meter = Meter()
    deps = state.Deps(ws=ws, model_for=TimedModel(scripted, meter).factory())
    with meter.installed():
        started = time.perf_counter()
        result = driver.start_run(deps, repo, f"tidy {', '.join(modules)}", auto_approve=True, max_steps=len(modules))
        wall = time.perf_counter() - started
    record = result.record
    if record.status != "completed" or [s.outcome for s in record.steps] != ["promoted"] * len(modules):
        raise SystemExit(f"run {record.id} did not promote every step: {record.status} {record.reason}")
    raw: list[float] = []
    for step in range(1, len(modules) + 1):
        report = TestReport.model_validate_json((runs.run_dir(ws, record.id) / f"{step}-1.tests.json").read_text())
        if report.selection != "all" or report.command is None or not report.ok:
            raise SystemExit(f"run {record.id} step {step}: the last test report is not a passing full suite")
        raw.append(report.command.duration)
    return RunFigures(len(modules), wall, meter, raw)


def side_by_side(ws: Workspace, repo: str, changed: str, rounds: int) -> tuple[list[float], list[float], int, int]:
    """Selected tests vs the full suite, alternating, in one sandbox session over the current generation."""
    selected_s: list[float] = []
    full_s: list[float] = []
    with worktrees.generation_worktree(ws, repo) as tree:
        selected = build_repo_map(tree).tests_for([changed])
        if not selected:
            raise SystemExit(f"the repo map selects no test for {changed}")
        with factory.open_sandbox(ws, repo, tree, label="bench-loop") as box:
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
    parser.add_argument("--steps", type=int, default=5, help="steps per run (converge.toml's default max_steps)")
    parser.add_argument("--runs", type=int, default=3, help="runs after the cold one-step run")
    parser.add_argument("--rounds", type=int, default=5, help="selected/full rounds in one sandbox")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()
    if args.steps < 1 or args.runs < 1 or 1 + args.runs * args.steps > args.modules:
        parser.error("--steps, --runs: at least 1, and 1 + runs * steps modules at most (each step changes another)")
    base = Path(tempfile.mkdtemp(prefix="converge-bench-loop-"))
    try:
        src = make_repo(base, args.modules, args.tests_per_module, args.work)
        ws = init_workspace(base / "ws")
        add_repo(ws, str(src), name="gen")
        # (2) first: it also builds the image and test environment, outside the step figures
        sel, full, n_sel, n_all = side_by_side(ws, "gen", f"{PACKAGE}/mod00.py", args.rounds)
        names = [f"mod{i:02d}" for i in range(args.modules)]
        cold = one_run(ws, "gen", names[:1])
        warm = [one_run(ws, "gen", names[1 + r * args.steps : 1 + (r + 1) * args.steps]) for r in range(args.runs)]
        nodes = {n: _med([s.meter.node_overhead.get(n, 0.0) / s.steps for s in warm]) for n in NODES}
        in_nodes = [sum(s.meter.node_overhead.values()) / s.steps for s in warm]
        figures: list[tuple[str, object]] = [
            ("tests_total", n_all),
            ("tests_selected", n_sel),
            ("runs", f"{len(warm)} of {args.steps} steps, after 1 cold run of 1 step"),
            ("run_wall_s", _med([s.wall for s in warm])),
            ("step_wall_s", _med([s.wall / s.steps for s in warm])),
            ("model_s", _med([s.meter.model_s / s.steps for s in warm])),
            ("sandbox_s", _med([s.meter.exec_s / s.steps for s in warm])),
            ("overhead_s", _med([s.overhead for s in warm])),
            ("sandbox_lifecycle_s", _med([s.meter.lifecycle_s / s.steps for s in warm])),
            ("first_sandbox_wait_s", _med([s.meter.first_wait_s or 0.0 for s in warm])),
            ("overhead_in_nodes_s", _med(in_nodes)),
            ("overhead_by_node_s", " ".join(f"{n}={v}" for n, v in nodes.items() if v)),
            ("raw_test_s", _med([s.raw_test for s in warm])),
            ("overhead_share", _med([s.share for s in warm])),
            ("overhead_share_target", 0.10),
            ("overhead_share_past_first_sandbox", _med([s.share_past_first_wait for s in warm])),
            ("cold_run_wall_s", round(cold.wall, 3)),
            ("cold_run_overhead_s", round(cold.overhead, 3)),
            ("cold_run_overhead_share", round(cold.share, 3)),
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
