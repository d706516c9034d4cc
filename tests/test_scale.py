"""Executors on a real Ray cluster started here (a head and a worker node, one CPU each, both declaring
``docker``): eval-like jobs fanned out over both nodes and back as typed values, candidates of a step
verified on the nodes in real Docker sandboxes from git bundles, a worker node SIGKILLed mid-task
(the task runs again on the head, or is reported failed), and the errors that name what is wrong.
The local executor and the factory that picks one from ``[scale]`` are tested beside them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, as_completed
from pathlib import Path

import pytest
import ray

from orchestrator.errors import ModelError, SandboxError, ScaleError
from orchestrator.gate.rank import Ranking
from orchestrator.loop.adr import adr_path
from orchestrator.scale.factory import Deferred, executor_for, is_remote
from orchestrator.scale.local import LocalExecutor
from orchestrator.scale.model_host import host_models
from orchestrator.scale.ray_executor import RayExecutor
from orchestrator.store import changesets, runs
from orchestrator.store.replica import replica, seed_of
from orchestrator.store.workspace import Workspace
from tests.conftest import ROOT, git
from tests.driving import Deps, start_run
from tests.raycluster import LocalCluster, _free_port
from tests.scale_jobs import Ask, Trial, TrialJob, ask_model, broken_trial, run_trial
from tests.scripted import ScriptedBackend as ScriptedModel
from tests.scripted import edit, plan

TESTS = ROOT / "tests"  # shipped to the nodes with the jobs, as Converge's own package is


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as started, pytest.MonkeyPatch.context() as env:
        for name, value in started.auth.items():
            env.setenv(name, value)
        yield started


@pytest.fixture
def executor(cluster: LocalCluster) -> Iterator[RayExecutor]:
    with RayExecutor(cluster.address, resources={"docker": 1}, retries=3, ship=[TESTS]) as ex:
        yield ex


def _nodes() -> dict[str, str]:
    """Node id -> ``head`` or ``worker``, for the nodes alive now."""
    alive = [n for n in ray.nodes() if n["Alive"]]
    return {n["NodeID"]: "head" if "head_node" in n["Resources"] else "worker" for n in alive}


# --- fan-out -----------------------------------------------------------------------------------------


def test_eval_like_jobs_fan_out_over_both_nodes_and_come_back_typed(executor: RayExecutor) -> None:
    assert executor.workers == 2 and is_remote(executor)
    futures = {executor.submit(run_trial, TrialJob(task=f"t{n}", seconds=1.0)): f"t{n}" for n in range(4)}
    done = [future.result() for future in as_completed(futures)]
    assert all(isinstance(trial, Trial) for trial in done), "pydantic values, rebuilt on this side"
    assert sorted(t.task for t in done) == ["t0", "t1", "t2", "t3"]
    assert {_nodes()[t.node] for t in done} == {"head", "worker"}, "both nodes took jobs"
    assert len({t.pid for t in done}) >= 2


def test_a_job_that_raises_comes_back_as_its_own_error(executor: RayExecutor) -> None:
    with pytest.raises(SandboxError, match="t9: no Docker engine answers on this node"):
        executor.submit(broken_trial, TrialJob(task="t9")).result()


def test_model_calls_of_jobs_on_either_node_are_answered_on_the_drivers_node(
    executor: RayExecutor, ws: Workspace, tmp_path: Path
) -> None:
    answers = tmp_path / "answers.jsonl"
    lines = [{"text": f"answer {n}"} for n in range(4)] + [{"error": "the model is tired"}]
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    host = host_models(ws)
    model = f"replay:{answers}"
    futures = [executor.submit(ask_model, Ask(host, model, f"q{n}", seconds=1.0)) for n in range(4)]
    asked = [future.result() for future in futures]
    assert sorted(a.text for a in asked) == [f"answer {n}" for n in range(4)], "one resident model answered all"
    assert {a.answered_on for a in asked} == {ray.get_runtime_context().get_node_id()}, "on the driver's node"
    assert {_nodes()[a.asked_on] for a in asked} == {"head", "worker"}
    with pytest.raises(ModelError, match="the model is tired"):
        executor.submit(ask_model, Ask(host, model, "q5")).result()


# --- candidates of a step, verified on the nodes ---------------------------------------------------------

STOCK = "inventory/stock.py"
UNUSED = "import os\nimport sys\n"
NORMALISE = '    return sku.strip().upper().replace(" ", "-")\n'


@pytest.mark.docker
def test_candidates_of_a_step_are_verified_on_the_cluster_from_bundles(
    cluster: LocalCluster, sample_ws: Workspace
) -> None:
    step = ("Drop the os and sys lines from stock.py", "coder", [STOCK])
    model = ScriptedModel(
        [plan(step)],
        [
            edit(STOCK, NORMALISE, "    return sku\n"),  # breaks test_add_and_count_normalises_sku
            edit(STOCK, UNUSED, "# nothing imported\n"),
            edit(STOCK, UNUSED, ""),
        ],
    )
    seed = seed_of(sample_ws, "sample")
    try:
        with RayExecutor(cluster.address, resources={"docker": 1}) as ex:
            deps = Deps(ws=sample_ws, model_for=model.factory(), executor=ex)
            result = start_run(deps, "sample", "tidy", auto_approve=True, run_id="r-ray", candidates=3)
        assert result.record.status == "completed", result.record.reason
        ranking = Ranking.model_validate_json((runs.run_dir(sample_ws, "r-ray") / "1-1.ranking.json").read_text())
        assert [(s.index, s.won) for s in ranking.standings] == [(3, True), (2, False), (1, False)]
        assert ranking.standing(1).why.startswith("tests: ") and "1 failed" in ranking.standing(1).why
        [cs] = changesets.list_changesets(sample_ws)
        assert cs.status == "approved" and "import os" not in (sample_ws.src / "sample" / STOCK).read_text()
        assert "candidate 3 of 3 went on" in adr_path(sample_ws, "r-ray").read_text()
        here = replica(seed).repo_path("sample")  # what the node on this machine received: bundles, fetched
        incoming = git(here, "for-each-ref", "--format=%(refname)", "refs/converge/incoming/").splitlines()
        assert sorted(ref.rsplit("/", 1)[1] for ref in incoming) == [f"r-ray-1c{n}-1" for n in (1, 2, 3)]
        assert git(here, "cat-file", "-t", cs.commit) == "commit", "the winner came as a bundle"
    finally:
        home = Path(tempfile.gettempdir()) / f"converge-replicas-{os.getuid()}"
        shutil.rmtree(home / seed.id, ignore_errors=True)
        (home / f"{seed.id}.lock").unlink(missing_ok=True)


# --- a node that dies mid-task -------------------------------------------------------------------------


def _until_started(marks: Path, task: str, patience: float = 60.0) -> str:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        for line in marks.read_text().splitlines() if marks.exists() else []:
            name, node = line.split()
            if name == task:
                return node
        time.sleep(0.1)
    raise AssertionError(f"{task} never started")


def _one_on_each_node(ex: RayExecutor, marks: Path, release: Path) -> dict[str, Future[Trial]]:
    """Two trials that wait for ``release``, by the node each started on (one CPU each: one per node)."""
    futures = [ex.submit(run_trial, TrialJob(task=n, started=str(marks), wait_for=str(release))) for n in "ab"]
    started = [_until_started(marks, name) for name in "ab"]
    nodes = _nodes()
    return {nodes[node]: future for node, future in zip(started, futures, strict=True)}


def test_a_task_on_a_killed_worker_node_runs_again_on_the_head(
    cluster: LocalCluster, executor: RayExecutor, tmp_path: Path
) -> None:
    marks, release = tmp_path / "started", tmp_path / "release"
    on = _one_on_each_node(executor, marks, release)
    assert set(on) == {"head", "worker"}
    try:
        cluster.kill_worker()
        release.touch()
        again = on["worker"].result(timeout=120)
        assert isinstance(again, Trial) and _nodes()[again.node] == "head", "run again on the surviving node"
        assert _nodes()[on["head"].result(timeout=60).node] == "head"
    finally:
        release.touch()
        cluster.start_worker()


def test_a_task_on_a_killed_worker_node_without_retries_is_reported_failed(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    marks, release = tmp_path / "started", tmp_path / "release"
    with RayExecutor(cluster.address, resources={"docker": 1}, retries=0, ship=[TESTS]) as ex:
        on = _one_on_each_node(ex, marks, release)
        assert set(on) == {"head", "worker"}
        try:
            cluster.kill_worker()
            with pytest.raises(ScaleError, match="run_trial: lost with its Ray worker or node after 0 retries"):
                on["worker"].result(timeout=120)
            release.touch()
            assert on["head"].result(timeout=60).task in ("a", "b"), "the other node's task is untouched"
        finally:
            release.touch()
            cluster.start_worker()


# --- errors that name what is wrong ---------------------------------------------------------------------


def test_a_cluster_that_does_not_answer_is_named_with_its_address(sample_ws: Workspace) -> None:
    address = f"127.0.0.1:{_free_port()}"
    config = sample_ws.state / "converge.toml"
    config.write_text(config.read_text() + f'\n[scale]\nengine = "ray"\naddress = "{address}"\nconnect_timeout = 2\n')
    with pytest.raises(ScaleError, match=f"address '{address}': no Ray cluster answers there"):
        executor_for(sample_ws)
    deferred = Deferred(sample_ws)
    assert deferred.remote, "known before anything connects"
    with pytest.raises(ScaleError, match=address):
        deferred.submit(run_trial, TrialJob(task="t"))


def test_a_resource_no_node_offers_is_named(cluster: LocalCluster) -> None:
    with pytest.raises(ScaleError, match="no node offers resource 'gpu'"):
        RayExecutor(cluster.address, resources={"gpu": 1})


# --- the local executor, chosen by default ------------------------------------------------------------------


def test_the_default_executor_is_local_and_bounded_by_the_cores_and_memory(sample_ws: Workspace) -> None:
    config = sample_ws.state / "converge.toml"
    config.write_text(config.read_text() + '\n[sandbox]\nmemory = "1t"\n')
    ex = executor_for(sample_ws, workers=8)
    try:
        assert isinstance(ex, LocalExecutor) and not is_remote(ex)
        assert ex.workers == 1, "no 1 TiB sandbox fits twice in this machine's memory"
        assert ex.submit(run_trial, TrialJob(task="here")).result() == Trial(task="here", node="local", pid=os.getpid())
    finally:
        ex.close()
