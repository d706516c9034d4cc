"""Ref transactions through a long-lived ``git update-ref --stdin``: one process, many transactions.

Starting git costs far more than a transaction in a running ``update-ref --stdin``, and a step keeps two
refs under ``refs/converge/``; so a session per repository and reflog message serves them, with the same
locking, hooks and reflogs as git, reading its configuration once.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from orchestrator.errors import ConflictError

MAX_SESSIONS = 8


class _Session:
    """One ``git update-ref --stdin -m MESSAGE`` in ``cwd``, used by one transaction at a time."""

    def __init__(self, cwd: Path, message: str) -> None:
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["git", "update-ref", "--stdin", "-m", message],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def transact(self, lines: Sequence[str]) -> str | None:
        """Run one transaction (``lines`` between start and commit); None when it applied, else git's reason."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write("".join(f"{line}\n" for line in ("start", *lines, "prepare", "commit")))
            stdin.flush()
            answers = [stdout.readline() for _ in range(3)]
        except OSError:
            answers = []
        if answers == ["start: ok\n", "prepare: ok\n", "commit: ok\n"]:
            return None
        assert self.proc.stderr is not None
        with contextlib.suppress(OSError):
            stdin.close()
        detail = self.proc.stderr.read().strip().splitlines()
        self.close()
        return detail[-1] if detail else f"exit {self.proc.returncode}"

    def close(self) -> None:
        """End the session: git exits on the end of its input."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):  # git already went
                self.proc.stdin.close()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class _Sessions:
    """The open sessions, per (repository, message), the least recently used closed past MAX_SESSIONS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: OrderedDict[tuple[str, str], _Session] = OrderedDict()

    def transact(self, cwd: Path, message: str, lines: Sequence[str]) -> None:
        key = (str(cwd.resolve()), message)
        with self.lock:
            session = self.open.pop(key, None)
            if session is None or session.proc.poll() is not None:
                session = _Session(cwd, message)
            self.open[key] = session
            retired = [self.open.popitem(last=False)[1] for _ in range(len(self.open) - MAX_SESSIONS)]
        for old in retired:
            with old.lock:
                old.close()
        with session.lock:
            reason = session.transact(lines)
        if reason is not None:
            with self.lock:
                if self.open.get(key) is session:
                    del self.open[key]
            raise ConflictError(f"refs changed by another process, nothing applied ({reason})")

    def close(self) -> None:
        with self.lock:
            sessions = list(self.open.values())
            self.open.clear()
        for session in sessions:
            with session.lock:
                session.close()


_SESSIONS = _Sessions()
atexit.register(_SESSIONS.close)


def transact(cwd: Path, message: str, lines: Sequence[str]) -> None:
    """Apply ``lines`` (``update``/``delete`` commands) as one transaction in the session of ``cwd``
    and ``message``; ConflictError, with nothing applied, when git refuses it.

    A failed transaction (a ref that moved: the compare-and-swap lost) makes git report on stderr
    and exit; the session is then dropped and the next transaction starts another. Sessions are not
    tied to Converge's life by a parent-death signal (that signal follows the thread that started the
    process, which may end first): a killed Converge closes the pipe, and git completes only a
    transaction it had read through ``commit``, else none.
    """
    _SESSIONS.transact(cwd, message, lines)


def close_all() -> None:
    """End every session (they end with the process anyway)."""
    _SESSIONS.close()
