"""Candidate worktrees: one isolated checkout per (run, step, attempt), its commit kept as a ref after
(:class:`Candidate`). Commits are written as objects (no hook of the repository runs) and kept by a
compare-and-swap ref transaction, so nothing is lost when an attempt fails or its process is killed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from orchestrator.agents.edits import AppliedEdits, EditProposal, plan_edits
from orchestrator.errors import ConflictError, EditError, GitError, UsageError
from orchestrator.gate import objects
from orchestrator.signing import sshsig
from orchestrator.store import gitops, worktrees
from orchestrator.store.gitops import ZERO, RefUpdate

IDENTITY_NAME = "Converge"
IDENTITY_EMAIL = "converge@localhost"
CANDIDATES = "refs/converge/candidates/"
FAILED = "refs/converge/failed/"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

Outcome = Literal["candidates", "failed"]
Signature = Callable[[bytes], str]  # a commit's text -> its armored SSH signature


def candidate_ref(outcome: Outcome, run: str, step: int | str, attempt: int) -> str:
    """The ref that keeps the candidate commit of ``run``/``step``-``attempt``."""
    prefix = CANDIDATES if outcome == "candidates" else FAILED
    return f"{prefix}{run}/{step}-{attempt}"


def kept_commit(repo: Path, run: str, step: int | str, attempt: int) -> tuple[Outcome, str] | None:
    """Where an earlier process kept this candidate (``candidates`` or ``failed``) and its commit."""
    names = {outcome: candidate_ref(outcome, run, step, attempt) for outcome in ("candidates", "failed")}
    refs = gitops.list_refs(repo, *names.values())  # both in one call: a step asks on every attempt
    for outcome in ("candidates", "failed"):
        if names[outcome] in refs:
            return outcome, refs[names[outcome]]
    return None


class Candidate:
    """A detached worktree of ``repo`` at ``base`` for one attempt; a context manager.

    Used as::

        with Candidate(repo_path, worktrees_dir, run=run, step=step, attempt=attempt, base=base) as cand:
            apply_edits(cand.path, proposal)
            commit = cand.commit("converge: fix the report")
            cand.keep("candidates")          # or "failed"

    The worktree lives at ``<worktrees_dir>/<run>/<step>-<attempt>`` (normally
    ``<ws>/cache/worktrees/``), detached at ``base``. Entering is idempotent: a worktree left by
    a killed process under the same key is reset to ``base`` and reused. Commits are written as
    objects (no hook of the repository runs), with a fixed identity, signed by the caller's
    signature function if it gives one. The commit is kept under
    ``refs/converge/candidates/<run>/<step>-<attempt>`` or ``refs/converge/failed/...`` by a
    compare-and-swap ref transaction; leaving the block removes the worktree (a commit not yet
    kept is kept under ``failed/`` first: nothing is lost).
    """

    def __init__(
        self,
        repo: Path,
        worktrees: Path,
        *,
        run: str,
        step: int | str,
        attempt: int,
        base: str,
    ) -> None:
        for label, value in (("run", run), ("step", str(step)), ("attempt", str(attempt))):
            if not _KEY_RE.match(value):
                raise UsageError(f"candidate {label} {value!r}: use letters, digits, '.', '_' or '-'")
        self.repo = repo
        self.run = run
        self.step = step
        self.attempt = attempt
        self.base = base
        self.path = worktrees / run / f"{step}-{attempt}"
        self.commit_sha: str | None = None
        self.kept: tuple[Outcome, str] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.commit_sha is not None and self.kept is None:
                self.keep("failed")
        finally:
            self.remove()

    def create(self) -> Path:
        """Check out ``base`` in the worktree, reusing (and resetting) one left under the same key."""
        base = gitops.resolve(self.repo, self.base)
        if base is None:
            raise GitError(f"{self.repo}: base {self.base!r} is not a commit")
        self.base = base
        if self.path.exists() and not self._is_our_worktree():
            shutil.rmtree(self.path)
        if self.path.exists():
            gitops.run(self.path, "checkout", "--quiet", "--force", "--detach", base)
            gitops.run(self.path, "reset", "--quiet", "--hard", base)
            gitops.run(self.path, "clean", "-ffdxq")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            worktrees.add_worktree(self.repo, self.path, base)
        self.commit_sha = None
        return self.path

    def _is_our_worktree(self) -> bool:
        if not (self.path / ".git").is_file():
            return False
        common = gitops.run(self.path, "rev-parse", "--git-common-dir", check=False).strip()
        own = gitops.run(self.repo, "rev-parse", "--git-common-dir").strip()
        if not common:
            return False
        return (self.path / common).resolve() == (self.repo / own).resolve()

    def remove(self) -> None:
        """Remove the worktree and its git bookkeeping (the kept ref keeps the commit)."""
        worktrees.remove_worktree(self.repo, self.path)
        parent = self.path.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    # --- the attempt's commit ---------------------------------------------------------------

    def commit(
        self,
        message: str,
        *,
        sign: Signature | None = None,
        date: str | None = None,
        paths: Sequence[str] | None = None,
        author: str | None = None,
    ) -> str:
        """Commit everything in the worktree on top of ``base``; returns the commit id.

        The commit object is written directly (``add``, ``write-tree``, ``hash-object``): no
        hook of the repository runs, the identity is Converge's, and the worktree's HEAD stays
        at ``base`` (the kept ref holds the commit). ``sign`` turns the commit's text into an
        armored SSH signature, stored in its ``gpgsig`` header as ``git commit -S`` does; ``date``
        (ISO 8601) fixes author and committer dates, so a resumed attempt that makes the same
        edits makes the same commit. The message is cleaned up as ``git commit`` cleans it.
        ``paths``: the only paths written since ``base`` (the rest of a large tree is not scanned).
        ``author`` (``Name <email>``): a person's change keeps their name; Converge stays the committer.
        """
        if not self.path.exists():
            raise GitError(f"{self.path}: the candidate worktree does not exist; enter the Candidate first")
        if paths is None:
            gitops.run(self.path, "add", "--all")
        else:
            gitops.run(self.path, "--literal-pathspecs", "add", "--all", "--", *paths)
        return self._commit_tree(gitops.run(self.path, "write-tree").strip(), message, sign, date, author=author)

    def commit_edits(
        self, proposal: EditProposal, message: str, *, sign: Signature | None = None, date: str | None = None
    ) -> tuple[str, AppliedEdits] | None:
        """Apply ``proposal`` to ``base`` and commit it (as :meth:`commit` does) without a worktree:
        the commit and what was applied.

        The files the edits name are read from ``base`` and the commit is written straight into
        the repository's objects (see :mod:`orchestrator.gate.objects`). None, with nothing written,
        when the repository or a path needs a checkout (attributes, symbolic links, SHA-256):
        then :meth:`create`, :func:`~orchestrator.agents.edits.apply_edits` and :meth:`commit`.
        """
        base = gitops.resolve(self.repo, self.base)
        if base is None:
            raise GitError(f"{self.repo}: base {self.base!r} is not a commit")
        self.base = base
        if not objects.supported(self.repo):
            return None
        try:
            files = objects.CommitFiles(self.repo, base, (block.path for block in proposal.edits))
            changes, applied = plan_edits(files, proposal)
        except objects.NeedsWorktree:
            return None
        tree = objects.commit_tree(self.repo, files, changes)
        return self._commit_tree(tree, message, sign, date, direct=True), applied

    def _commit_tree(
        self,
        tree: str,
        message: str,
        sign: Signature | None,
        date: str | None,
        *,
        direct: bool = False,
        author: str | None = None,
    ) -> str:
        header = gitops.commit_header(self.repo, self.base)
        if header is None:
            raise GitError(f"{self.repo}: {self.base!r} is not a commit")
        if tree == header[0]:
            raise EditError("The edits leave every file as it was; there is nothing to commit.")
        ident = f"{IDENTITY_NAME} <{IDENTITY_EMAIL}> {_git_date(date)}"
        by = f"{author} {_git_date(date)}" if author else ident
        text = f"tree {tree}\nparent {self.base}\nauthor {by}\ncommitter {ident}\n\n{_cleanup(message)}"
        raw = text.encode("utf-8")
        if sign is not None:
            raw = sshsig.signed_commit(raw, sign(raw))
        sha = objects.write_object(self.repo, "commit", raw) if direct else _write_commit(self.path, raw)
        self.commit_sha = sha
        return sha

    def keep(self, outcome: Outcome, *, unkept: bool = False) -> str:
        """Keep the commit under ``refs/converge/<outcome>/<run>/<step>-<attempt>``; idempotent.

        Keeping a commit already kept under the other outcome moves it there atomically.
        ``unkept``: the caller saw neither ref (:func:`kept_commit` said None), so the ref is
        created without reading them again; one made meanwhile fails that transaction and is
        then looked at as usual.
        """
        if self.commit_sha is None:
            raise GitError("no candidate commit to keep; call commit() first")
        ref = candidate_ref(outcome, self.run, self.step, self.attempt)
        if unkept:
            with contextlib.suppress(ConflictError):
                gitops.update_refs(self.repo, [RefUpdate(ref, self.commit_sha, ZERO)], f"converge: keep {outcome}")
                self.kept = (outcome, ref)
                return ref
        other: Outcome = "failed" if outcome == "candidates" else "candidates"
        other_ref = candidate_ref(other, self.run, self.step, self.attempt)
        refs = gitops.list_refs(self.repo, ref, other_ref)
        existing = refs.get(ref)
        if existing == self.commit_sha:
            self.kept = (outcome, ref)
            return ref
        if existing is not None:
            raise ConflictError(f"{ref} already keeps {existing[:12]}, not {self.commit_sha[:12]}")
        updates = [RefUpdate(ref, self.commit_sha, ZERO)]
        if refs.get(other_ref) == self.commit_sha:
            updates.append(RefUpdate(other_ref, ZERO, self.commit_sha))  # a move, in the same transaction
        gitops.update_refs(self.repo, updates, f"converge: keep {outcome}")
        self.kept = (outcome, ref)
        return ref

    def diff(self) -> str:
        """The candidate's diff against its base (committed)."""
        return gitops.diff(self.repo, self.base, self._result())

    def changed_paths(self) -> list[str]:
        """The paths the candidate commit changes."""
        return gitops.changed_paths(self.repo, self.base, self._result())

    def _result(self) -> str:
        if self.commit_sha is None:
            raise GitError("the candidate has no commit yet; call commit() first")
        return self.commit_sha


def _git_date(date: str | None) -> str:
    """``<epoch> <+hhmm>`` as git writes it: ``date`` (ISO 8601; local time when it names no zone), else now."""
    try:
        when = datetime.fromisoformat(date) if date is not None else datetime.now()
    except ValueError as exc:
        raise UsageError(f"commit date {date!r}: expected ISO 8601, e.g. 2024-01-02T03:04:05Z") from exc
    when = when.astimezone() if when.tzinfo is None else when
    offset = int(when.utcoffset().total_seconds()) // 60  # type: ignore[union-attr]
    sign = "-" if offset < 0 else "+"
    return f"{int(when.timestamp())} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


def _cleanup(message: str) -> str:
    """The message as ``git commit`` keeps it: trailing spaces, blank lines at either end and runs of
    blank lines removed; every line ends with a newline (an empty message stays empty)."""
    lines: list[str] = []
    for line in (raw.rstrip() for raw in message.splitlines()):
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "".join(f"{line}\n" for line in lines)


def _write_commit(cwd: Path, raw: bytes) -> str:
    """Write the commit object ``raw``; returns its id."""
    argv, hook = gitops.git_argv(["hash-object", "-t", "commit", "-w", "--stdin"])
    proc = subprocess.run(argv, cwd=cwd, input=raw, capture_output=True, check=False, preexec_fn=hook)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git hash-object in {cwd}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout.decode().strip()
