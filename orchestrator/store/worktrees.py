"""Git worktrees Converge makes and removes itself: one git process to add, none to remove.

Candidate worktrees, sandbox trees and scratch checkouts all come and go through here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import GitError, SandboxError
from orchestrator.store import diskimage, gitops
from orchestrator.store.storage import pid_alive
from orchestrator.store.workspace import Workspace


def changed_files(cwd: Path, untracked: bool = True) -> list[str]:
    """Uncommitted changes in a working tree: modified, staged, deleted (and untracked) paths."""
    out = gitops.run(cwd, "status", "--porcelain=v1", "-z", f"--untracked-files={'all' if untracked else 'no'}")
    paths = []
    for entry in out.split("\0"):
        if len(entry) > 3:
            paths.append(entry[3:])
    return paths


def add_worktree(source: Path, path: Path, commit: str, *, umask: int = -1, fill: bool = True) -> None:
    """A linked worktree of the repo at ``source`` at ``path``, detached at ``commit`` and checked out.

    What ``git worktree add --detach`` does, with one git process instead of its three: the
    worktree's administrative directory ``<source>/.git/worktrees/<id>`` (``gitdir``,
    ``commondir``, ``HEAD``; locked while it is made, as git does, so that a concurrent
    ``worktree prune`` leaves it alone), the worktree's ``.git`` file, then ``read-tree`` to
    fill its index and files. No hook of the repository runs. A source whose ``.git`` is not a
    directory is left to git itself. ``fill=False`` stops before the files: the worktree holds
    only its ``.git`` file (and stays locked) until :func:`fill_worktree`.
    """
    records = source / ".git" / "worktrees"
    if not (source / ".git").is_dir():
        gitops.run(source, "worktree", "add", "--quiet", "--no-checkout", "--detach", str(path), commit, umask=umask)
        if fill:
            fill_worktree(path, commit, umask=umask)
        return
    sha = commit if gitops.FULL_ID.match(commit) else gitops.resolve(source, commit)
    if sha is None:
        raise GitError(f"{source}: {commit!r} is not a commit")
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise GitError(f"{path}: already exists and is not empty; cannot add a worktree there")
    records.mkdir(exist_ok=True)
    admin, n = records / path.name, 1
    while True:
        try:
            admin.mkdir()
            break
        except FileExistsError:
            n += 1
            admin = records / f"{path.name}{n}"
    try:
        (admin / "locked").write_text("initializing\n", encoding="utf-8")
        (admin / "commondir").write_text("../..\n", encoding="utf-8")
        (admin / "gitdir").write_text(f"{path.resolve() / '.git'}\n", encoding="utf-8")
        (admin / "HEAD").write_text(f"{sha}\n", encoding="utf-8")
        (path / ".git").write_text(f"gitdir: {admin.resolve()}\n", encoding="utf-8")
        if fill:
            fill_worktree(path, sha, umask=umask)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(admin, ignore_errors=True)
        raise


def fill_worktree(path: Path, commit: str, *, umask: int = -1) -> None:
    """Check ``commit`` out into the worktree ``add_worktree(..., fill=False)`` made: index and files."""
    gitops.run(path, "read-tree", "-u", "--reset", commit, umask=umask)
    admin = _admin_dir(path)
    lock = admin / "locked" if admin is not None else None
    if lock is not None and lock.is_file() and lock.read_text(encoding="utf-8", errors="replace") == "initializing\n":
        lock.unlink()  # add_worktree's own lock; one a person put there stays


def remove_worktree(source: Path, path: Path) -> None:
    """Remove the linked worktree ``path`` of the repo at ``source``, files and git's record of it; idempotent.

    What ``git worktree remove --force --force`` does, done here (a git process costs more than
    these file operations, and a step removes two worktrees): delete the files, then the
    worktree's administrative directory ``<source>/.git/worktrees/<id>``, which its ``.git`` file
    names. Anything unusual (a source whose ``.git`` is not a directory, a ``.git`` file pointing
    elsewhere) is left to git.
    """
    admin = _admin_dir(path)
    if os.path.ismount(path) or diskimage.image_of(path).exists():
        diskimage.unmount(path)  # a size-limited tree: its files go with its filesystem
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise GitError(f"{path}: cannot remove the worktree (files left that this process may not delete)")
    records = (source / ".git" / "worktrees").resolve()
    if admin is not None and admin.parent == records:
        shutil.rmtree(admin, ignore_errors=True)
    else:
        gitops.run(source, "worktree", "prune", check=False)


def _admin_dir(path: Path) -> Path | None:
    """The directory the ``gitdir:`` line of a linked worktree's ``.git`` file names, if it has one."""
    try:
        line = (path / ".git").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not line.startswith("gitdir: "):
        return None
    named = Path(line.removeprefix("gitdir: "))
    return (named if named.is_absolute() else path / named).resolve()


@contextlib.contextmanager
def generation_worktree(ws: Workspace, repo: str, ref: str = "refs/converge/head") -> Iterator[Path]:
    """A temporary detached worktree of ``ref`` (default: the current generation) of ``repo``."""
    source = ws.repo_path(repo)
    commit = gitops.resolve(source, ref) or gitops.resolve(source, "HEAD")
    if commit is None:
        raise SandboxError(f"repo {repo}: {ref} does not name a commit; re-register it with `converge add`")
    path = scratch_worktree(ws, repo, commit)
    try:
        yield path
    finally:
        remove_worktree(source, path)


def scratch_worktree(ws: Workspace, repo: str, commit: str, *, fill: bool = True) -> Path:
    """A new detached worktree of ``commit`` named after this process (``sandbox-<repo>-<pid>-<hex>``).

    The name lets :func:`stale_worktrees` find what a killed process left behind. ``fill=False``:
    only registered, its files come with :func:`fill_worktree`.
    """
    path = ws.cache / "worktrees" / f"sandbox-{repo}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    diskimage.mount_limited(path, diskimage.parse_size(ws.config().sandbox.disk))  # what a sandbox may write
    add_worktree(ws.repo_path(repo), path, commit, fill=fill)
    return path


def stale_worktrees(ws: Workspace, repo: str | None = None) -> list[tuple[Path, Path]]:
    """Scratch worktrees (of ``repo``, or of every repo) whose process is gone, with their repo's path."""
    root = ws.cache / "worktrees"
    if not root.is_dir():
        return []
    found: list[tuple[Path, Path]] = []
    for name in [repo] if repo is not None else [r.name for r in ws.repos()]:
        for path in root.glob(f"sandbox-{name}-*"):
            if path.name.endswith(".img"):
                continue  # a limited tree's filesystem: it goes with its tree
            parts = path.name.removeprefix(f"sandbox-{name}-").split("-")
            if len(parts) == 2 and parts[0].isdigit() and not pid_alive(int(parts[0])):
                found.append((path, ws.repo_path(name)))
    return found
