"""Executors side by side, in one run: local workers, a Ray cluster, and best of N with the embedded model.

The work is what best of N hands an executor: the verification of a candidate commit of the sample
repo (``gate.verify_job.verify_candidate``: its selected tests, then its full suite, in a fresh Docker
sandbox). ``--jobs`` candidates (each a different one-line change) are verified:
1. by the local executor with 1 worker, then with 2 workers (jobs per minute, and the ratio);
2. by the Ray executor on a cluster started here (a head and a worker node, one CPU each, as in
   tests/test_scale.py), each job carrying its commit as a git bundle and verifying in the node's
   replica of the workspace, against the local executor with 2 workers: the difference per job.
Warm-up jobs (image, test environment, replica, Ray workers) run first; then ``--rounds`` rounds of
the three, interleaved (the machine may be busy with other work: its load average is printed).
3. With ``--solve-tasks K`` (0 skips it): K small goals on the sample repo, each refined by the
   embedded default model with one candidate per attempt and with four; solved = a step promoted
   (its tests passed in the sandbox) and the goal's own check holds on the final tree.

Prints `name: value` lines:
  throughput_1_per_min    verifications per minute, local executor, 1 worker
  throughput_2_per_min    the same with 2 workers
  parallel_speedup        throughput_2 / throughput_1 (target >= 1.4 on 2 cores)
  jobs_at_once_2 / _ray   verifications in flight on average (their own seconds / wall time): 2.0 means
                          the executor kept both workers busy, whatever the CPU could give them
  ray_per_job_s           wall time per verification through Ray (2 nodes), warm
  local_per_job_s         the same through the local executor with 2 workers
  ray_overhead_s          ray_per_job_s - local_per_job_s (target < 0.3)
  bundle_kb               size of one candidate's bundle (the whole history of the sample repo)
  load_average_before / _after   the machine's 1-minute load average (2 cores: above 2, figures are shared)
  solve_rate_n1 / _n4     tasks solved with 1 and with 4 candidates per attempt (if --solve-tasks)
  promoted_rate_n1 / _n4  tasks where the gate promoted a change (tests passed, policy approved), solved or not
  run_min_n1 / _n4        minutes per run
Usage: python bench/scale.py [--jobs N] [--rounds R] [--solve-tasks K]
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.gate.apply import candidate, commit_signed
from orchestrator.gate.provenance import AttemptKey
from orchestrator.gate.verify_job import CandidateJob, Verified, candidate_job, verify_candidate
from orchestrator.loop.driver import start_run
from orchestrator.loop.factory import model_factory
from orchestrator.loop.state import Deps
from orchestrator.scale.base import Executor
from orchestrator.scale.local import LocalExecutor
from orchestrator.scale.ray_executor import RayExecutor
from orchestrator.store import generations
from orchestrator.store.replica import seed_of
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.workspace import Workspace
from tests.raycluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample-repo"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b"}
ENV |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
FILES = ["inventory/stock.py", "inventory/report.py", "inventory/__init__.py"]
DOCKER = {"docker": 1.0}


def _workspace(base: Path) -> Workspace:
    src = base / "sample"
    shutil.copytree(SAMPLE, src)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "sample"]):
        subprocess.run(["git", *args], cwd=src, env=ENV, check=True)
    ws = init_workspace(base / "ws")
    add_repo(ws, str(src), name="sample")
    return ws


def _candidates(ws: Workspace, count: int, run: str) -> list[tuple[str, AttemptKey]]:
    """``count`` candidate commits on the current generation, each a different one-line change, kept as
    best of N keeps them (``refs/converge/candidates/<run>/1c<i>-1``)."""
    base = generations.current(ws, "sample").commit
    made = []
    for index in range(1, count + 1):
        key = AttemptKey(run, f"1c{index}", 1)
        with candidate(ws, "sample", key, base) as cand:
            target = cand.path / FILES[index % len(FILES)]
            target.write_text(target.read_text() + f"\n# candidate {index}\n")
            commit = commit_signed(ws, cand, f"candidate {index}")
            cand.keep("candidates")
        made.append((commit, key))
    return made


def _jobs(ws: Workspace, made: list[tuple[str, AttemptKey]], remote: bool) -> list[CandidateJob]:
    base = generations.current(ws, "sample").commit
    return [candidate_job(ws, "sample", base, commit, key, full=True, remote=remote) for commit, key in made]


def _verify_timed(job: CandidateJob) -> tuple[Verified, float]:
    """A verification and how long it took where it ran."""
    started = time.monotonic()
    return verify_candidate(job), time.monotonic() - started


def _timed(executor: Executor, jobs: list[CandidateJob]) -> tuple[float, float]:
    """Seconds to verify every job through ``executor``, and how many ran at once on average (the jobs'
    own seconds over the wall time). Each must pass: a broken one is a broken bench."""
    started = time.monotonic()
    futures = [executor.submit(_verify_timed, job) for job in jobs]
    busy = 0.0
    for future in futures:
        found, seconds = future.result()
        busy += seconds
        if not found.report.ok:
            raise SystemExit(f"bench: a candidate's tests did not pass: {found.report.summary}")
    wall = time.monotonic() - started
    return wall, busy / wall


def measure_executors(base: Path, jobs: int, rounds: int) -> dict[str, float]:
    """Rounds of (1 local worker, 2 local workers, Ray on 2 nodes), interleaved so that load from outside
    the bench falls on all three alike; medians over the rounds."""
    ws = _workspace(base)
    warm = _candidates(ws, 2, "warm")
    made = _candidates(ws, jobs, "bench")
    local_jobs, remote_jobs = _jobs(ws, made, remote=False), _jobs(ws, made, remote=True)
    seconds: dict[str, list[float]] = {"local1": [], "local2": [], "ray": []}
    overlap: dict[str, list[float]] = {"local1": [], "local2": [], "ray": []}
    with LocalCluster() as cluster:
        os.environ.update(cluster.auth)  # before Ray reads it: this process has not connected yet
        with LocalExecutor(1) as one, LocalExecutor(2) as two, RayExecutor(cluster.address, resources=DOCKER) as ray:
            for executor, remote in ((one, False), (two, False), (ray, True)):
                _timed(executor, _jobs(ws, warm, remote=remote))  # image, environment, replica, workers
            for _ in range(rounds):
                for name, executor, jobs_of in (("local1", one, local_jobs), ("local2", two, local_jobs)):
                    wall, at_once = _timed(executor, jobs_of)
                    seconds[name].append(wall)
                    overlap[name].append(at_once)
                wall, at_once = _timed(ray, remote_jobs)
                seconds["ray"].append(wall)
                overlap["ray"].append(at_once)
    home, seed = Path(tempfile.gettempdir()) / f"converge-replicas-{os.getuid()}", seed_of(ws, "sample").id
    shutil.rmtree(home / seed)
    (home / f"{seed}.lock").unlink(missing_ok=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    figures = {
        "throughput_1_per_min": round(60 * jobs / median["local1"], 1),
        "throughput_2_per_min": round(60 * jobs / median["local2"], 1),
        "parallel_speedup": round(median["local1"] / median["local2"], 2),
        "jobs_at_once_2": round(statistics.median(overlap["local2"]), 2),
        "jobs_at_once_ray": round(statistics.median(overlap["ray"]), 2),
        "ray_per_job_s": round(median["ray"] / jobs, 3),
        "local_per_job_s": round(median["local2"] / jobs, 3),
    }
    figures["ray_overhead_s"] = round(figures["ray_per_job_s"] - figures["local_per_job_s"], 3)
    figures["bundle_kb"] = round(len(remote_jobs[0].bundle or b"") / 1024, 1)
    return figures


# --- best of N with the embedded model --------------------------------------------------------------------


def _no_unused_imports(tree: Path) -> bool:
    text = (tree / "inventory" / "stock.py").read_text()
    return "import os" not in text and "import sys" not in text


def _docstring(name: str) -> Callable[[Path], bool]:
    def check(tree: Path) -> bool:
        for path in (tree / "inventory").glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and node.name == name and ast.get_docstring(node):
                    return True
        return False

    return check


def _report_imports(tree: Path) -> bool:
    return "import json" not in (tree / "inventory" / "report.py").read_text()


TASKS: list[tuple[str, Callable[[Path], bool]]] = [
    ("Remove the unused imports os and sys from inventory/stock.py", _no_unused_imports),
    ("Remove the unused import json from inventory/report.py", _report_imports),
    ("Add a one-line docstring to the function normalise_sku in inventory/stock.py", _docstring("normalise_sku")),
    ("Add a one-line docstring to the function cheapest in inventory/report.py", _docstring("cheapest")),
]


def measure_solve_rate(base: Path, tasks: int) -> dict[str, float]:
    """Each task with 1, then 4 candidates per attempt: solved (promoted and its check holds), promoted
    (the gate took a change, whatever it did), and minutes per run."""
    figures: dict[str, float] = {"solve_tasks": tasks}
    for n in (1, 4):
        solved = promoted = 0
        started = time.monotonic()
        for number, (goal, check) in enumerate(TASKS[:tasks]):
            ws = _workspace(base / f"n{n}-{number}")
            deps = Deps(ws=ws, model_for=model_factory(ws), on_event=lambda _text: None)
            record = start_run(deps, "sample", goal, max_steps=1, auto_approve=True, candidates=n).record
            took = any(s.outcome == "promoted" for s in record.steps)
            promoted += took
            solved += took and check(ws.src / "sample")
        figures[f"solve_rate_n{n}"] = round(solved / tasks, 2)
        figures[f"promoted_rate_n{n}"] = round(promoted / tasks, 2)
        figures[f"run_min_n{n}"] = round((time.monotonic() - started) / 60 / tasks, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--solve-tasks", type=int, default=len(TASKS))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="converge-bench-scale-"))
    try:
        print(f"load_average_before: {os.getloadavg()[0]:.2f}", flush=True)
        figures = measure_executors(base / "executors", args.jobs, args.rounds)
        figures["load_average_after"] = round(os.getloadavg()[0], 2)
        for name, value in figures.items():
            print(f"{name}: {value}", flush=True)
        if args.solve_tasks:
            for name, value in measure_solve_rate(base / "solve", min(args.solve_tasks, len(TASKS))).items():
                print(f"{name}: {value}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
