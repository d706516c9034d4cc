"""`converge doctor`: the check registry, the sandbox checks, and --clean on real orphans."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from orchestrator.errors import ModelError
from orchestrator.models.registry import add_model, embedded_model_path, use_model
from orchestrator.ops import doctor
from orchestrator.ops.doctor import Check, DoctorContext, register_check, run_checks
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.factory import open_sandbox
from orchestrator.sandbox.scripted import ScriptedBackend
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace
from orchestrator.store.worktrees import generation_worktree
from tests.conftest import converge


@pytest.fixture
def scratch_checks() -> Iterator[None]:
    """Checks registered by a test are removed after it."""
    saved = dict(doctor._REGISTRY)
    yield
    doctor._REGISTRY.clear()
    doctor._REGISTRY.update(saved)


def _doctor(
    ws: Workspace | None, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, dict]:
    where = ["-w", str(ws.root)] if ws is not None else []
    proc = converge(*where, "doctor", "--json", *args, env=env, cwd=cwd)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_other_modules_can_add_and_replace_checks(ws: Workspace, scratch_checks: None) -> None:
    @register_check("gpu")
    def _gpu(ctx: DoctorContext) -> Check:
        return Check("gpu", "warning", "no GPU: models run on the CPU")

    @register_check("models")
    def _models(ctx: DoctorContext) -> Check:
        raise ModelError("models/coder.gguf: not a GGUF file")

    checks = {c.name: c for c in run_checks(DoctorContext(ws))}
    assert checks["gpu"].status == "warning"
    assert checks["models"].status == "missing" and "not a GGUF file" in checks["models"].detail
    assert {"workspace", "keys", "sandbox.engine", "sandbox.image"} <= set(checks)


@pytest.mark.docker
def test_doctor_reports_each_item_with_its_fix(sample_ws: Workspace) -> None:
    with generation_worktree(sample_ws, "sample") as tree, open_sandbox(sample_ws, "sample", tree, label="warm"):
        pass  # the image exists now
    code, report = _doctor(sample_ws)
    checks = _by_name(report)
    assert checks["sandbox.engine"]["status"] == "ready"
    assert checks["sandbox.image"]["status"] == "ready" and "converge-sandbox:" in checks["sandbox.image"]["detail"]
    assert checks["keys"]["status"] == "ready"
    assert checks["sandbox.policy"]["detail"].startswith("fully hardened")
    assert code == (0 if report["ok"] else 1)
    assert report["ok"] == all(c["status"] != "missing" for c in report["checks"])
    for check in report["checks"]:
        assert check["status"] != "missing" or check["fix"], check


@pytest.mark.docker
def test_doctor_shows_a_loosened_item(sample_ws: Workspace) -> None:
    config = sample_ws.state / "converge.toml"
    config.write_text(config.read_text() + '\n[sandbox.allow]\nsample = ["network-deps"]\n')
    _, report = _doctor(sample_ws)
    loosened = _by_name(report)["sandbox.allow.sample"]
    assert loosened["status"] == "warning" and "network-deps" in loosened["detail"]


def test_doctor_without_an_engine_says_how_to_fix_it(sample_ws: Workspace) -> None:
    code, report = _doctor(sample_ws, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    engine = _by_name(report)["sandbox.engine"]
    assert code == 1 and not report["ok"]
    assert engine["status"] == "missing" and "make setup" in engine["fix"]


def test_doctor_outside_a_workspace(tmp_path: Path) -> None:
    code, report = _doctor(None, cwd=tmp_path)
    assert code == 1 and _by_name(report)["workspace"]["status"] == "missing"


@pytest.mark.docker
def test_doctor_clean_removes_orphans_of_dead_processes(sample_ws: Workspace) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    fake = ScriptedBackend(lambda argv: CommandResult(argv=argv, exit_code=0, duration=0.0))
    with generation_worktree(sample_ws, "sample") as tree:
        with open_sandbox(sample_ws, "sample", tree, label="spec", backend=fake):
            spec = fake.started[0]
        backend = DockerBackend()
        try:
            orphan = backend.start(replace(spec, labels={**spec.labels, "converge.pid": str(dead.pid)}))
        finally:
            backend.close()
        stale = sample_ws.cache / "worktrees" / f"sandbox-sample-{dead.pid}-0123abcd"
        stale.mkdir()
        _, report = _doctor(sample_ws)
        assert _by_name(report)["sandbox.orphans"]["status"] == "warning"
        assert "1 orphan container" in _by_name(report)["sandbox.orphans"]["detail"]
        _, report = _doctor(sample_ws, "--clean")
        assert f"worktree {stale}" in report["cleaned"]
        assert any(item.startswith("container ") for item in report["cleaned"])
        with contextlib.closing(docker.from_env()) as engine:
            left = engine.containers.list(
                all=True, ignore_removed=True, filters={"label": [f"converge.workspace={sample_ws.root}"]}
            )
        assert orphan.id not in [c.id for c in left]
        orphan.close()  # its container is gone already; this releases the attached stream
        assert not stale.exists()
        _, report = _doctor(sample_ws)
        assert _by_name(report)["sandbox.orphans"]["status"] == "ready"


def test_models_check_names_each_role_and_a_missing_file(ws: Workspace, tmp_path: Path) -> None:
    ready = {c.name: c for c in run_checks(DoctorContext(ws=ws)) if c.name.startswith("models.")}
    assert set(ready) == {"models.planner", "models.coder", "models.reviewer"}
    assert all(c.status == "ready" and c.detail.startswith("default (") for c in ready.values())
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(embedded_model_path().read_bytes())
    add_model(ws, copy, "mine")
    use_model(ws, "mine", "coder")
    copy.unlink()
    coder = next(c for c in run_checks(DoctorContext(ws=ws)) if c.name == "models.coder")
    assert coder.status == "missing"
    assert str(copy) in coder.detail
    assert coder.fix is not None and "converge model add" in coder.fix
