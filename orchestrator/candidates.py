"""Candidate worktrees: one isolated checkout per (run, step, attempt), kept as a ref after.

    with Candidate(repo_path, worktrees_dir, run=run, step=step, attempt=attempt, base=base) as cand:
        apply_edits(cand.path, proposal)
        commit = cand.commit("converge: fix the report")
        cand.keep("candidates")          # or "failed"

The worktree lives at ``<worktrees_dir>/<run>/<step>-<attempt>`` (normally
``<ws>/cache/worktrees/``), detached at ``base``. Entering is idempotent: a worktree left by
a killed process under the same key is reset to ``base`` and reused. Commits use a fixed
identity, never run the repository's hooks, and take extra ``-c`` config (signing) from the
caller. The commit is kept under ``refs/converge/candidates/<run>/<step>-<attempt>`` or
``refs/converge/failed/...`` by a compare-and-swap ref transaction; leaving the block removes
the worktree (a commit not yet kept is kept under ``failed/`` first: nothing is lost).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from orchestrator import gitops
from orchestrator.errors import ConflictError, EditError, GitError, UsageError
from orchestrator.gitops import ZERO, RefUpdate

IDENTITY_NAME = "Converge"
IDENTITY_EMAIL = "converge@localhost"
CANDIDATES = "refs/converge/candidates/"
FAILED = "refs/converge/failed/"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

Outcome = Literal["candidates", "failed"]


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


def diff(repo: Path, base: str, result: str) -> str:
    """The full diff from ``base`` to ``result`` (binary-safe, no renames, no external tools).

    Line endings are kept as git wrote them (no newline translation), so CRLF files diff exactly.
    """
    argv = ["git", "diff", "--no-color", "--no-ext-diff", "--no-renames", "--binary", base, result]
    proc = subprocess.run(argv, cwd=repo, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git diff in {repo}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout.decode("utf-8", errors="replace")


def changed_paths(repo: Path, base: str, result: str) -> list[str]:
    """Paths added, changed or deleted between ``base`` and ``result``, sorted."""
    out = gitops.run(repo, "diff", "--name-only", "--no-renames", "-z", base, result)
    return sorted(p for p in out.split("\0") if p)


def _git_config_args(config: Sequence[str]) -> list[str]:
    args = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false"]
    for item in config:
        if item == "-c":
            continue
        if "=" not in item:
            raise UsageError(f"git config {item!r}: expected key=value")
        args += ["-c", item]
    return args


class Candidate:
    """A detached worktree of ``repo`` at ``base`` for one attempt; a context manager."""

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
            gitops.run(self.repo, "worktree", "add", "--quiet", "--force", "--detach", str(self.path), base)
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
        removed_by_git = False
        if self.path.exists():
            gitops.run(self.repo, "worktree", "remove", "--force", "--force", str(self.path), check=False)
            removed_by_git = not self.path.exists()
        if not removed_by_git:  # git refused, or the directory was gone already: drop its bookkeeping
            shutil.rmtree(self.path, ignore_errors=True)
            gitops.run(self.repo, "worktree", "prune")
        parent = self.path.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    # --- the attempt's commit ---------------------------------------------------------------

    def commit(self, message: str, *, config: Sequence[str] = (), date: str | None = None) -> str:
        """Commit everything in the worktree on top of ``base``; returns the commit id.

        ``config`` items are ``key=value`` git settings passed as ``-c`` (e.g. signing);
        ``date`` (any git date) fixes author and committer dates, so a resumed attempt that
        makes the same edits makes the same commit.
        """
        config_args = _git_config_args(config)
        if not self.path.exists():
            raise GitError(f"{self.path}: the candidate worktree does not exist; enter the Candidate first")
        gitops.run(self.path, "add", "--all")
        env = {
            "GIT_AUTHOR_NAME": IDENTITY_NAME,
            "GIT_AUTHOR_EMAIL": IDENTITY_EMAIL,
            "GIT_COMMITTER_NAME": IDENTITY_NAME,
            "GIT_COMMITTER_EMAIL": IDENTITY_EMAIL,
        }
        if date is not None:
            env |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        args = [
            *config_args,
            "-c",
            f"user.name={IDENTITY_NAME}",
            "-c",
            f"user.email={IDENTITY_EMAIL}",
            "commit",
            "--quiet",
            "--no-verify",
            "--allow-empty-message",
            "-F",
            "-",
        ]
        _run_env(self.path, args, message, env)
        sha = gitops.resolve(self.path, "HEAD")
        assert sha is not None
        self.commit_sha = sha
        return sha

    def keep(self, outcome: Outcome) -> str:
        """Keep the commit under ``refs/converge/<outcome>/<run>/<step>-<attempt>``; idempotent.

        Keeping a commit already kept under the other outcome moves it there atomically.
        """
        if self.commit_sha is None:
            raise GitError("no candidate commit to keep; call commit() first")
        ref = candidate_ref(outcome, self.run, self.step, self.attempt)
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
        return diff(self.repo, self.base, self._result())

    def changed_paths(self) -> list[str]:
        """The paths the candidate commit changes."""
        return changed_paths(self.repo, self.base, self._result())

    def _result(self) -> str:
        if self.commit_sha is None:
            raise GitError("the candidate has no commit yet; call commit() first")
        return self.commit_sha


def _run_env(cwd: Path, args: list[str], stdin: str, env: dict[str, str]) -> None:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if proc.returncode != 0:
        if "nothing to commit" in proc.stdout:  # the index equals HEAD, the candidate's base
            raise EditError("The edits leave every file as it was; there is nothing to commit.")
        detail = proc.stderr.strip().splitlines()
        raise GitError(f"git commit in {cwd}: {detail[-1] if detail else f'exit {proc.returncode}'}")
