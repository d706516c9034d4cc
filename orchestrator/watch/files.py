"""What the watcher watches: which files count (ignore rules, git's own ignores), and the observer's events."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from watchdog.events import FileSystemEvent, FileSystemEventHandler

IGNORED_DIRS = frozenset(
    {".git", "cache", "__pycache__", "build", "dist", ".pytest_cache", "node_modules", ".venv", "venv"}
    | {".mypy_cache", ".ruff_cache", ".tox", ".eggs"}
)
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".swx", ".tmp", "~")


def is_ignored(rel: str, is_dir: bool = False) -> bool:
    """Whether a change at ``rel`` (relative to the repo) is noise for the repo map."""
    parts = PurePosixPath(rel).parts
    if not parts or parts[0] in (".", ".."):
        return True
    dirs = parts if is_dir else parts[:-1]
    if any(p in IGNORED_DIRS or p.endswith(".egg-info") for p in dirs):
        return True
    return not is_dir and parts[-1].endswith(IGNORED_SUFFIXES)


class RepoEvents(FileSystemEventHandler):
    """Turns watchdog events under one repo into repo-relative paths noted on the watcher."""

    def __init__(self, note: Callable[[str, str, bool], None], repo: str, root: Path) -> None:
        self.note = note
        self.repo = repo
        self.root = str(root)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type in ("modified", "attrib"):
            return  # a file created in a directory arrives as its own event
        for raw in (event.src_path, event.dest_path):
            if not raw:
                continue
            rel = os.path.relpath(os.fsdecode(raw), self.root).replace(os.sep, "/")
            if not is_ignored(rel, event.is_directory):
                self.note(self.repo, rel, event.is_directory)


def walk_files(root: Path, rel_dir: str) -> list[str]:
    """Files under a directory of the repo, skipping ignored directories."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root / rel_dir):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        base = Path(dirpath).relative_to(root).as_posix()
        found.extend(f"{base}/{name}" for name in filenames if not is_ignored(f"{base}/{name}"))
    return found


def git_ignored(root: Path, paths: list[str]) -> set[str]:
    """Which of ``paths`` git ignores (the map lists only what git would track)."""
    if not paths:
        return set()
    proc = subprocess.run(
        ["git", "check-ignore", "--stdin", "-z"],
        cwd=root,
        input="\0".join(paths) + "\0",
        capture_output=True,
        text=True,
        check=False,
    )
    return set(filter(None, proc.stdout.split("\0"))) if proc.returncode == 0 else set()


# --- the watcher ---------------------------------------------------------------------------------
