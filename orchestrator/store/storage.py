"""Durable files: atomic writes and inter-process locks.

Every write Converge makes to its state goes through :func:`atomic_write` (temp file, fsync, rename), so a
SIGKILL or a power cut leaves either the old file or the new one. Locks are ``flock`` locks on files under
``.converge/locks/`` (:func:`file_lock`), which the kernel drops when their holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.errors import ConflictError, WorkspaceError

M = TypeVar("M", bound=BaseModel)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new content, never a mix.

    ``durable=False`` skips the sync for files whose loss in a power cut costs nothing (a
    scratch worktree's, whose content lives on in a commit): a SIGKILL still leaves old or new.

    The directory is not synced after the rename (a step writes a dozen files), so a power cut may
    undo the last renames, each file then holding its previous content, as it may undo the last SQLite
    checkpoints (``synchronous=NORMAL``); resuming redoes those idempotent steps.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_all(files: Sequence[tuple[Path, bytes]], mode: int = 0o644) -> None:
    """:func:`atomic_write` of several files, their syncs overlapped: each is written to a temp
    file, all are synced at once (the filesystem's journal commits them together), then each
    is renamed into place in the order given. A kill midway leaves a prefix of them renamed."""
    temps: list[tuple[int, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((fd, Path(name)))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        if temps:
            with ThreadPoolExecutor(max_workers=min(8, len(temps)), thread_name_prefix="sync") as syncing:
                list(syncing.map(os.fsync, [fd for fd, _ in temps]))
        for (_, temp), (path, _) in zip(temps, files, strict=True):
            temp.chmod(mode)
            temp.replace(path)
    except BaseException:
        for _, temp in temps:
            temp.unlink(missing_ok=True)
        raise
    finally:
        for fd, _ in temps:
            os.close(fd)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, modification time) of ``path``, None when it cannot be read: what tells a parse
    remembered from the file still holds (a state file is replaced whole, so a new version is a new inode)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def atomic_write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write(path, json.dumps(value, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: Path) -> Any:
    """Read a JSON state file; a corrupt or unreadable one is reported by path."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkspaceError(f"{path}: corrupt JSON: {exc.msg} at line {exc.lineno}") from exc
    except UnicodeDecodeError as exc:
        raise WorkspaceError(f"{path}: corrupt: not UTF-8 text") from exc
    except OSError as exc:
        raise WorkspaceError(f"{path}: cannot read: {exc.strerror}") from exc


def read_model(path: Path, model: type[M]) -> M:
    """Read a JSON state file into ``model``; a file of the wrong shape is reported by path and key."""
    try:
        return model.model_validate(read_json(path))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise WorkspaceError(f"{path}: corrupt: {key}: {err['msg']}") from exc


@contextlib.contextmanager
def file_lock(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; refuse at once (ConflictError) if another process has it.

    A lock left by a killed process is never stale; the holder's pid is written in the file so a
    refused caller can be told who holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise ConflictError(f"{what} is busy: locked by {holder}; try again when it finishes") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (the owner of a lock, a run, a sandbox)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True
