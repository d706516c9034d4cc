"""The changeset as git sees it: :class:`ChangeInput`, built from two commits by git alone.

Nothing here is taken from a model: paths, modes, line changes and symlink targets come
from ``git diff`` between the base and the result commit, parsed once into per-file
records that the policy rules read.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from orchestrator.errors import GitError, RepoError
from orchestrator.policy.baseline import TestComparison
from orchestrator.store import gitops
from orchestrator.store.reports import TestReport

Status = Literal["added", "modified", "deleted", "renamed", "copied", "type-changed"]

SYMLINK = "120000"
SUBMODULE = "160000"
EXECUTABLE = "100755"
ABSENT = "000000"

_STATUS: dict[str, Status] = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "C": "copied",
    "T": "type-changed",
}
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_MANIFEST = re.compile(r"(?:^|/)(?:pyproject\.toml|requirements[^/]*\.(?:txt|in))$")
_TEST_CONFIG = re.compile(r"(?:^|/)(?:pyproject\.toml|setup\.cfg|tox\.ini|\.?pytest\.(?:ini|toml))$")
_GIT_FLAGS = ("-c", "core.quotepath=off", "-c", "diff.noprefix=false", "-c", "diff.mnemonicprefix=false")


@dataclass(frozen=True)
class Author:
    """Who proposed the change: an agent card and its model, or a person."""

    agent: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class FileChange:
    """One file touched by the change, with the lines it adds and removes."""

    path: str
    status: Status
    old_path: str | None = None
    old_mode: str = ABSENT
    new_mode: str = ABSENT
    binary: bool = False
    symlink_target: str | None = None
    added: tuple[tuple[int, str], ...] = ()
    removed: tuple[tuple[int, str], ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path the change touches for this file (a rename touches both names)."""
        if self.old_path is None or self.old_path == self.path:
            return (self.path,)
        return (self.old_path, self.path)

    @property
    def exec_bit_set(self) -> bool:
        """The file becomes executable (new executable file, or mode 644 -> 755)."""
        return self.new_mode == EXECUTABLE and self.old_mode != EXECUTABLE


@dataclass(frozen=True)
class ChangeInput:
    """Everything the policy judges: the repo, both commits, git's diff, tests and author."""

    repo: str
    is_self: bool
    base: str
    result: str
    diff: str
    files: tuple[FileChange, ...]
    manifests: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    tests: TestReport | None = None
    author: Author = Author()
    baseline: TestComparison | None = None
    configs: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    @property
    def lines_added(self) -> int:
        return sum(len(f.added) for f in self.files)

    @property
    def lines_removed(self) -> int:
        return sum(len(f.removed) for f in self.files)


@dataclass(frozen=True)
class _Git:
    """Git pointed at a repo's object store from an empty directory.

    Running outside any work tree means no ``.gitattributes`` of the repo applies, so a change
    cannot hide its text from the policy by marking files ``-diff`` or binary. Every call reads
    objects named by ``ids``, so its answer is remembered (:func:`gitops.read_objects`).
    """

    repo: Path
    git_dir: str

    def __call__(self, *args: str, ids: Sequence[str]) -> bytes:
        git_args = (f"--git-dir={self.git_dir}", *_GIT_FLAGS, *args)
        return gitops.read_objects(_empty_dir(), *git_args, ids=ids, where=self.repo)


def _empty_dir() -> Path:
    """This process's empty directory to run git from (made again if something removed it)."""
    path = _made_empty_dir()
    if not path.is_dir():
        _made_empty_dir.cache_clear()
        path = _made_empty_dir()
    return path


@functools.lru_cache(maxsize=1)
def _made_empty_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="converge-policy-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass
class _Raw:
    status: Status
    path: str
    old_path: str | None
    old_mode: str
    new_mode: str
    new_sha: str
    old_sha: str


def _parse_raw(out: bytes) -> list[_Raw]:
    """``git diff --raw -z`` records: ``:old new oldsha newsha S\\0path\\0[path2\\0]``."""
    parts = out.decode("utf-8", "surrogateescape").split("\0")
    entries: list[_Raw] = []
    i = 0
    while i < len(parts) and parts[i].startswith(":"):
        old_mode, new_mode, old_sha, new_sha, code = parts[i][1:].split(" ")
        status = _STATUS.get(code[0], "modified")
        if code[0] in "RC":
            entries.append(_Raw(status, parts[i + 2], parts[i + 1], old_mode, new_mode, new_sha, old_sha))
            i += 3
        else:
            entries.append(_Raw(status, parts[i + 1], None, old_mode, new_mode, new_sha, old_sha))
            i += 2
    return entries


@dataclass
class _Section:
    binary: bool = False
    added: list[tuple[int, str]] = field(default_factory=list)
    removed: list[tuple[int, str]] = field(default_factory=list)


def parse_patch(text: str) -> list[_Section]:
    """Split a ``git diff -p`` into per-file sections of added and removed lines (one pass)."""
    sections: list[_Section] = []
    current: _Section | None = None
    old_left = new_left = old_no = new_no = 0
    for line in text.split("\n"):
        if old_left > 0 or new_left > 0:
            tag = line[:1]
            if tag == "+":
                current.added.append((new_no, line[1:]))  # type: ignore[union-attr]
                new_no += 1
                new_left -= 1
            elif tag == "-":
                current.removed.append((old_no, line[1:]))  # type: ignore[union-attr]
                old_no += 1
                old_left -= 1
            elif tag == "\\":
                continue
            else:
                old_no += 1
                new_no += 1
                old_left -= 1
                new_left -= 1
            continue
        if line.startswith("diff --git "):
            current = _Section()
            sections.append(current)
        elif current is None:
            continue
        elif line.startswith("@@"):
            match = _HUNK.match(line)
            if match:
                old_no, new_no = int(match[1]), int(match[3])
                old_left = int(match[2]) if match[2] is not None else 1
                new_left = int(match[4]) if match[4] is not None else 1
        elif line.startswith(("Binary files ", "GIT binary patch")):
            current.binary = True
    return sections


def _blob(git: _Git, sha: str) -> str | None:
    if sha == "0" * len(sha):
        return None
    return git("cat-file", "blob", sha, ids=[sha]).decode("utf-8", "replace")


def _commit(git: _Git, ref: str) -> str:
    found = gitops.resolve(git.repo, ref)
    if found is None:
        raise GitError(f"{ref}: no such commit in {git.repo}")
    return found


def _git_dir(repo_path: Path) -> str:
    own = repo_path / ".git"
    if own.is_dir() and (own / "HEAD").is_file():  # a plain repository (registered ones are): no git call
        return str(own.resolve())
    proc = subprocess.run(
        ["git", "rev-parse", "--absolute-git-dir"], cwd=repo_path, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RepoError(f"{repo_path}: not a git repository")
    return proc.stdout.strip()


def change_from_commits(
    repo_path: Path,
    base: str,
    result: str,
    repo_name: str,
    is_self: bool = False,
    tests: TestReport | None = None,
    author: Author | None = None,
) -> ChangeInput:
    """Build the :class:`ChangeInput` of ``base..result`` in ``repo_path`` from git alone."""
    git = _Git(repo_path, _git_dir(repo_path))
    return _change(git, base, result, repo_name, is_self, tests, author or Author())


def _change(
    git: _Git, base: str, result: str, repo_name: str, is_self: bool, tests: TestReport | None, author: Author
) -> ChangeInput:
    base, result = _commit(git, base), _commit(git, result)
    common = ("--no-color", "--no-ext-diff", "--no-textconv", "-M", "--full-index", "--no-abbrev")
    raw = _parse_raw(git("diff", "--raw", "-z", *common, base, result, "--", ids=[base, result]))
    patch = git("diff", "-p", *common, base, result, "--", ids=[base, result]).decode("utf-8", "replace")
    sections = parse_patch(patch)
    if len(sections) != len(raw):
        raise GitError(f"git diff {base[:12]}..{result[:12]}: {len(raw)} files but {len(sections)} patch sections")
    files = []
    manifests: dict[str, tuple[str | None, str | None]] = {}
    configs: dict[str, tuple[str | None, str | None]] = {}
    for entry, section in zip(raw, sections, strict=True):
        target = _blob(git, entry.new_sha) if entry.new_mode == SYMLINK else None
        files.append(
            FileChange(
                path=entry.path,
                status=entry.status,
                old_path=entry.old_path,
                old_mode=entry.old_mode,
                new_mode=entry.new_mode,
                binary=section.binary,
                symlink_target=target,
                added=tuple(section.added),
                removed=tuple(section.removed),
            )
        )
        if (_MANIFEST.search(entry.path) or _TEST_CONFIG.search(entry.path)) and not section.binary:
            old = _blob(git, entry.old_sha) if entry.old_mode not in (ABSENT, SYMLINK) else None
            new = _blob(git, entry.new_sha) if entry.new_mode not in (ABSENT, SYMLINK) else None
            if _MANIFEST.search(entry.path):
                manifests[entry.path] = (old, new)
            if _TEST_CONFIG.search(entry.path):
                configs[entry.path] = (old, new)
    return ChangeInput(
        repo=repo_name,
        is_self=is_self,
        base=base,
        result=result,
        diff=patch,
        files=tuple(files),
        manifests=manifests,
        configs=configs,
        tests=tests,
        author=author,
    )


def symlink_escapes(link_path: str, target: str) -> bool:
    """True when a symlink at ``link_path`` pointing to ``target`` resolves outside the repo (or into .git)."""
    if not target or target.startswith(("/", "~")):
        return True
    stack: list[str] = []
    for part in (*PurePosixPath(link_path).parent.parts, *PurePosixPath(target).parts):
        if part == "..":
            if not stack:
                return True
            stack.pop()
        elif part not in (".", ""):
            stack.append(part)
    return bool(stack) and stack[0] == ".git"
