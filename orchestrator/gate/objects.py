"""Edits committed in git's object store: a candidate commit made without a worktree.

Checking a commit out to edit three files writes every file of the repo; here the files an edit names
are read from the commit (one ``cat-file --batch``) and the new blobs, the trees above them and the
commit are written as loose objects. :func:`supported` and :class:`NeedsWorktree` say when the caller
must take a worktree instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.agents.edits import Pending, normal_path
from orchestrator.errors import EditError, GitError
from orchestrator.store import gitops
from orchestrator.store.storage import file_stamp

TREE = b"40000"
BLOB = b"100644"
_UNPLAIN = (b"120000", b"160000")  # a symbolic link, a submodule
_ATTRIBUTES = b".gitattributes"
_SETTINGS = r"^(core\.(autocrlf|attributesfile|sharedrepository)|extensions\.objectformat)$"


class NeedsWorktree(Exception):
    """These edits must be made in a checked-out worktree (a link, a submodule, attributes on the way)."""


@dataclass(frozen=True)
class Entry:
    """One entry of a tree object: mode and name as git stores them, and the raw object id."""

    mode: bytes
    name: bytes
    oid: bytes


# --- may this repo be written to directly? ---------------------------------------------------------

_SUPPORTED: dict[Path, tuple[tuple[object, ...], bool]] = {}


def supported(repo: Path) -> bool:
    """Whether edits to ``repo`` may be committed in its objects: see below.

    This is equivalent to checking out, editing and ``git add`` only when git would write the
    files' bytes unchanged and the paths are plain. So this refuses (and the caller takes the
    worktree) for a repo with SHA-256 objects, a shared repository, CRLF conversion
    (``core.autocrlf``) or any attributes file outside the tree; and :class:`CommitFiles` raises
    :class:`NeedsWorktree` for a path that goes through a symbolic link or a submodule, or lies
    under a directory with a ``.gitattributes``.
    """
    gitdir = repo / ".git"
    if not gitdir.is_dir() or (gitdir / "commondir").exists():
        return False
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    configs = (gitdir / "config", home / ".gitconfig", xdg / "config", Path("/etc/gitconfig"))
    attributes = (gitdir / "info" / "attributes", xdg / "attributes", Path("/etc/gitattributes"))
    stamp = (*(file_stamp(p) for p in (*configs, *attributes)), os.environ.get("GIT_CONFIG_GLOBAL"))
    known = _SUPPORTED.get(repo)
    if known is not None and known[0] == stamp:
        return known[1]
    answer = not any(p.exists() for p in attributes) and _settings_allow(repo)
    _SUPPORTED[repo] = (stamp, answer)
    return answer


def _settings_allow(repo: Path) -> bool:
    out = gitops.run(repo, "config", "--get-regexp", _SETTINGS, check=False)
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip().lower()
        if key == "core.autocrlf" and value not in ("false", "no", "off", "0", ""):
            return False
        if key == "core.sharedrepository" and value not in ("false", "no", "off", "0", "umask", ""):
            return False
        if key == "core.attributesfile" and value:
            return False
        if key == "extensions.objectformat" and value != "sha1":
            return False
    return True


# --- reading a commit's files ------------------------------------------------------------------------


class CommitFiles:
    """The files of ``commit`` that ``paths`` name, read in one ``cat-file --batch`` (``edits.Files``)."""

    def __init__(self, repo: Path, commit: str, paths: Iterable[str]) -> None:
        self.repo = repo
        self.commit = commit
        rels = set()
        for path in paths:
            try:
                rels.add(normal_path(path))
            except EditError:
                continue  # check() says why, in its turn
        if any(ord(c) < 32 for rel in rels for c in rel):
            raise NeedsWorktree("a path with a control character")
        dirs = {"/".join(rel.split("/")[:n]) for rel in rels for n in range(rel.count("/") + 1)}
        specs = {d: f"{commit}:{d}" if d else f"{commit}^{{tree}}" for d in dirs}
        found = gitops.read_batch(repo, commit, [*specs.values(), *(f"{commit}:{rel}" for rel in rels)])
        self.trees: dict[str, list[Entry]] = {}
        for d in sorted(specs, key=lambda d: d.count("/") + bool(d)):  # a parent before its children
            raw = found[specs[d]]
            if raw is not None and (not d or self.mode_of(d) == TREE):
                self.trees[d] = parse_tree(raw)
        if rels and "" not in self.trees:
            raise GitError(f"{repo}: cannot read the tree of {commit}")
        self.blobs = {rel: found[f"{commit}:{rel}"] for rel in rels}

    def mode_of(self, rel: str) -> bytes | None:
        """The mode of ``rel`` in the commit (None: it is not there, or lies below something not read)."""
        parent, _, name = rel.rpartition("/")
        for entry in self.trees.get(parent, ()):
            if entry.name == name.encode():
                return entry.mode
        return None

    def check(self, path: str) -> str:
        rel = normal_path(path)
        parts = rel.split("/")
        if parts[-1] == _ATTRIBUTES.decode():
            raise NeedsWorktree(f"{rel} changes how the files beside it are checked in")
        for n in range(len(parts)):
            here = "/".join(parts[:n])
            if here not in self.trees:
                break  # a new directory: nothing below it exists
            if any(e.name == _ATTRIBUTES for e in self.trees[here]):
                raise NeedsWorktree(f"{here or '.'}/.gitattributes may change how {rel} is checked out")
            mode = self.mode_of("/".join(parts[: n + 1]))
            if mode in _UNPLAIN or (mode not in (None, TREE) and n < len(parts) - 1):
                raise NeedsWorktree(f"{rel} goes through a symbolic link, a submodule or a file")
        return rel

    def read(self, rel: str) -> bytes | None:
        mode = self.mode_of(rel)
        if mode == TREE:
            raise EditError(f"{rel!r} is a directory, not a file")
        return None if mode is None else self.blobs[rel]


def parse_tree(raw: bytes) -> list[Entry]:
    """The entries of a raw (SHA-1) tree object."""
    entries, pos = [], 0
    while pos < len(raw):
        nul = raw.index(b"\0", pos)
        mode, _, name = raw[pos:nul].partition(b" ")
        entries.append(Entry(mode, name, raw[nul + 1 : nul + 21]))
        pos = nul + 21
    return entries


# --- writing objects -------------------------------------------------------------------------------------


def write_object(repo: Path, kind: str, body: bytes) -> str:
    """Store ``body`` as a loose object of ``kind`` (blob, tree, commit) in ``repo``; returns its id.

    Written as git writes it (``<type> <size>\\0<body>``, zlib-deflated, named by SHA-1), created
    read-only and linked into place so an existing object is never replaced.
    """
    data = f"{kind} {len(body)}\0".encode() + body
    oid = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    folder = repo / ".git" / "objects" / oid[:2]
    final = folder / oid[2:]
    if final.exists():
        return oid
    folder.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix="tmp_obj_")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(zlib.compress(data, 1))  # git's core.looseCompression default: best speed
        tmp.chmod(0o444)
        try:
            os.link(tmp, final)
        except FileExistsError:
            pass  # written meanwhile by someone else: same id, same content
        except OSError:
            tmp.replace(final)  # a file system without hard links, as git does
    finally:
        tmp.unlink(missing_ok=True)
    return oid


def write_tree(repo: Path, entries: Sequence[Entry]) -> str:
    """Store a tree of ``entries`` (sorted as git sorts them: a directory as if its name ended in '/')."""
    ordered = sorted(entries, key=lambda e: e.name + b"/" if e.mode == TREE else e.name)
    return write_object(repo, "tree", b"".join(e.mode + b" " + e.name + b"\0" + e.oid for e in ordered))


def commit_tree(repo: Path, files: CommitFiles, changes: Sequence[Pending]) -> str:
    """The tree of ``files.commit`` with ``changes`` written in: new blobs and the trees above them."""
    children: dict[str, dict[bytes, Entry]] = {}
    for change in changes:
        parent, _, name = change.rel.rpartition("/")
        mode = files.mode_of(change.rel) if change.original is not None else BLOB
        oid = bytes.fromhex(write_object(repo, "blob", change.text.encode("utf-8")))
        children.setdefault(parent, {})[name.encode()] = Entry(mode or BLOB, name.encode(), oid)
        while parent:  # every directory above a change is rewritten
            parent = parent.rpartition("/")[0]
            children.setdefault(parent, {})
    for here in sorted(children, key=lambda d: (-d.count("/") if d else 1, d)):
        entries = {e.name: e for e in files.trees.get(here, ())}
        entries.update(children[here])
        oid = bytes.fromhex(write_tree(repo, list(entries.values())))
        if here:
            parent, _, name = here.rpartition("/")
            children[parent][name.encode()] = Entry(TREE, name.encode(), oid)
        else:
            return oid.hex()
    raise GitError("no change to commit")  # plan_edits never gives none
