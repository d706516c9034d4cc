"""The host stage of a `self` changeset: after a person approved it, its Docker-marked tests run on the host.

They cannot run in the sandbox (they need the engine's socket, which would make a sandbox root on
the host); the person's signature is what a self change relies on from here on, as `self upgrade`
installs it on the host anyway. The approved commit is installed in a throwaway environment, its
``docker`` tests run against the real engine under a timeout (as an unprivileged user where the
machine has one that may use the engine), and every container they leave is reaped.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from orchestrator.errors import SandboxError, VerificationFailed
from orchestrator.sandbox.base import LABEL
from orchestrator.sandbox.crosscheck import parse_junit
from orchestrator.sandbox.docker_backend import connect
from orchestrator.selfhost.env import build_env
from orchestrator.store import changesets
from orchestrator.store.changesets import Changeset
from orchestrator.store.reports import CommandResult, TestReport
from orchestrator.store.storage import read_json
from orchestrator.store.workspace import Workspace

HOST_TESTS = "host-tests.json"
HOST_MARKERS = "docker"
HOST_TIMEOUT = 3600.0
UNPRIVILEGED_UID = 65534  # nobody


class HostTests(BaseModel):
    """The host stage's artifact: which commit, whether its Docker tests passed, as whom, what was reaped."""

    commit: str
    ok: bool
    summary: str
    report: TestReport
    user: str
    seconds: float
    reaped: int = 0


def run_host_stage(ws: Workspace, cs: Changeset, timeout: float = HOST_TIMEOUT) -> HostTests:
    """Install ``cs``'s commit in a throwaway environment and run its Docker-marked tests there; store the result."""
    stage = ws.cache / "self" / "host-stage" / f"{cs.id}-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    started = time.monotonic()
    try:
        env_dir = build_env(ws, cs.repo, cs.commit, stage / "env", probe="orchestrator")
        (stage / "tmp").mkdir(parents=True)
        user, prefix = _as_whom(stage, env_dir / "bin" / "python")
        junit = stage / "tmp" / "junit.xml"
        argv = [str(env_dir / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", HOST_MARKERS]
        argv += ["-o", "junit_family=xunit1", f"--junitxml={junit}", f"--basetemp={stage / 'tmp' / 'pytest'}"]
        command = _run([*prefix, *argv], env_dir / "src", _environment(stage), timeout)
        report = _report(command, junit)
        reaped = _reap(stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result = HostTests(
        commit=cs.commit,
        ok=report.ok and bool(report.passed),
        summary=report.summary if report.ran else f"tests did not run: {command.stderr_tail.strip()[-300:]}",
        report=report,
        user=user,
        seconds=round(time.monotonic() - started, 1),
        reaped=reaped,
    )
    changesets.write_artifact(ws, cs.id, HOST_TESTS, result.model_dump_json(indent=2).encode())
    return result


def require_host_stage(ws: Workspace, cs: Changeset) -> None:
    """Refuse a `self` changeset whose host stage has not passed on its commit (fail closed)."""
    path = changesets.artifact_path(ws, cs.id, HOST_TESTS)
    if not ws.repo(cs.repo).is_self:
        return
    if not path.is_file():
        raise VerificationFailed(f"changeset {cs.id} on self: its host stage has not run; approve it again")
    data = read_json(path)
    if data.get("commit") != cs.commit:
        raise VerificationFailed(f"changeset {cs.id} on self: the host stage result is for another commit")
    if data.get("ok") is not True:
        failing = ", ".join((data.get("report") or {}).get("failed", [])[:5]) or data.get("summary", "failed")
        raise VerificationFailed(f"changeset {cs.id} on self: the host stage did not pass ({failing})")


def _as_whom(stage: Path, python: Path) -> tuple[str, list[str]]:
    """As ``nobody`` with the engine's group when this process is root, the group exists and ``nobody`` can run
    the interpreter; else as this process's user (the artifact says which, and why)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return f"{_me()} (not root: no other user to switch to)", []
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        return f"{_me()} (no docker group to give an unprivileged user)", []
    prefix = [setpriv, f"--reuid={UNPRIVILEGED_UID}", f"--regid={docker_gid}", "--clear-groups", "--inh-caps=-all"]
    # the same interpreter as ours, not another one found when ours lies in a directory nobody may enter
    code = "import sys, pytest, orchestrator; print(sys.base_prefix)"
    probe = subprocess.run([*prefix, str(python), "-c", code], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or probe.stdout.strip() != sys.base_prefix:
        return f"{_me()} (nobody cannot run this Python, {sys.base_prefix})", []
    for path in [stage, *stage.rglob("*")]:
        os.chown(path, UNPRIVILEGED_UID, docker_gid, follow_symlinks=False)
    return "nobody (group docker)", prefix


def _me() -> str:
    return f"uid {os.geteuid()}"


def _environment(stage: Path) -> dict[str, str]:
    """A clean environment: nothing of the person's CONVERGE_* settings, a home of its own."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "DOCKER_HOST", "TZ")}
    home = stage / "tmp" / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {**keep, "HOME": str(home), "TMPDIR": str(stage / "tmp"), "CI": "true"}


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> CommandResult:
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return CommandResult(argv=argv, exit_code=124, duration=timeout, timed_out=True, stdout_tail=out[-4000:])
    return CommandResult(
        argv=argv,
        exit_code=proc.returncode,
        duration=time.monotonic() - started,
        stdout_tail=proc.stdout[-4000:],
        stderr_tail=proc.stderr[-4000:],
    )


def _report(command: CommandResult, junit: Path) -> TestReport:
    if not junit.is_file():
        return TestReport(ran=False, command=command, selection="selected")
    return TestReport(ran=True, command=command, selection="selected", **parse_junit(junit.read_text()))


def _reap(stage: Path) -> int:
    """Remove every sandbox container the stage's tests started (their workspaces live under ``stage``)."""
    try:
        client = connect()
    except SandboxError:
        return 0
    removed = 0
    try:
        for container in client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{LABEL}=1"]}):
            if container.labels.get("converge.workspace", "").startswith(str(stage)):
                container.remove(force=True)
                removed += 1
    finally:
        client.close()
    return removed
