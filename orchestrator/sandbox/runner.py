"""PID 1 of every sandbox container: runs the commands the host sends, one at a time.

The host writes one JSON request per line on this process's stdin (the container's
attached stdin) and reads one JSON answer per line on its stdout. A request is
``{"id", "argv", "timeout", "limit"}``; the answer carries the exit code, the duration,
whether the command was stopped at its timeout or by the OOM killer, and the last
``limit`` bytes of stdout and stderr (base64) with their total sizes. This replaces a
``docker exec`` per command (~60 ms of engine work) by a line on an open stream.
A request with ``"witness": true`` gets a third pipe, opened here before the command starts and
named to it in ``CONVERGE_WITNESS_FD``: the test run's witness (``sandbox.witness``) writes its
events there, and the answer carries them (``witness``, ``witness_total``).

The file runs by itself (``python -I -S -c <source>``, standard library only): nothing
from the repository or the sandbox's environment is imported. Being PID 1 it reaps
orphans, survives the ``kill(-1, SIGKILL)`` that ends a command at its timeout, and makes
itself non-dumpable so that commands (same uid) cannot reach its file descriptors through
``/proc/1``. Commands are made the OOM killer's first choice (``oom_score_adj`` 1000).
When stdin closes (the host closed the session, or died) it kills what is left, even
mid-command, and exits; the engine then removes the container.
"""

import base64
import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

CHUNK = 65536
DRAIN_GRACE = 1.0  # seconds to read leftovers after the command exits (a daemon may hold its pipes)
OOM_FILES = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control"))
WITNESS_FD = "CONVERGE_WITNESS_FD"
WITNESS_LIMIT = 64 * 1024 * 1024


def oom_kills() -> int:
    """The memory cgroup's OOM kill counter (0 where no counter is visible)."""
    for path in OOM_FILES:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: /proc/1/fd and /proc/1/mem become root's, out of the commands' reach."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)


def reap() -> None:
    """Collect every exited child (orphans are re-parented to PID 1)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


class Tail:
    """The last ``limit`` bytes of a stream and how many bytes came in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.buf = bytearray()

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.buf += chunk
        if len(self.buf) > 2 * self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def encoded(self) -> str:
        kept = bytes(self.buf[-self.limit :]) if self.limit else b""
        return base64.b64encode(kept).decode("ascii")


def spawn(argv: list[str], out_w: int, err_w: int, witness_w: int | None = None) -> int:
    """Fork and exec ``argv`` in a new session; return its pid, or raise the OSError exec saw.

    ``witness_w``: a pipe the command inherits, its number in ``CONVERGE_WITNESS_FD``.
    """
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            os.setsid()
            with contextlib.suppress(OSError):
                Path("/proc/self/oom_score_adj").write_text("1000")  # the OOM killer's first pick
            os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            if witness_w is not None:
                os.set_inheritable(witness_w, True)
                os.environ[WITNESS_FD] = str(witness_w)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(report_w, str(exc.errno).encode())
        finally:
            os._exit(127)
    os.close(report_w)
    failed = os.read(report_r, 32)
    os.close(report_r)
    if failed:
        os.waitpid(pid, 0)
        raise OSError(int(failed), os.strerror(int(failed)))
    return pid


def pid_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (None on kernels without pidfd)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class Inbox:
    """The host's request stream. Its end means the host is gone (closed, or killed)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.closed = False

    def fill(self) -> None:
        chunk = os.read(self.fd, CHUNK)
        if chunk:
            self.buf += chunk
        else:
            self.closed = True

    def gone(self) -> bool:
        return self.closed

    def line(self) -> bytes | None:
        """The next complete request line, if one has arrived."""
        line, sep, rest = self.buf.partition(b"\n")
        if not sep:
            return None
        self.buf = rest
        return line


class Command:
    """One request: the process, its two output streams, its deadline."""

    def __init__(self, request: dict[str, Any], inbox: Inbox) -> None:
        self.request = request
        self.inbox = inbox
        self.argv = [str(arg) for arg in request["argv"]]
        self.limit = int(request["limit"])
        self.out, self.err = Tail(self.limit), Tail(self.limit)
        self.witness = Tail(WITNESS_LIMIT) if request.get("witness") else None
        self.started = time.monotonic()
        self.deadline = self.started + float(request["timeout"])
        self.status: int | None = None
        self.timed_out = False

    def run(self) -> dict[str, Any]:
        oom_before = oom_kills()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        wit_r, wit_w = os.pipe2(os.O_CLOEXEC) if self.witness is not None else (None, None)
        try:
            pid = spawn(self.argv, out_w, err_w, wit_w)
        except OSError as exc:
            for fd in (out_r, err_r, wit_r):
                if fd is not None:
                    os.close(fd)
            self.err.add(f"converge sandbox: cannot run {self.argv[0]!r}: {exc.strerror}\n".encode())
            return self.answer(127 if exc.errno == 2 else 126, oom=False)
        finally:
            for fd in (out_w, err_w, wit_w):
                if fd is not None:
                    os.close(fd)
        exited = pid_fd(pid)
        streams = {out_r: self.out, err_r: self.err}
        if wit_r is not None and self.witness is not None:
            streams[wit_r] = self.witness
        try:
            self.pump(pid, streams, exited)
        finally:
            for fd in (out_r, err_r, wit_r, exited):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        status = self.status if self.status is not None else os.waitpid(pid, 0)[1]
        reap()
        code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return self.answer(code, oom=not self.timed_out and code != 0 and oom_kills() > oom_before)

    def pump(self, pid: int, streams: dict[int, Tail], exited: int | None) -> None:
        """Read output until the command exits and its pipes close, or the deadline passes."""
        drain_until = self.deadline
        while True:
            now = time.monotonic()
            if self.status is None and now >= self.deadline:
                self.timed_out = True
                os.kill(-1, signal.SIGKILL)  # every process but this one: the command and all it started
                return
            if self.status is not None and (not streams or now >= drain_until):
                return
            if self.inbox.closed:  # nobody will read the answer: end it all now, not at the timeout
                os.kill(-1, signal.SIGKILL)
                return
            watch = [*streams, self.inbox.fd]
            if self.status is None and exited is not None:
                watch.append(exited)
            wait = (self.deadline if self.status is None else drain_until) - now
            if self.status is None and exited is None:
                wait = min(wait, 0.01)  # no pidfd: poll for the exit
            ready, _, _ = select.select(watch, [], [], max(0.0, wait))
            self.take_in(ready, streams)
            if self.status is None and (exited is None or exited in ready):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.status = status
                    drain_until = time.monotonic() + DRAIN_GRACE

    def take_in(self, ready: list[int], streams: dict[int, Tail]) -> None:
        """Read what the ready descriptors have: output into its tail, requests into the inbox."""
        for fd in ready:
            if fd == self.inbox.fd:
                self.inbox.fill()
            elif fd in streams:
                chunk = os.read(fd, CHUNK)
                if chunk:
                    streams[fd].add(chunk)
                else:
                    del streams[fd]

    def answer(self, code: int, oom: bool) -> dict[str, Any]:
        witness = {}
        if self.witness is not None:
            witness = {"witness": self.witness.encoded(), "witness_total": self.witness.total}
        return {
            **witness,
            "id": self.request["id"],
            "exit_code": code,
            "duration": round(time.monotonic() - self.started, 4),
            "timed_out": self.timed_out,
            "oom_killed": oom,
            "stdout": self.out.encoded(),
            "stdout_total": self.out.total,
            "stderr": self.err.encoded(),
            "stderr_total": self.err.total,
        }


def serve() -> None:
    not_dumpable()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    inbox = Inbox(sys.stdin.buffer.fileno())
    stdout = sys.stdout.buffer
    while not inbox.gone():
        line = inbox.line()
        if line is None:
            ready, _, _ = select.select([inbox.fd], [], [], 1.0)
            reap()
            if ready:
                inbox.fill()
            continue
        try:
            reply = Command(json.loads(line), inbox).run()
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"bad request: {exc}"}
        if inbox.gone():
            break
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)


if __name__ == "__main__":
    serve()
