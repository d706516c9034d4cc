"""The registered repo's working tree following its generation: what a move would lose, saving it
under ``refs/converge/stash/``, and the cheapest checkout from one generation's commit to another.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import GitError, UsageError, translate
from orchestrator.store import gitops
from orchestrator.store.gitops import ZERO, RefUpdate

STASH = "refs/converge/stash/"


@dataclass(frozen=True)
class Move:
    """The working-tree side of moving from commit ``old`` to ``new``: which paths change and how."""

    old: str
    new: str
    changes: tuple[tuple[str, str], ...]  # (status letter A/D/M/T, path)

    @classmethod
    def between(cls, path: Path, old: str, new: str) -> Move:
        return cls(old, new, tuple(gitops.name_status(path, old, new)))

    @property
    def paths(self) -> list[str]:
        return [p for _, p in self.changes]

    @property
    def added(self) -> list[str]:
        return [p for kind, p in self.changes if kind == "A"]


def uncommitted(path: Path, move: Move) -> list[str]:
    """What moving the tree from ``move.old`` (the expected HEAD) to ``move.new`` would lose.

    Changed tracked files, commits made on top, and untracked files where the target brings
    a tracked file. Other untracked files survive a move untouched, so the tree is not
    scanned for them: on a large repo that scan alone costs as much as the move.
    """
    out = gitops.run(path, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=no")
    files: list[str] = []
    head = None
    entries = iter(out.split("\0"))
    for entry in entries:
        if entry.startswith("# branch.oid "):
            head = entry.removeprefix("# branch.oid ")
        elif entry[:2] in ("1 ", "u "):
            files.append(entry.split(" ", 8 if entry[0] == "1" else 10)[-1])
        elif entry.startswith("2 "):
            files.append(entry.split(" ", 9)[-1])
            next(entries, None)  # the rename's original path
    files += [p for p in move.added if (path / p).exists()]
    if head != move.old:
        files.append(f"HEAD (now {str(head)[:12]}, not the current generation {move.old[:12]})")
    return files


def stash(path: Path) -> str:
    """Save everything uncommitted (untracked files too) under refs/converge/stash/<ts>."""
    index = path / ".git" / "converge-stash-index"
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    try:
        subprocess.run(["git", "read-tree", "HEAD"], cwd=path, env=env, check=True, capture_output=True)
        subprocess.run(["git", "add", "-A"], cwd=path, env=env, check=True, capture_output=True)
        tree = subprocess.run(
            ["git", "write-tree"], cwd=path, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
    except subprocess.CalledProcessError as exc:
        raise translate(exc, "git", f"{path}: cannot save uncommitted changes") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            index.unlink()
    commit = gitops.run(path, "commit-tree", tree, "-p", "HEAD", "-m", "converge: saved before rollback").strip()
    ref = f"{STASH}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
    gitops.update_refs(path, [RefUpdate(ref, commit, ZERO)], "converge: stash")
    return ref


def guard_tree(path: Path, move: Move, force: bool) -> str | None:
    dirty = uncommitted(path, move)
    if not dirty:
        return None
    if not force:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise UsageError(
            f"{path} has uncommitted changes ({shown}); "
            f"commit them elsewhere or pass --force to save them under {STASH}"
        )
    return stash(path)


RESTORE_MAX_PATHS = 256  # past this, git's per-pathspec matching costs more than a two-way read-tree


def checkout(path: Path, move: Move, clean: bool) -> None:
    """Bring the working tree and index (and, when not clean, HEAD) from ``move.old`` to ``move.new``.

    On a tree just checked clean, only the paths that differ are touched: a few of them are
    restored by name (``restore --staged --worktree``, which reads and writes the index once
    and nothing else); many go through a two-way ``read-tree -m -u``. Both cost far less on a
    large repo than ``reset --hard``, which re-checks every entry. A stashed tree is reset.
    """
    if clean:
        try:
            if not move.changes:
                return
            if len(move.changes) <= RESTORE_MAX_PATHS:
                restore = ["--literal-pathspecs", "restore", f"--source={move.new}", "--staged", "--worktree"]
                restore += ["--no-overlay", "--pathspec-from-file=-", "--pathspec-file-nul"]
                gitops.run(path, *restore, stdin="\0".join(move.paths))
            else:
                gitops.run(path, "read-tree", "-m", "-u", move.old, move.new)
            return
        except GitError:
            pass  # nothing was lost (the tree was clean): reset below puts everything right
    gitops.run(path, "reset", "--quiet", "--hard", move.new)
