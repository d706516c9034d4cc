"""The Docker sandbox backend: one hardened long-lived container per candidate, commands by exec.

Every container gets: ``network_mode=none`` (unless a loosened dependency setup asks for
the bridge), a read-only root, the worktree at ``/src`` as the only writable bind (its
``.git`` and the repository's git directory bound read-only over it), a size-limited
tmpfs ``/tmp``, ``cap_drop=ALL``, ``no-new-privileges``, a non-root uid, pids/memory/CPU
limits, the recipe's reaper as PID 1, no Docker socket and exactly the spec's environment.

A command that outlives its timeout is stopped by killing every process of the sandbox
user (``kill -KILL -1`` from a second exec); an OOM kill is read from the container's
memory cgroup counter. docker-py exceptions become :class:`SandboxError` here.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import SandboxError
from orchestrator.reports import CommandResult
from orchestrator.sandbox import LABEL, OutputTail, SandboxSpec
from orchestrator.sandbox_image import ensure_image
from orchestrator.storage import pid_alive

ENGINE_FIX = "run `make setup` (installs docker.io and starts dockerd) or start dockerd yourself"
OOM_PROBE = "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null"


def connect() -> Any:
    """A docker client that answers, or a SandboxError with the fix (fail closed)."""
    import docker
    import docker.errors

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        raise SandboxError(f"no Docker engine: {host} does not exist; {ENGINE_FIX}")
    try:
        client = docker.from_env(timeout=120)
    except docker.errors.DockerException as exc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # docker-py leaks the socket of a refused connection; release it quietly
        raise SandboxError(f"no Docker engine answers ({exc.__class__.__name__}: {exc}); {ENGINE_FIX}") from exc
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        client.close()
        raise SandboxError(f"no Docker engine answers ({exc.__class__.__name__}: {exc}); {ENGINE_FIX}") from exc
    return client


def git_mounts(worktree: Path) -> list[tuple[Path, str]]:
    """Host paths of the worktree's git data and where they go, all to be mounted read-only."""
    dot_git = worktree / ".git"
    if dot_git.is_dir():
        return [(dot_git, "/src/.git")]
    if not dot_git.is_file():
        return []
    text = dot_git.read_text(encoding="utf-8").strip()
    if not text.startswith("gitdir:"):
        raise SandboxError(f"{dot_git}: not a gitdir file; recreate the worktree")
    gitdir = (worktree / text.removeprefix("gitdir:").strip()).resolve()
    commondir_file = gitdir / "commondir"
    common = (gitdir / commondir_file.read_text().strip()).resolve() if commondir_file.is_file() else gitdir
    mounts = [(dot_git, "/src/.git"), (common, str(common))]
    if not gitdir.is_relative_to(common):
        mounts.append((gitdir, str(gitdir)))
    return mounts


def share_worktree(worktree: Path, gid: int) -> None:
    """Let the sandbox group write the worktree (host runs as root; owner stays, so git stays happy)."""
    skip = worktree / ".git"
    for top, dirs, files in os.walk(worktree):
        here = Path(top)
        if here == worktree:
            dirs[:] = [d for d in dirs if here / d != skip]
        os.chown(here, -1, gid)
        here.chmod((here.stat().st_mode | 0o2070) & 0o7777)
        for name in files:
            path = here / name
            if path == skip or path.is_symlink():
                continue
            os.chown(path, -1, gid)
            path.chmod((path.stat().st_mode | 0o060) & 0o7777)


def _mount(source: Path | str, target: str, read_only: bool) -> Any:
    from docker.types import Mount

    return Mount(target=target, source=str(source), type="bind", read_only=read_only)


def container_config(spec: SandboxSpec, image_tag: str) -> dict[str, Any]:
    """The keyword arguments of ``containers.run`` for ``spec``: every hardening item, in one place."""
    image = spec.image
    mounts = [_mount(spec.worktree, "/src", not spec.worktree_writable)]
    mounts += [_mount(src, dst, True) for src, dst in git_mounts(spec.worktree)]
    mounts += [_mount(path, path, True) for path in image.mounts]
    if spec.env_dir is not None:
        mounts.append(_mount(spec.env_dir, "/env", not spec.env_writable))
    memory = spec.limits.memory
    return {
        "image": image_tag,
        "command": list(image.keepalive),
        "detach": True,
        "init": False,  # PID 1 is the recipe's reaper, immune to the timeout's kill -1
        "user": f"{image.uid}:{image.gid}",
        "working_dir": "/src",
        "environment": dict(spec.environment),
        "labels": dict(spec.labels),
        "network_mode": "bridge" if spec.network else "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": spec.limits.pids,
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap: a memory hog is OOM-killed, not slowed down
        "nano_cpus": int(spec.limits.cpus * 1e9),
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.limits.tmpfs_size},mode=1777"},
        "mounts": mounts,
        "hostname": "sandbox",
        "ipc_mode": "private",
    }


class DockerBackend:
    """Sandboxes as Docker containers (the default and only fully hardened backend)."""

    name = "docker"

    def __init__(self, client: Any | None = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect()
        return self._client

    def start(self, spec: SandboxSpec) -> DockerSession:
        import docker.errors

        tag = ensure_image(self.client, spec.image)
        if os.getuid() == 0 and spec.worktree_writable:
            share_worktree(spec.worktree, spec.image.gid)
        try:
            container = self.client.containers.run(**container_config(spec, tag))
        except docker.errors.DockerException as exc:
            raise SandboxError(f"sandbox container for {spec.worktree} did not start: {exc}") from exc
        return DockerSession(self.client, container, f"{spec.image.uid}:{spec.image.gid}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def reap(self, workspace: Path | None, include_live: bool = False) -> list[str]:
        """Remove containers whose owning process is gone (or all of them with ``include_live``)."""
        import docker.errors

        filters = [f"{LABEL}=1"]
        if workspace is not None:
            filters.append(f"converge.workspace={workspace}")
        removed = []
        try:
            for container in self.client.containers.list(all=True, filters={"label": filters}):
                if include_live or _orphaned(container.labels):
                    container.remove(force=True)
                    removed.append(container.short_id)
        except docker.errors.NotFound:
            pass  # removed by someone else meanwhile
        except docker.errors.DockerException as exc:
            raise SandboxError(f"cannot list or remove sandbox containers: {exc}; {ENGINE_FIX}") from exc
        return removed


def _orphaned(labels: dict[str, str]) -> bool:
    if labels.get("converge.host") != socket.gethostname():
        return False  # another machine's engine view: its owner cannot be checked from here
    pid = labels.get("converge.pid", "")
    return pid.isdigit() and not pid_alive(int(pid))


def _close_stream(stream: Any) -> None:
    """Close an exec's output stream and its HTTP response (docker-py leaves both open)."""
    with contextlib.suppress(OSError):
        stream.close()
    response = getattr(stream, "_response", None)
    if response is not None:
        with contextlib.suppress(OSError, ValueError):
            response.close()


class DockerSession:
    """One running container; commands run in it one at a time."""

    def __init__(self, client: Any, container: Any, user: str) -> None:
        self._client = client
        self._container = container
        self._user = user
        self._oom_seen = 0
        self._lock = threading.Lock()
        self.closed = False

    @property
    def id(self) -> str:
        return str(self._container.id)

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int) -> CommandResult:
        with self._lock:
            return self._exec(list(argv), timeout, output_limit)

    def _exec(self, argv: list[str], timeout: float, output_limit: int) -> CommandResult:
        import docker.errors

        if self.closed:
            raise SandboxError("sandbox already closed")
        api = self._client.api
        out, err = OutputTail(output_limit), OutputTail(output_limit)
        failure: list[BaseException] = []
        started = time.monotonic()
        try:
            exec_id = api.exec_create(self.id, argv, user=self._user, workdir="/src")["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=True)
        except docker.errors.DockerException as exc:
            raise SandboxError(f"sandbox exec of {argv[0]!r} failed: {exc}") from exc

        def pump() -> None:
            try:
                for chunk_out, chunk_err in stream:
                    if chunk_out:
                        out.add(chunk_out)
                    if chunk_err:
                        err.add(chunk_err)
            except Exception as exc:  # handed to the caller below
                failure.append(exc)

        reader = threading.Thread(target=pump, name="sandbox-output", daemon=True)
        reader.start()
        reader.join(timeout)
        timed_out = reader.is_alive()
        try:
            if timed_out:
                self._kill_all()
                reader.join(30)
        finally:
            duration = time.monotonic() - started
            _close_stream(stream)
        if failure and not timed_out:
            raise SandboxError(f"lost the output of {argv[0]!r}: {failure[0]}") from failure[0]
        exit_code = self._exit_code(exec_id)
        oom = not timed_out and exit_code != 0 and self._oom_happened()
        return CommandResult(
            argv=argv,
            exit_code=exit_code,
            duration=round(duration, 4),
            timed_out=timed_out,
            oom_killed=oom,
            stdout_tail=out.text(),
            stderr_tail=err.text(),
            truncated=out.truncated or err.truncated,
        )

    def _exit_code(self, exec_id: str) -> int:
        deadline = time.monotonic() + 10
        while True:
            code = self._client.api.exec_inspect(exec_id).get("ExitCode")
            if code is not None:
                return int(code)
            if time.monotonic() > deadline:
                return -1
            time.sleep(0.02)

    def _quiet(self, argv: list[str]) -> str:
        api = self._client.api
        exec_id = api.exec_create(self.id, argv, user=self._user)["Id"]
        raw = api.exec_start(exec_id)
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    def _kill_all(self) -> None:
        """SIGKILL every process of the sandbox user but this one (PID 1 is root's init)."""
        self._quiet(["/bin/sh", "-c", "kill -KILL -1"])

    def _oom_happened(self) -> bool:
        found = re.search(r"oom_kill (\d+)", self._quiet(["/bin/sh", "-c", OOM_PROBE]))
        count = int(found.group(1)) if found else 0
        happened = count > self._oom_seen
        self._oom_seen = count
        return happened

    def close(self) -> None:
        import docker.errors

        if self.closed:
            return
        self.closed = True
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise SandboxError(f"cannot remove sandbox container {self._container.short_id}: {exc}") from exc
