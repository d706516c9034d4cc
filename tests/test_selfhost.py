"""Converge refining itself: the self gate (checks, never auto-approved), the canary, upgrade and rollback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import PolicyViolation, SandboxError, UsageError, VerificationFailed
from orchestrator.gate import review, submit
from orchestrator.sandbox.scripted import PytestRun, PytestScript, ScriptedBackend
from orchestrator.selfhost import canary, checks, host, install, nested
from orchestrator.store import changesets, generations
from orchestrator.store.setup import add_repo
from orchestrator.store.workspace import Workspace
from tests.conftest import ROOT, MakeRepo, converge, git

HELP_OLD = "Converge: let local models refine your code"
HELP_NEW = "Converge (self-refined): let local models refine your code"


def _passing_sandbox() -> ScriptedBackend:
    """A scripted sandbox whose tests pass (control flow only; the real sandbox is tested below)."""
    return ScriptedBackend(PytestScript([PytestRun(passed=["tests/test_x.py::test_ok"])]))


def _patch(repo: Path, rel: str, old: str, new: str, tmp: Path) -> Path:
    """A unified diff replacing ``old`` by ``new`` in ``rel`` of ``repo`` (the repo is left unchanged)."""
    target = repo / rel
    original = target.read_text()
    target.write_text(original.replace(old, new, 1))
    diff = git(repo, "diff")
    target.write_text(original)
    path = tmp / "change.patch"
    path.write_text(diff + "\n")
    return path


@pytest.fixture
def tiny_self(ws: Workspace, make_repo: MakeRepo, tmp_path: Path) -> tuple[Workspace, Path]:
    """A small stand-in for Converge's source registered as `self` (protected paths and all)."""
    src = make_repo(
        {
            "orchestrator/__init__.py": '"""stand-in."""\nVERSION = "1"\n',
            "tests/test_x.py": "def test_ok():\n    assert True\n",
            "tests/test_host.py": "import pytest\n\n\n@pytest.mark.docker\ndef test_on_the_host():\n    assert True\n",
            "pyproject.toml": '[project]\nname = "tiny"\nversion = "0"\ndependencies = []\n',
        },
        name="tiny-self",
    )
    add_repo(ws, "", is_self=True, self_source=src)
    return ws, src


def test_nested_backend_is_refused_outside_a_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(nested.SANDBOX_MARKER, raising=False)
    with pytest.raises(SandboxError, match="refused outside a sandbox"):
        nested.NestedBackend().start(object())


def test_self_changeset_is_never_auto_approved_and_needs_passing_checks(
    tiny_self: tuple[Workspace, Path], tmp_path: Path
) -> None:
    ws, src = tiny_self
    patch = _patch(src, "orchestrator/__init__.py", 'VERSION = "1"', 'VERSION = "2"', tmp_path)
    cs = submit.submit(ws, "self", patch, "bump", auto_approve=True, backend=_passing_sandbox())
    assert cs.status == "pending"  # auto-approval never applies to Converge itself
    with pytest.raises(PolicyViolation, match="a person approves it"):
        review.promote(ws, cs.id, decided_by=changesets.AUTO)
    with pytest.raises(VerificationFailed, match="no self-tests result"):
        review.approve(ws, cs.id)

    def store(ok: bool, commit: str) -> None:
        changesets.write_artifact(ws, cs.id, checks.SELF_TESTS, json.dumps({"commit": commit, "ok": True}).encode())
        canary = {"commit": commit, "ok": ok, "detail": "outcomes differ" if not ok else "same outcome"}
        changesets.write_artifact(ws, cs.id, checks.CANARY, json.dumps(canary).encode())

    store(False, cs.commit)
    with pytest.raises(VerificationFailed, match="canary did not pass"):
        review.approve(ws, cs.id)
    store(True, "0" * 40)
    with pytest.raises(VerificationFailed, match="for another commit"):
        review.approve(ws, cs.id)
    assert generations.current(ws, "self").number == 0
    store(True, cs.commit)
    done = review.approve(ws, cs.id)
    assert done.status == "approved"
    assert generations.current(ws, "self").commit == cs.commit


def _store_checks(ws: Workspace, cs_id: str, commit: str) -> None:
    for name in (checks.SELF_TESTS, checks.CANARY):
        changesets.write_artifact(ws, cs_id, name, json.dumps({"commit": commit, "ok": True}).encode())


def test_an_approved_self_change_whose_host_stage_fails_is_not_promoted(
    tiny_self: tuple[Workspace, Path], tmp_path: Path
) -> None:
    ws, src = tiny_self
    patch = _patch(src, "tests/test_host.py", "assert True", "assert False, 'broken on the host'", tmp_path)
    cs = submit.submit(ws, "self", patch, "break the host test", backend=_passing_sandbox())
    _store_checks(ws, cs.id, cs.commit)
    with pytest.raises(VerificationFailed, match=r"approved but not promoted: host stage failed: .*test_on_the_host"):
        review.approve(ws, cs.id)
    held = changesets.load(ws, cs.id)
    assert (held.status, held.generation) == ("approved", None) and "test_on_the_host" in str(held.reason)
    assert generations.current(ws, "self").number == 0, "the generation is untouched"
    result = host.HostTests.model_validate_json(changesets.artifact_path(ws, cs.id, host.HOST_TESTS).read_text())
    assert not result.ok and result.report.failed and result.commit == cs.commit
    with pytest.raises(VerificationFailed, match="host stage did not pass"):
        review.promote(ws, cs.id, decided_by=held.decided_by or "")
    refused = converge("-w", str(ws.root), "changeset", "approve", cs.id)  # tried again: fails again, says why
    assert refused.returncode == 1 and "test_on_the_host" in refused.stderr


def test_an_approved_self_change_whose_host_stage_passes_is_promoted(
    tiny_self: tuple[Workspace, Path], tmp_path: Path
) -> None:
    ws, src = tiny_self
    patch = _patch(src, "orchestrator/__init__.py", 'VERSION = "1"', 'VERSION = "2"', tmp_path)
    cs = submit.submit(ws, "self", patch, "bump", backend=_passing_sandbox())
    _store_checks(ws, cs.id, cs.commit)
    done = review.approve(ws, cs.id)
    assert (done.status, done.generation) == ("approved", 1)
    result = host.HostTests.model_validate_json(changesets.artifact_path(ws, cs.id, host.HOST_TESTS).read_text())
    assert result.ok and result.report.passed == ["tests/test_host.py::test_on_the_host"]
    assert result.user  # who ran them: nobody where the machine allows it, else this user, and why
    changesets.artifact_path(ws, cs.id, host.HOST_TESTS).unlink()
    with pytest.raises(VerificationFailed, match="host stage has not run"):
        install.upgrade(ws)  # `self upgrade` installs no generation whose host stage has not passed


def test_canary_outcomes_are_compared_strictly() -> None:
    same = canary.CanaryOutcome(status="completed", steps=["promoted"], tree="a" * 40, generation=1)
    other = same.model_copy(update={"tree": "b" * 40})
    assert canary._compare("c", "r", same, same, "").ok
    assert not canary._compare("c", "r", other, same, "").ok
    failed = same.model_copy(update={"status": "failed"})
    assert not canary._compare("c", "r", failed, failed, "").ok  # a broken reference proves nothing
    assert not canary._compare("c", "r", None, same, "candidate canary exited 1").ok


def test_rollback_without_a_previous_install_says_no(tiny_self: tuple[Workspace, Path]) -> None:
    ws, _src = tiny_self
    with pytest.raises(UsageError, match="no previous installation"):
        install.rollback(ws)
    proc = converge("-w", str(ws.root), "self", "rollback", "--json")
    assert proc.returncode == 2  # like `converge rollback` below generation 0
    assert "no previous installation" in proc.stderr


# --- end to end: a real change to Converge's own code -------------------------------------------------


def _converge_copy(dest: Path) -> Path:
    """A git repo holding this checkout's Converge, with a small suite so the self-tests stay quick."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache")
    for part in ("orchestrator", "agents", "policies", "workspace_template", "examples"):
        shutil.copytree(ROOT / part, dest / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    (dest / "tests").mkdir()
    (dest / "tests" / "test_cli.py").write_text(
        "from typer.testing import CliRunner\n\nfrom orchestrator.cli import app\n\n\n"
        "def test_help_names_the_tool():\n"
        "    result = CliRunner().invoke(app, ['--help'])\n"
        "    assert result.exit_code == 0\n"
        "    assert 'Converge' in result.output\n"
    )
    (dest / "tests" / "test_engine.py").write_text(  # the host stage runs the docker-marked ones
        "import pytest\n\nfrom orchestrator.sandbox.docker_backend import connect\n\n\n"
        "@pytest.mark.docker\n"
        "def test_the_engine_answers():\n"
        "    client = connect()\n"
        "    assert client.ping()\n"
        "    client.close()\n"
    )
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "converge")
    return dest


def _launcher_help(launcher: Path) -> str:
    proc = subprocess.run(
        [str(launcher), "--help"], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}
    )
    return proc.stdout


@pytest.mark.docker
def test_self_refinement_checked_approved_upgraded_and_rolled_back(ws: Workspace, tmp_path: Path) -> None:
    src = _converge_copy(tmp_path / "converge-src")
    add_repo(ws, "", is_self=True, self_source=src)
    first = install.upgrade(ws)
    launcher = Path(first["launcher"])
    assert first["current"]["generation"] == 0
    assert HELP_OLD in _launcher_help(launcher)

    patch = _patch(src, "orchestrator/cli/__init__.py", HELP_OLD, HELP_NEW, tmp_path)
    cs = submit.submit(ws, "self", patch, "cli: say it is self-refined", auto_approve=True)
    assert cs.status == "pending" and cs.verdict == "review"  # orchestrator/ is protected on self
    report = json.loads(changesets.artifact_path(ws, cs.id, changesets.REPORT).read_text())
    assert "-m not docker" in " ".join(report["command"]["argv"])

    refused = converge("-w", str(ws.root), "changeset", "approve", cs.id)
    assert refused.returncode == 1
    assert "no self-tests result" in refused.stderr

    checked = converge("-w", str(ws.root), "self", "check", cs.id, "--json")
    assert checked.returncode == 0, checked.stderr + checked.stdout[-3000:]
    doc = json.loads(checked.stdout)
    assert doc["self_tests"]["ok"] and doc["self_tests"]["report"]["passed"]
    canary = doc["canary"]
    assert canary["ok"], canary["detail"]
    assert canary["candidate"] == canary["running"]
    assert canary["candidate"]["status"] == "completed" and canary["candidate"]["steps"] == ["promoted"]
    stored = json.loads(changesets.artifact_path(ws, cs.id, checks.CANARY).read_text())
    assert stored["commit"] == cs.commit

    converge("-w", str(ws.root), "changeset", "approve", cs.id, check=True)
    stage = host.HostTests.model_validate_json(changesets.artifact_path(ws, cs.id, host.HOST_TESTS).read_text())
    assert stage.ok and stage.report.passed == ["tests/test_engine.py::test_the_engine_answers"]
    up = converge("-w", str(ws.root), "self", "upgrade", "--json", check=True)
    state = json.loads(up.stdout)
    assert state["changed"] and state["current"]["generation"] == 1
    assert state["previous"]["generation"] == 0
    assert HELP_NEW in _launcher_help(launcher)

    back = converge("-w", str(ws.root), "self", "rollback", "--json", check=True)
    assert json.loads(back.stdout)["current"]["generation"] == 0
    assert HELP_NEW not in _launcher_help(launcher)
    assert HELP_OLD in _launcher_help(launcher)
    again = converge("-w", str(ws.root), "self", "upgrade", "--json", check=True)
    assert json.loads(again.stdout)["current"]["generation"] == 1
    assert HELP_NEW in _launcher_help(launcher)
