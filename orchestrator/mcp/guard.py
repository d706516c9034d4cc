"""What an MCP client may send: sizes, paths and commands checked before anything is read or written.

The client is another program (often a model), so every argument is hostile until checked: a
50 MB patch, a path climbing out with ``..``, a NUL in a command. Each refusal is a UsageError
naming the argument, the value and the limit, and nothing has changed when it is raised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

from orchestrator.errors import UsageError

MAX_PATCH_BYTES = 2 * 1024 * 1024  # a reviewable change; a bigger one is split into several patches
MAX_MESSAGE_CHARS = 10_000
MAX_GOAL_CHARS = 4_000
MAX_PATH_CHARS = 4_096
MAX_ARGS = 256
MAX_COMMAND_CHARS = 64 * 1024
MAX_STEPS = 20
MAP_BUDGET = (256, 50_000)
MAX_FILE_BYTES = 256 * 1024  # of a file returned by read_file; the rest is cut off
MAX_FILE_READ = 8 * 1024 * 1024  # a bigger file is not read at all
MAX_TAIL_CHARS = 16 * 1024  # of each output stream of a sandbox command
MAX_DIFF_CHARS = 64 * 1024  # of a changeset's diff shown
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


def patch_bytes(patch: str) -> bytes:
    """The patch as bytes, refused when empty or over :data:`MAX_PATCH_BYTES`."""
    data = patch.encode("utf-8", "surrogateescape")
    if len(data) > MAX_PATCH_BYTES:
        raise UsageError(
            f"patch: {len(data)} bytes is over the {_mib(MAX_PATCH_BYTES)} limit of one patch; "
            "split the change into smaller patches"
        )
    if not data.strip():
        raise UsageError("patch: empty; give a unified diff (the output of `git diff`)")
    return data


def text(name: str, value: str, limit: int) -> str:
    """A free-text argument (message, goal): not blank, at most ``limit`` characters."""
    if not value.strip():
        raise UsageError(f"{name}: empty; say it in words")
    if len(value) > limit:
        raise UsageError(f"{name}: {len(value)} characters is over the limit of {limit}")
    return value.strip()


def repo_path(path: str) -> str:
    """A file path relative to the repo root, in POSIX form; never absolute, never ``..``, never ``.git/``."""
    if "\0" in path or len(path) > MAX_PATH_CHARS:
        raise UsageError(f"path {path[:80]!r}: not a file path")
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute():
        raise UsageError(f"path {path!r}: absolute; give a path relative to the repo root, like 'src/app.py'")
    parts = [p for p in pure.parts if p != "."]
    if ".." in parts:
        raise UsageError(f"path {path!r}: '..' is not allowed; give a path inside the repo, relative to its root")
    if not parts:
        raise UsageError(f"path {path!r}: names the repo root, not a file; `repo_map` lists the files")
    if parts[0] == ".git":
        raise UsageError(f"path {path!r}: inside .git/, which is not part of the repo's content")
    return "/".join(parts)


def command(argv: Sequence[str]) -> list[str]:
    """A command as its arguments: at least one, none holding NUL, within the size limits."""
    if not argv or not argv[0].strip():
        raise UsageError("command: empty; give the program and its arguments, e.g. ['python', '-m', 'pytest', '-q']")
    if len(argv) > MAX_ARGS or sum(len(a) for a in argv) > MAX_COMMAND_CHARS:
        raise UsageError(f"command: over the limit of {MAX_ARGS} arguments or {MAX_COMMAND_CHARS} characters")
    if any("\0" in a for a in argv):
        raise UsageError("command: an argument holds a NUL character")
    return list(argv)


def within(name: str, value: int, low: int, high: int) -> int:
    """An integer argument inside [low, high]."""
    if not low <= value <= high:
        raise UsageError(f"{name} {value}: must be between {low} and {high}")
    return value


def identifier(name: str, value: str) -> str:
    """A changeset or run id: letters, digits, ``.``, ``_`` and ``-``; never a path."""
    if not ID_RE.match(value):
        raise UsageError(f"{name} {value[:80]!r}: not an id (letters, digits, '.', '_' and '-')")
    return value
