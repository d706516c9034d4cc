"""The Docker sandbox backend: one hardened long-lived container per candidate, commands through its runner.

Every container gets its own network namespace with nothing but a loopback (unless a
loosened dependency setup asks for the bridge), a read-only root, the worktree at
``/src`` as the only writable bind (its ``.git`` and the repository's git directory bound
read-only over it), a size-limited tmpfs ``/tmp``, ``cap_drop=ALL``, ``no-new-privileges``,
a non-root uid, pids/memory/CPU limits, no Docker socket and exactly the spec's environment.

PID 1 is Converge's command runner (``sandbox_runner.py``): commands go to it as JSON
lines over the attached stdin, so a command costs a fork inside the container rather than
a ``docker exec``. The runner enforces the timeout (``kill -KILL -1`` of everything but
itself), caps the output and reads OOM kills from the memory cgroup's counter. Closing
a session only ends that stream: the runner exits, and the engine removes the container
by itself (auto-remove), so nothing waits for a container to go; a Converge killed
mid-run ends the stream too. docker-py exceptions become :class:`SandboxError` here (``errors.translate``).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import docker
import docker.errors
import requests
from docker.constants import MINIMUM_DOCKER_API_VERSION
from docker.types import Mount

from orchestrator.errors import ENGINE_FIX, SandboxError, translate
from orchestrator.sandbox.base import LABEL, OutputTail, SandboxSpec, orphaned
from orchestrator.sandbox.env import ensure_env
from orchestrator.sandbox.image import ensure_image
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace


def connect() -> Any:
    """A docker client that answers, or a SandboxError with the fix (fail closed).

    The engine's API version comes from the header of one ``/_ping``: docker-py's own
    detection asks ``/version``, which the engine answers by querying containerd and runc
    (~15 ms, more under load), and each sandbox pool connects once, before its first container.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        raise SandboxError(f"no Docker engine: {host} does not exist; {ENGINE_FIX}")
    try:
        client = docker.from_env(version=MINIMUM_DOCKER_API_VERSION, timeout=120)
        try:
            answer = client.api.get(f"{client.api.base_url}/_ping")
            answer.raise_for_status()
        finally:
            client.close()
        version = answer.headers.get("Api-Version") or "auto"  # an engine that does not say: docker-py asks
        return docker.from_env(version=version, timeout=120)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # docker-py leaks the socket of a refused connection; release it quietly
        raise translate(exc, "docker", f"no Docker engine answers ({exc.__class__.__name__})") from exc


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
    return Mount(target=target, source=str(source), type="bind", read_only=read_only)


def container_config(spec: SandboxSpec, image_tag: str) -> dict[str, Any]:
    """The keyword arguments of ``containers.run`` for ``spec``: every hardening item, in one place."""
    image = spec.image
    mounts = [_mount(spec.worktree, "/src", not spec.worktree_writable)]
    mounts += [_mount(src, dst, True) for src, dst in git_mounts(spec.worktree)]
    mounts += [_mount(path, path, True) for path in image.mounts]
    if spec.env_dir is not None:
        mounts.append(_mount(spec.env_dir, "/env", not spec.env_writable))
    mounts += [_mount(src, dst, True) for src, dst in spec.extra_mounts]
    memory = spec.limits.memory
    return {
        "image": image_tag,
        "command": list(image.keepalive),
        # stdin is the runner's request stream; not detached means StdinOnce: the engine closes
        # it when our one attached stream ends (a close, or this process killed), the runner
        # exits on end of input, and auto_remove has the engine remove the container: nobody waits
        "stdin_open": True,
        "detach": False,
        "auto_remove": True,
        "init": False,  # PID 1 is Converge's runner: it reaps, and survives the timeout's kill -1
        "user": f"{image.uid}:{image.gid}",
        "working_dir": "/src",
        "environment": dict(spec.environment),
        "labels": dict(spec.labels),
        "network_mode": "bridge" if spec.network else "none",
        # and no network sandbox at all: runc then makes the new namespace (loopback only) itself,
        # not the engine through its setkey hook, a run of dockerd's binary (~130 ms of each start)
        "network_disabled": not spec.network,
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

    def start(self, spec: SandboxSpec, fill: Callable[[], None] | None = None) -> DockerSession:
        """Start a container over ``spec.worktree``; ``fill`` writes the worktree's files meanwhile.

        The worktree is shared with the sandbox's group first: what ``fill`` writes after that
        inherits the group (setgid directories) and, under umask 002, its write access.
        """
        tag = ensure_image(self.client, spec.image)
        if os.getuid() == 0 and spec.worktree_writable:
            share_worktree(spec.worktree, spec.image.gid)
        if fill is None:
            return self._started(spec, tag)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-fill") as filler:
            filled = filler.submit(fill)
            session = self._started(spec, tag)  # should it fail: the block waits for the fill, then raises
            try:
                filled.result()
            except BaseException:
                session.close()
                raise
        return session

    def _started(self, spec: SandboxSpec, tag: str) -> DockerSession:
        container = None
        try:
            container = self.client.containers.create(**container_config(spec, tag))
            container.start()
        except docker.errors.DockerException as exc:
            if container is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
            raise translate(exc, "docker", f"sandbox container for {spec.worktree} did not start") from exc
        return DockerSession(self.client, container)

    def prepare_env(
        self, ws: Workspace, repo: str, spec: SandboxSpec, *, allow_network: bool, requirements: list[str] | None
    ) -> Path:
        """A virtual environment on the host, cached by digest, mounted read-only (see ``sandbox.env``)."""
        return ensure_env(ws, repo, spec, self, allow_network=allow_network, requirements=requirements)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def reap(self, workspace: Path | None, include_live: bool = False) -> list[str]:
        """Remove containers whose owning process is gone (or all of them with ``include_live``)."""
        filters = [f"{LABEL}=1"]
        if workspace is not None:
            filters.append(f"converge.workspace={workspace}")
        removed = []
        try:
            for container in self.client.containers.list(all=True, ignore_removed=True, filters={"label": filters}):
                if include_live or orphaned(container.labels):
                    _remove(container)
                    removed.append(container.short_id)
        except docker.errors.DockerException as exc:
            raise translate(exc, "docker", "cannot list or remove sandbox containers") from exc
        return removed


def _remove(container: Any) -> None:
    """Remove a container, unless it is gone already or the engine is removing it (auto-remove)."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: its removal is already in progress
            raise


def _close_stream(stream: Any) -> None:
    """Close an exec's output stream and its HTTP response (docker-py leaves both open)."""
    with contextlib.suppress(OSError):
        stream.close()
    response = getattr(stream, "_response", None)
    if response is not None:
        with contextlib.suppress(OSError, ValueError):
            response.close()


class DockerSession:
    """One running container whose PID 1 (``sandbox_runner``) runs our commands, one at a time.

    Requests and answers travel as JSON lines over the container's attached stdin/stdout,
    a stream opened once; a command costs a fork in the container, not a ``docker exec``.
    If the runner stops answering, the session falls back to the engine to stop the
    command and reports the session broken.
    """

    GRACE = 15.0  # seconds past a command's timeout before the runner is deemed lost

    def __init__(self, client: Any, container: Any) -> None:
        self._client = client
        self._container = container
        self._lock = threading.Lock()
        self._requests = 0
        self._pending = b""
        self._runner_err = bytearray()
        self.closed = False
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        try:
            attached = client.api.attach_socket(container.id, params=params)
        except docker.errors.DockerException as exc:
            raise translate(exc, "docker", f"cannot attach to sandbox container {container.short_id}") from exc
        self._attached = attached
        self._sock: socket.socket = getattr(attached, "_sock", attached)

    @property
    def id(self) -> str:
        return str(self._container.id)

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int, witness: bool = False) -> CommandResult:
        with self._lock:
            return self._exec(list(argv), timeout, output_limit, witness)

    def _exec(self, argv: list[str], timeout: float, output_limit: int, witness: bool) -> CommandResult:
        if self.closed:
            raise SandboxError("sandbox already closed")
        self._requests += 1
        request = {"id": self._requests, "argv": argv, "timeout": timeout, "limit": output_limit, "witness": witness}
        started = time.monotonic()
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            reply = self._answer(self._requests, started + timeout + self.GRACE)
        except (OSError, ValueError) as exc:
            self._lost(argv, f"{exc.__class__.__name__}: {exc}")
        if "error" in reply:
            raise SandboxError(f"sandbox runner refused {argv[0]!r}: {reply['error']}")
        out = OutputTail(base64.b64decode(reply["stdout"]), int(reply["stdout_total"]), output_limit)
        err = OutputTail(base64.b64decode(reply["stderr"]), int(reply["stderr_total"]), output_limit)
        events = None
        if "witness" in reply:
            kept = base64.b64decode(reply["witness"])
            events = OutputTail(kept, int(reply["witness_total"]), len(kept)).text()
        return CommandResult(
            argv=argv,
            exit_code=int(reply["exit_code"]),
            duration=float(reply["duration"]),
            timed_out=bool(reply["timed_out"]),
            oom_killed=bool(reply["oom_killed"]),
            stdout_tail=out.text(),
            stderr_tail=err.text(),
            truncated=out.truncated or err.truncated,
            witness=events,
        )

    def _answer(self, request_id: int, deadline: float) -> dict[str, Any]:
        """Read frames until the answer to ``request_id`` is complete."""
        while True:
            line, sep, rest = self._pending.partition(b"\n")
            if sep:
                self._pending = rest
                reply = json.loads(line)
                if isinstance(reply, dict) and reply.get("id", request_id) == request_id:
                    return reply
                continue
            stream, payload = self._frame(deadline)
            if stream == 2:
                self._runner_err += payload
                del self._runner_err[:-4096]
            else:
                self._pending += payload

    def _frame(self, deadline: float) -> tuple[int, bytes]:
        header = self._read(8, deadline)
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        return stream, self._read(size, deadline)

    def _read(self, size: int, deadline: float) -> bytes:
        data = bytearray()
        while len(data) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the sandbox runner")
            self._sock.settimeout(left)
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the sandbox runner's stream closed")
            data += chunk
        return bytes(data)

    def _lost(self, argv: list[str], why: str) -> NoReturn:
        """The runner is gone or stuck: stop everything in the container and say what happened."""
        self.closed = True
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            self._container.reload()
            state = self._container.attrs.get("State", {})
        detail = self._runner_err.decode(errors="replace").strip().splitlines()[-1:] or [why]
        self._detach()
        with contextlib.suppress(Exception):
            _remove(self._container)
        if state.get("OOMKilled"):
            raise SandboxError(f"sandbox ran out of memory while running {argv[0]!r} and was stopped")
        raise SandboxError(f"sandbox runner lost while running {argv[0]!r}: {detail[0]}")

    def _detach(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        _close_stream(self._attached)

    def close(self) -> None:
        """End the request stream: the runner kills what is left and exits, the engine removes the container."""
        if self.closed:
            return
        self.closed = True
        self._detach()
