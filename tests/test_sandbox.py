"""The sandbox against the real Docker engine: every hardening item, proven by trying to break it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from orchestrator.config import SandboxConfig
from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import Sandbox
from orchestrator.sandbox.crosscheck import parse_junit
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.env import declared_requirements, host_closure
from orchestrator.sandbox.factory import open_sandbox
from orchestrator.sandbox.image import resolve
from orchestrator.sandbox.scripted import ScriptedBackend
from orchestrator.store.reports import CommandResult
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.workspace import Workspace
from orchestrator.store.worktrees import generation_worktree
from tests.conftest import SAMPLE, converge, git

pytestmark = pytest.mark.docker

TESTS_PY = """\
import pytest

def test_ok():
    assert 1 + 1 == 2

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


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    yield engine
    engine.close()


def _containers(ws: Workspace) -> list[str]:
    with contextlib.closing(docker.from_env()) as engine:
        found = engine.containers.list(
            all=True, ignore_removed=True, filters={"label": [f"converge.workspace={ws.root}"]}
        )
    return [c.id for c in found]


def _digest_tree(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Workspace]:
    """A workspace with the sample repo registered and a candidate worktree of it (shared by the module)."""
    base = tmp_path_factory.mktemp("sbx")
    src = base / "sample-src"
    subprocess.run(["cp", "-r", str(SAMPLE), str(src)], check=True)
    (src / "tests" / "test_mixed.py").write_text(TESTS_PY)
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "initial")
    ws = init_workspace(base / "ws")
    add_repo(ws, str(src), name="sample")
    tree = ws.cache / "worktrees" / "cand-1"
    git(ws.src / "sample", "worktree", "add", "-q", "--detach", str(tree), "HEAD")
    return {"ws": ws, "tree": tree, "common": ws.src / "sample" / ".git", "base": base}


@pytest.fixture
def ws(env: dict[str, Path | Workspace]) -> Workspace:  # overrides conftest's: the shared one
    value = env["ws"]
    assert isinstance(value, Workspace)
    return value


@pytest.fixture
def tree(env: dict[str, Path | Workspace]) -> Path:
    value = env["tree"]
    assert isinstance(value, Path)
    return value


@pytest.fixture(autouse=True)
def host_unchanged(env: dict[str, Path | Workspace]) -> Iterator[None]:
    """Every test leaves the host as it found it and no container behind."""
    ws, common = env["ws"], env["common"]
    assert isinstance(ws, Workspace) and isinstance(common, Path)
    before = (
        sorted(os.listdir("/")),
        sorted(os.listdir(Path.home())),
        _digest_tree(common / "hooks"),
        (common / "config").read_bytes(),
        _digest_tree(ws.state / "keys"),
    )
    yield
    after = (
        sorted(os.listdir("/")),
        sorted(os.listdir(Path.home())),
        _digest_tree(common / "hooks"),
        (common / "config").read_bytes(),
        _digest_tree(ws.state / "keys"),
    )
    assert after == before
    assert _settled(ws) == []


def _settled(ws: Workspace, within: float = 10.0) -> list[str]:
    """The workspace's containers once the engine has removed the closed ones (it does so by itself)."""
    deadline = time.monotonic() + within
    while (left := _containers(ws)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _box(ws: Workspace, tree: Path, **limits: object) -> Iterator[Sandbox]:
    cfg = SandboxConfig.model_validate({"timeout": 30, **limits})
    with open_sandbox(ws, "sample", tree, label="test", config=cfg) as box:
        yield box


@pytest.fixture
def box(ws: Workspace, tree: Path) -> Iterator[Sandbox]:
    yield from _box(ws, tree)


def py(code: str) -> list[str]:
    return ["python", "-c", code]


def test_runs_as_non_root_with_only_the_explicit_environment(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERGE_LEAK_PROBE", "host-secret")
    result = box.run(py("import os, json; print(json.dumps({'uid': os.getuid(), 'env': dict(os.environ)}))"))
    assert result.ok, result.stderr_tail
    seen = json.loads(result.stdout_tail)
    assert seen["uid"] != 0
    assert set(seen["env"]) == set(box.spec.environment) | {"HOSTNAME"}
    assert "host-secret" not in result.stdout_tail
    status = box.run(["cat", "/proc/self/status"]).stdout_tail
    assert "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    sockets = box.run(["sh", "-c", "ls /var/run/docker.sock /run/docker.sock"])
    assert sockets.exit_code != 0


def test_network_is_unreachable(box: Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the host can reach it
        probe = (
            "import socket, sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
            "except OSError as e:\n print('refused', e)\nelse:\n print('CONNECTED')"
        )
        local = box.run(["python", "-c", probe, "127.0.0.1", str(port)])
        public = box.run(["python", "-c", probe, "1.1.1.1", "53"])
    finally:
        listener.close()
    assert "refused" in local.stdout_tail and "CONNECTED" not in local.stdout_tail
    assert "refused" in public.stdout_tail and "CONNECTED" not in public.stdout_tail
    interfaces = box.run(["cat", "/proc/net/dev"]).stdout_tail
    assert [line.split(":")[0].strip() for line in interfaces.splitlines()[2:]] == ["lo"]
    own = box.run(["readlink", "/proc/self/ns/net"]).stdout_tail.strip()
    assert own.startswith("net:[") and own != os.readlink("/proc/self/ns/net")  # a namespace of its own
    loopback = "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n"
    loopback += "socket.create_connection(s.getsockname(), timeout=3).close()\nprint('loopback works')"
    assert box.run(["python", "-c", loopback]).stdout_tail == "loopback works\n"  # tests may serve locally


def test_only_the_worktree_and_tmp_are_writable(box: Sandbox, tree: Path) -> None:
    for target in ("/etc/evil", "/usr/evil", "/evil", "/home/sandbox/evil", "/env/evil", "/var/tmp/evil"):
        result = box.run(["sh", "-c", f"echo x > {target}"])
        assert result.exit_code != 0, target
        assert "Read-only file system" in result.stderr_tail or "Permission denied" in result.stderr_tail
    assert not Path("/etc/evil").exists() and not Path("/evil").exists()
    assert box.run(["sh", "-c", "echo data > /tmp/scratch && cat /tmp/scratch"]).stdout_tail == "data\n"
    assert box.run(["sh", "-c", "mkdir -p made && echo hi > made/new.txt"]).ok
    try:
        assert (tree / "made" / "new.txt").read_text() == "hi\n"
    finally:
        subprocess.run(["rm", "-rf", str(tree / "made")], check=True)


def test_git_metadata_is_read_only(box: Sandbox, env: dict[str, Path | Workspace]) -> None:
    common = env["common"]
    assert isinstance(common, Path)
    for target in (f"{common}/hooks/pre-commit", f"{common}/config", "/src/.git", f"{common}/HEAD"):
        result = box.run(["sh", "-c", f"echo 'rm -rf /' > {target}"])
        assert result.exit_code != 0, target
    assert box.run(["git", "config", "core.hooksPath", "/tmp"]).exit_code != 0
    assert box.run(["rm", "-f", "/src/.git"]).exit_code != 0
    status = box.run(["git", "status", "--porcelain"])  # git itself still reads the repo
    assert status.ok, status.stderr_tail


def test_host_home_and_workspace_keys_are_invisible(
    box: Sandbox, ws: Workspace, env: dict[str, Path | Workspace]
) -> None:
    key = ws.state / "keys" / "workspace_ed25519"
    assert key.is_file()
    outside = env["base"]
    assert isinstance(outside, Path)
    (outside / "secret.txt").write_text("do not read")
    for target in (key, ws.state / "converge.toml", outside / "secret.txt"):
        result = box.run(["cat", str(target)])
        assert result.exit_code != 0, target
    listing = box.run(py(f"import os; print(os.listdir({str(Path.home())!r}))"))
    visible = eval(listing.stdout_tail) if listing.ok else []
    prefix = Path(sys.base_prefix)
    allowed = {prefix.relative_to(Path.home()).parts[0]} if prefix.is_relative_to(Path.home()) else set()
    assert set(visible) <= allowed


def test_endless_loop_is_killed_at_the_timeout(box: Sandbox) -> None:
    started = time.monotonic()
    result = box.run(["sh", "-c", "sleep 1000 & while :; do :; done"], timeout=2)
    assert result.timed_out and not result.ok
    assert 2 <= result.duration < 10 and time.monotonic() - started < 15
    left = box.run(
        py("import os; print([p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', str(os.getpid()))])")
    )
    assert left.stdout_tail.strip() == "[]"  # the background sleep died too


def test_fork_bomb_is_stopped_by_the_pids_limit(ws: Workspace, tree: Path) -> None:
    count = (
        "import os, time\nn = 0\ntry:\n while True:\n  if os.fork() == 0:\n"
        "   os.closerange(0, 3); time.sleep(60); os._exit(0)\n  n += 1\nexcept OSError:\n print(n)"
    )
    for box in _box(ws, tree, pids=64):
        forked = box.run(py(count), timeout=30)
        assert forked.ok, forked.stderr_tail
        assert 0 < int(forked.stdout_tail) < 64
        bomb = box.run(["sh", "-c", "bomb() { bomb | bomb & }; bomb"], timeout=5)
        assert bomb.timed_out or bomb.exit_code != 0
        assert box.run(["echo", "still here"]).stdout_tail == "still here\n"
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_memory_hog_is_oom_killed_and_reported(ws: Workspace, tree: Path) -> None:
    for box in _box(ws, tree, memory="128m"):
        hog = box.run(py("x = bytearray(512 * 1024 * 1024); print('survived')"))
        assert hog.oom_killed and not hog.timed_out and not hog.ok
        assert "survived" not in hog.stdout_tail
        fine = box.run(py("x = bytearray(16 * 1024 * 1024); print('ok')"))
        assert fine.ok and not fine.oom_killed


def test_ten_megabytes_of_output_come_back_truncated_with_a_marker(box: Sandbox) -> None:
    result = box.run(py("import sys; sys.stdout.write('x' * 10_000_000 + 'END')"), output_limit=1_000_000)
    assert result.ok and result.truncated
    assert result.stdout_tail.startswith("[converge: output truncated, 9000003 earlier bytes dropped]")
    assert result.stdout_tail.endswith("xEND") and len(result.stdout_tail) < 1_001_000


def test_runner_reports_missing_programs_and_keeps_both_streams(box: Sandbox) -> None:
    missing = box.run(["no-such-program", "--flag"])
    assert missing.exit_code == 127 and "no-such-program" in missing.stderr_tail
    both = box.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (both.exit_code, both.stdout_tail, both.stderr_tail) == (3, "out\n", "err\n")
    signalled = box.run(["sh", "-c", "kill -TERM $$"])
    assert signalled.exit_code == 128 + 15


def test_a_daemon_holding_the_output_pipe_does_not_hold_the_command(box: Sandbox) -> None:
    result = box.run(["sh", "-c", "sleep 600 & echo started"], timeout=60)
    assert result.ok and result.stdout_tail == "started\n" and result.duration < 10


def test_commands_cannot_reach_the_runners_stream(box: Sandbox) -> None:
    """The runner (PID 1, same uid) is not dumpable: its descriptors are out of a command's reach."""
    probe = box.run(py("import os; print(os.listdir('/proc/1/fd'))"))
    assert probe.exit_code != 0 and "Permission denied" in probe.stderr_tail
    forged = box.run(["sh", "-c", "echo '{\"id\": 99}' > /proc/1/fd/1"])
    assert forged.exit_code != 0
    assert box.run(["echo", "after"]).stdout_tail == "after\n"


def test_a_killed_runner_is_an_error_not_a_result(ws: Workspace, tree: Path, client: docker.DockerClient) -> None:
    for box in _box(ws, tree):
        (container_id,) = _containers(ws)
        container = client.containers.get(container_id)
        killer = threading.Timer(1.0, container.kill)
        killer.start()
        with pytest.raises(SandboxError, match="runner lost while running 'sleep'"):
            box.run(["sleep", "30"])
        killer.join()


def test_pytest_runs_inside_and_junit_becomes_test_ids(box: Sandbox) -> None:
    report = box.run_tests(["tests/test_mixed.py"])
    assert report.ran and not report.ok and report.selection == "selected"
    assert report.passed == [
        "tests/test_mixed.py::test_ok",
        "tests/test_mixed.py::TestGroup::test_param[1]",
        "tests/test_mixed.py::TestGroup::test_param[2]",
    ]
    assert report.failed == ["tests/test_mixed.py::test_bad"]
    assert report.skipped == ["tests/test_mixed.py::test_skipped"]
    assert report.command is not None and report.command.exit_code == 1
    good = box.run_tests(["tests/test_mixed.py::test_ok", "tests/test_stock.py"])
    assert good.ok, good.command
    assert "tests/test_stock.py::test_value_sums_prices" in good.passed
    assert box.run(["git", "status", "--porcelain"]).stdout_tail == ""  # no caches left in the worktree


def test_fail_closed_without_an_engine(ws: Workspace, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxError, match="make setup"), open_sandbox(ws, "sample", tree, label="x"):
        pytest.fail("a sandbox opened without an engine")
    monkeypatch.delenv("DOCKER_HOST")
    cfg = SandboxConfig(backend="bubblewrap")
    with (
        pytest.raises(SandboxError, match=r'sandbox\.backend = "docker"'),
        open_sandbox(ws, "sample", tree, label="x", config=cfg),
    ):
        pytest.fail("an unhardened backend was used")


def test_orphans_of_dead_processes_are_reaped_at_start_up(ws: Workspace, tree: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    fake = ScriptedBackend(lambda argv: CommandResult(argv=argv, exit_code=0, duration=0.0))
    with open_sandbox(ws, "sample", tree, label="spec", backend=fake):
        spec = fake.started[0]
    backend = DockerBackend()
    request_close = backend.close
    orphan = backend.start(replace(spec, labels={**spec.labels, "converge.pid": str(dead.pid)}))
    live = backend.start(spec)  # this process is alive: its container is no orphan
    try:
        assert set(_containers(ws)) == {orphan.id, live.id}
        for box in _box(ws, tree):
            assert box.run(["true"]).ok
            assert orphan.id not in _containers(ws) and live.id in _containers(ws)
    finally:
        live.close()
        orphan.close()
        request_close()


def test_image_is_cached_under_the_recipe_digest(ws: Workspace, client: docker.DockerClient) -> None:
    spec = resolve(ws)
    assert spec.tag == resolve(ws).tag and spec.tag.startswith("converge-sandbox:")
    assert client.images.get(spec.tag).labels["converge.recipe"] == spec.digest
    recipe = ws.root / "tools" / "sandbox" / "recipe.toml"
    original = recipe.read_text()
    recipe.write_text(original.replace('LANG = "C.UTF-8"', 'LANG = "C"'))
    try:
        changed = resolve(ws)
        assert changed.tag != spec.tag
        assert changed.env["LANG"] == "C"
    finally:
        recipe.write_text(original)
    assert resolve(ws).tag == spec.tag


def test_requirement_extras_bring_their_own_dependencies() -> None:
    plain, _ = host_closure(["llama-cpp-python"])
    assert "uvicorn" not in plain
    served, missing = host_closure(["llama-cpp-python", "llama-cpp-python[server]"])
    assert {"uvicorn", "fastapi", "llama-cpp-python"} <= set(served) and missing == []


def test_test_environment_is_built_once_per_requirements_digest(ws: Workspace, tree: Path, box: Sandbox) -> None:
    assert box.spec.env_dir is not None and box.spec.env_dir.parent == ws.cache / "envs"
    for again in _box(ws, tree):
        assert again.spec.env_dir == box.spec.env_dir
    assert declared_requirements(tree) == []
    (tree / "requirements.txt").write_text("no-such-package-here==1.0\n")
    try:
        with pytest.raises(SandboxError, match=r"\[sandbox.allow\] sample"):
            list(_box(ws, tree))
        (tree / "requirements.txt").write_text("pydantic\n")  # present on this host: copied, offline
        for with_dep in _box(ws, tree):
            assert with_dep.spec.env_dir != box.spec.env_dir
            assert with_dep.run(py("import pydantic; print(pydantic.VERSION)")).ok
    finally:
        (tree / "requirements.txt").unlink()


def test_scripted_backend_records_what_would_run(ws: Workspace, tree: Path) -> None:
    fake = ScriptedBackend(lambda argv: CommandResult(argv=argv, exit_code=0, duration=0.0, stdout_tail="ok"))
    with open_sandbox(ws, "sample", tree, label="fake", backend=fake) as box:
        assert box.run(["make", "test"]).stdout_tail == "ok"
        assert fake.open_sessions == 1
    assert fake.ran == [["make", "test"]] and fake.open_sessions == 0


def test_parse_junit_xunit2_without_file_attributes() -> None:
    xml = """<testsuites><testsuite>
      <testcase classname="tests.test_a" name="test_one"/>
      <testcase classname="tests.test_a.TestB" name="test_two"><failure message="x"/></testcase>
      <testcase classname="" name="tests.test_c"><error message="collection"/></testcase>
    </testsuite></testsuites>"""
    assert parse_junit(xml) == {
        "passed": ["tests/test_a.py::test_one"],
        "failed": ["tests/test_a.py::TestB::test_two"],
        "errored": ["tests.test_c"],
        "skipped": [],
    }
    with pytest.raises(SandboxError, match="JUnit"):
        parse_junit("<testsuite")


def test_cli_sandbox_run_passes_the_exit_code_through(ws: Workspace) -> None:
    proc = converge("-w", str(ws.root), "sandbox", "run", "sample", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "out\n" and "err" in proc.stderr
    proc = converge(
        "-w",
        str(ws.root),
        "sandbox",
        "run",
        "--json",
        "sample",
        "--",
        "python",
        "-m",
        "pytest",
        "-q",
        "tests/test_stock.py",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["exit_code"] == 0 and "passed" in result["stdout_tail"]
    proc = converge("-w", str(ws.root), "sandbox", "run", "sample", "--timeout", "1", "--", "sleep", "100")
    assert proc.returncode == 124 and "timeout" in proc.stderr
    assert [p.name for p in (ws.cache / "worktrees").iterdir()] == ["cand-1"]
    proc = converge("-w", str(ws.root), "sandbox", "run", "nope", "--", "true")
    assert proc.returncode == 2 and "unknown repo 'nope'" in proc.stderr


def test_generation_worktree_is_the_current_generation_and_goes_away(ws: Workspace) -> None:
    head = git(ws.src / "sample", "rev-parse", "refs/converge/head")
    with generation_worktree(ws, "sample") as path:
        assert git(path, "rev-parse", "HEAD") == head
    assert not path.exists()
    assert str(path) not in git(ws.src / "sample", "worktree", "list")
