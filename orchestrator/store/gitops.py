"""Git at the boundary: the ``git`` binary for plumbing, reads remembered, refs read from files.

A failed git command becomes a :class:`GitError` naming the command (through ``errors.translate``).
Ref changes go through :func:`update_refs`, one ``git update-ref --stdin`` transaction whose every
line carries the expected old value: all of them apply, or none (compare-and-swap).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConflictError, GitError, translate
from orchestrator.store import refsession
from orchestrator.store.storage import file_stamp

ZERO = "0" * 40
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGKILL when Converge dies, so a killed operation leaves no git running on."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the journal still repairs the tree afterwards
        pass


_SETPRIV = shutil.which("setpriv")
# subcommands that write nothing (not status: it may refresh the index)
READ_ONLY = frozenset({"rev-parse", "for-each-ref", "diff", "cat-file", "ls-files", "ls-tree", "show"})


def git_argv(args: Sequence[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command line for ``git ARGS`` and the preexec hook that makes it die with Converge.

    A git that writes (refs, the index, the tree) must not outlive a killed Converge, or it
    would race the journal's repair: ``setpriv --pdeathsig`` sets the parent-death signal
    and execs git, which lets Python spawn with vfork (a ``preexec_fn`` forces a full fork
    of this large process, far dearer than vfork, and a step makes dozens). A git that
    only reads may finish on its own, so it runs plainly, saving setpriv's exec.
    """
    if _subcommand(args) in READ_ONLY:
        return ["git", *args], None
    if _SETPRIV is not None:
        return [_SETPRIV, "--pdeathsig", "KILL", "git", *args], None
    return ["git", *args], _die_with_parent


def _subcommand(args: Sequence[str]) -> str:
    """The git subcommand in ``args`` (past global options such as ``-c key=value``)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-c", "-C", "--git-dir", "--work-tree"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


@dataclass(frozen=True)
class RefUpdate:
    """One line of a ref transaction: set ``ref`` to ``new`` if it now holds ``old``.

    ``old=ZERO`` means the ref must not exist yet; ``new=ZERO`` deletes it.
    """

    ref: str
    new: str
    old: str


def run(cwd: Path, *args: str, stdin: str | None = None, check: bool = True, umask: int = -1) -> str:
    """Run ``git ARGS`` in ``cwd`` and return stdout; a failure is a GitError naming the command.

    ``umask``: the mode mask of the files git writes (-1: this process's).
    """
    argv, hook = git_argv(args)
    try:
        proc = subprocess.run(
            argv, cwd=cwd, input=stdin, capture_output=True, text=True, check=check, preexec_fn=hook, umask=umask
        )
    except subprocess.CalledProcessError as exc:
        raise translate(exc, "git", f"git {args[0]} in {cwd}") from exc
    return proc.stdout


FULL_ID = re.compile(r"^[0-9a-f]{40}$")


class _ObjectReads:
    """Answers of git reads that depend only on objects named by full ids, newest kept, up to a byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self.answers: OrderedDict[tuple[str, tuple[str, ...], bytes | None], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, tuple[str, ...], bytes | None]) -> bytes | None:
        with self.lock:
            found = self.answers.get(key)
            if found is not None:
                self.answers.move_to_end(key)
            return found

    def put(self, key: tuple[str, tuple[str, ...], bytes | None], answer: bytes) -> None:
        if len(answer) > self.budget // 4:
            return
        with self.lock:
            if key in self.answers:
                return
            self.answers[key] = answer
            self.size += len(answer)
            while self.size > self.budget:
                _, dropped = self.answers.popitem(last=False)
                self.size -= len(dropped)


_OBJECT_READS = _ObjectReads(budget=32 << 20)


def read_objects(
    cwd: Path, *args: str, ids: Sequence[str], stdin: bytes | None = None, where: Path | None = None
) -> bytes:
    """``git ARGS`` (a read) as bytes; a failure is a GitError naming the command and ``where`` (else ``cwd``).

    When every one of ``ids`` (the objects the command reads, e.g. the two commits of a diff)
    is a full object id, the answer depends on nothing else: objects never change. It is then
    remembered, per directory and arguments, so the diff or commit text a step reads when it
    judges, signs, verifies and promotes costs one git call, not four.
    """
    remembered = all(FULL_ID.match(i) for i in ids)
    key = (str(cwd), args, stdin)
    if remembered and (found := _OBJECT_READS.get(key)) is not None:
        return found
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, check=True)
    except subprocess.CalledProcessError as exc:
        raise translate(exc, "git", f"git {_subcommand(args)} in {where or cwd}") from exc
    if remembered:
        _OBJECT_READS.put(key, proc.stdout)
    return proc.stdout


def read_batch(cwd: Path, commit: str, specs: Sequence[str]) -> dict[str, bytes | None]:
    """Objects of ``commit`` (``<commit>:<path>``, ``<commit>^{tree}``...) in one ``cat-file --batch``:
    each one's content, None where it is missing. Remembered, as :func:`read_objects` says."""
    request = "".join(f"{s}\n" for s in specs).encode()
    out, pos = read_objects(cwd, "cat-file", "--batch", ids=[commit], stdin=request), 0
    found: dict[str, bytes | None] = {}
    for spec in specs:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].split()
        if header[-1] == b"missing":
            found[spec] = None
            pos = header_end + 1
            continue
        size = int(header[2])
        found[spec] = out[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1
    return found


def tree_entries(tree: bytes, hash_len: int) -> list[tuple[str, str]]:
    """(mode, name) of each entry of a raw tree object (``hash_len``: 20 for SHA-1, 32 for SHA-256)."""
    entries, pos = [], 0
    while pos < len(tree):
        nul = tree.index(b"\0", pos)
        mode, _, name = tree[pos:nul].partition(b" ")
        entries.append((mode.decode(), name.decode(errors="replace")))
        pos = nul + 1 + hash_len
    return entries


def forget_reads() -> None:
    """Drop every remembered read (for measuring or checking a read as a new process makes it)."""
    with _OBJECT_READS.lock:
        _OBJECT_READS.answers.clear()
        _OBJECT_READS.size = 0


def name_status(cwd: Path, old: str, new: str) -> list[tuple[str, str]]:
    """What changes from commit ``old`` to ``new``: (A, D, M or T, path) pairs, renames as delete and add."""
    out = read_objects(cwd, "diff", "--name-status", "--no-renames", "-z", old, new, ids=[old, new])
    fields = out.decode("utf-8", "surrogateescape").split("\0")
    return [(fields[i][:1], fields[i + 1]) for i in range(0, len(fields) - 1, 2) if fields[i]]


def commit_text(cwd: Path, commit: str) -> str | None:
    """The raw text of ``commit`` (a full id or any revision), or None when it is not a commit."""
    try:
        return read_objects(cwd, "cat-file", "commit", commit, ids=[commit]).decode("utf-8", "surrogateescape")
    except GitError:
        return None


def commit_header(cwd: Path, commit: str) -> tuple[str, str] | None:
    """The tree and first parent of ``commit`` (one git call, once), or None when it is not a commit."""
    text = commit_text(cwd, commit)
    if text is None:
        return None
    fields = dict(ln.split(" ", 1) for ln in text.split("\n\n", 1)[0].splitlines() if " " in ln and ln[0] != " ")
    if "tree" not in fields:
        return None
    return fields["tree"], fields.get("parent", "")


def resolve(cwd: Path, ref: str) -> str | None:
    """The commit ``ref`` points to, or None when it does not exist (a full commit id: no git call, once read)."""
    if FULL_ID.match(ref) and commit_text(cwd, ref) is not None:
        return ref
    out = run(cwd, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
    return out or None


def list_refs(cwd: Path, *patterns: str) -> dict[str, str]:
    """The refs under (or named exactly by) ``patterns`` mapped to the object they point to.

    What ``git for-each-ref -- PATTERNS`` lists (a pattern matches a ref completely or up to
    a slash), read from the repository's files: a step lists refs four times, and a git
    process costs more than reading a few files. Anything this reading does not cover is asked of git (see
    :func:`_read_refs`).
    """
    found = _read_refs(cwd, patterns)
    if found is not None:
        return found
    refs: dict[str, str] = {}
    for line in run(cwd, "for-each-ref", "--format=%(objectname) %(refname)", "--", *patterns).splitlines():
        sha, _, name = line.partition(" ")
        refs[name] = sha
    return refs


_REF_VALUE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def _read_refs(cwd: Path, patterns: Sequence[str]) -> dict[str, str] | None:
    """Refs matching literal ``patterns`` from the files backend: loose files over ``packed-refs``.

    None (ask git) for anything else: no ``.git`` directory at ``cwd``, the reftable backend,
    glob patterns, a symbolic or unreadable ref, or ``packed-refs`` rewritten during the read
    three times running (git packs refs by writing ``packed-refs``, then deleting the loose files:
    reading it after the loose files, and again unchanged, sees each ref in one place or the other).
    """
    gitdir = cwd / ".git"
    if not patterns or any(c in p for p in patterns for c in "*?[\\") or any(".." in p for p in patterns):
        return None
    if not gitdir.is_dir() or (gitdir / "reftable").exists() or (gitdir / "commondir").exists():
        return None
    roots = {p.rstrip("/") for p in patterns}
    packed_path = gitdir / "packed-refs"
    for _ in range(3):
        before = file_stamp(packed_path)
        loose: dict[str, str] = {}
        try:
            for root in roots:
                if not _read_loose(gitdir, root, loose):
                    return None
            packed = packed_path.read_text(encoding="utf-8") if before is not None else ""
        except FileNotFoundError:
            continue  # a ref (or packed-refs) went while being read: read again
        except (OSError, UnicodeDecodeError):
            return None
        if file_stamp(packed_path) != before:
            continue
        return _with_packed(loose, packed, roots)
    return None


def _with_packed(loose: dict[str, str], packed: str, roots: set[str]) -> dict[str, str] | None:
    """The loose refs, and the packed ones under ``roots`` that no loose file overrides (sorted by name)."""
    refs = dict(loose)
    for line in packed.splitlines():
        if line.startswith(("#", "^")) or not line:
            continue
        sha, _, name = line.partition(" ")
        if name not in refs and any(name == r or name.startswith(r + "/") for r in roots):
            if not _REF_VALUE.match(sha):
                return None
            refs[name] = sha
    return dict(sorted(refs.items()))


def _read_loose(gitdir: Path, root: str, into: dict[str, str]) -> bool:
    """Add the loose refs named ``root`` or under it to ``into``; False when one is not a plain object id."""
    top = gitdir / root
    if top.is_file():
        files = [(root, top)]
    elif top.is_dir():
        files = []
        for here, dirs, names in os.walk(top):
            dirs.sort()
            rel = Path(here).relative_to(gitdir).as_posix()
            files += [(f"{rel}/{n}", Path(here, n)) for n in sorted(names) if not n.endswith(".lock")]
    else:
        return True
    for name, path in files:
        value = path.read_text(encoding="utf-8").strip()
        if not _REF_VALUE.match(value):
            return False  # symbolic, or not a ref at all: git knows what to make of it
        into[name] = value
    return True


def update_refs(cwd: Path, updates: Sequence[RefUpdate], message: str) -> None:
    """Apply ``updates`` as one atomic compare-and-swap transaction, or raise ConflictError.

    Converge's own refs (all under ``refs/converge/``) go through a long-lived session
    (:mod:`orchestrator.store.refsession`); a transaction that moves a branch or HEAD gets its own
    git, which dies with Converge.
    """
    # HEAD is dereferenced: the checkout's branch (`converge`) follows, or a detached HEAD moves itself
    lines = [f"delete {u.ref} {u.old}" if u.new == ZERO else f"update {u.ref} {u.new} {u.old}" for u in updates]
    if all(u.ref.startswith("refs/converge/") for u in updates):
        refsession.transact(cwd, message, lines)
        return
    argv, hook = git_argv(["update-ref", "--stdin", "-m", message])
    request = "\n".join(["start", *lines, "prepare", "commit", ""])
    proc = subprocess.run(argv, cwd=cwd, input=request, capture_output=True, text=True, check=False, preexec_fn=hook)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        reason = detail[-1] if detail else f"exit {proc.returncode}"
        raise ConflictError(f"refs changed by another process, nothing applied ({reason})")


def diff(repo: Path, base: str, result: str) -> str:
    """The full diff from ``base`` to ``result`` (binary-safe, no renames, no external tools).

    Line endings are kept as git wrote them (no newline translation), so CRLF files diff exactly.
    """
    args = ("diff", "--no-color", "--no-ext-diff", "--no-renames", "--binary", base, result)
    return read_objects(repo, *args, ids=[base, result]).decode("utf-8", errors="replace")


def changed_paths(repo: Path, base: str, result: str) -> list[str]:
    """Paths added, changed or deleted between ``base`` and ``result``, sorted."""
    return sorted(path for _, path in name_status(repo, base, result))
