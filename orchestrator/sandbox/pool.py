"""Sandboxes started ahead of need, so that a step's tests do not wait for a container.

    with SandboxPool(ws, repo) as pool:
        pool.warm(commit)                                  # start one in the background
        with pool.at(commit, label=...) as (tree, box):    # a fresh checkout of commit, sandboxed
            box.run_tests()

A refinement run asks for a sandbox over a fresh checkout several times: tool agents at a
step's base, tests at each candidate. Starting a container takes about 0.3 s of engine work
that nothing else needs, so the pool keeps one *standby* ready: a scratch worktree of the
repo (``cache/worktrees/sandbox-<repo>-<pid>-<hex>``) with a sandbox started over it, on
which no command has run yet. :meth:`SandboxPool.at` moves that worktree to the commit
asked for (host git in a tree nothing untrusted has touched), checks that the sandbox is
exactly what :func:`~orchestrator.sandbox.base.open_sandbox` would start now (same image, test
environment, limits, environment), and hands it over; a standby that differs is discarded
and a sandbox started there and then. A standby's container starts while git writes its
files (the engine's ~0.3 s and git's tens of ms overlap): its spec is made from the
commit's requirement files as git has them, and that check catches the rare guess the
checkout contradicts (a symlinked requirements file). One background thread prepares standbys and removes
used worktrees; :meth:`SandboxPool.close` waits for it, so a closed pool leaves nothing.

A process killed meanwhile leaves its worktrees, named after its pid: the next pool of the
repo removes them (so does ``converge doctor --clean``), and the engine removes containers
whose stream closed (see ``sandbox_docker``); an orphan never attached is reaped by owner pid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from orchestrator.config import SandboxConfig
from orchestrator.errors import GitError, SandboxError
from orchestrator.sandbox.base import Sandbox, SandboxBackend, SandboxSession, SandboxSpec
from orchestrator.sandbox.env import requirements_at
from orchestrator.sandbox.factory import backend_for, sandbox_spec
from orchestrator.store import gitops, worktrees
from orchestrator.store.workspace import Workspace
from orchestrator.store.worktrees import scratch_worktree, stale_worktrees


@dataclass
class _Standby:
    """A scratch worktree at ``commit`` and a started sandbox over it, no command run yet."""

    path: Path
    commit: str
    spec: SandboxSpec
    session: SandboxSession


class SandboxPool:
    """Sandboxes of one repo over fresh checkouts, one kept started ahead; a context manager."""

    def __init__(
        self,
        ws: Workspace,
        repo: str,
        *,
        backend: SandboxBackend | None = None,
        config: SandboxConfig | None = None,
    ) -> None:
        self.ws = ws
        self.repo = repo
        self.source = ws.repo_path(repo)
        self.cfg = config or ws.config().sandbox
        self._own_backend = backend is None
        self.backend = backend or backend_for(self.cfg)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sandbox-pool-{repo}")
        self._next: Future[_Standby] | None = None
        self._swept = False
        self.closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the public part ---------------------------------------------------------------------

    def warm(self, commit: str) -> None:
        """Start preparing a sandbox over ``commit`` in the background, unless one is on its way."""
        if self._next is None and not self.closed:
            self._next = self._worker.submit(self._prepare, commit)

    @contextlib.contextmanager
    def at(self, commit: str) -> Iterator[tuple[Path, Sandbox]]:
        """A fresh worktree of ``commit`` and a sandbox over it; both go when the block ends."""
        if self.closed:
            raise SandboxError(f"sandbox pool of {self.repo} already closed")
        standby = self._take(commit)
        try:
            yield standby.path, Sandbox(standby.session, standby.spec)
        finally:
            self._retire(standby)

    def close(self) -> None:
        """Dispose of the standby and wait until every used worktree is removed; idempotent."""
        if self.closed:
            return
        self.closed = True
        pending, self._next = self._next, None
        if pending is not None:
            self._worker.submit(self._dispose, pending)
        self._worker.shutdown(wait=True)
        if self._own_backend:
            self.backend.close()

    # --- the parts ---------------------------------------------------------------------------

    def _take(self, commit: str) -> _Standby:
        pending, self._next = self._next, None
        standby = _result(pending) if pending is not None else None
        if standby is None:
            standby = self._prepare(commit)
        if self._serves(standby, commit):
            return standby
        self._retire(standby)  # other requirements at ``commit`` than it was started for, or guessed wrong
        return self._start(commit, exact=True)

    def _serves(self, standby: _Standby, commit: str) -> bool:
        """Move ``standby`` to ``commit``; whether its sandbox is the one open_sandbox would start there now."""
        try:
            self._move(standby, commit)
            return self._same(standby.spec, self._spec(standby.path))
        except (SandboxError, GitError, OSError):
            return False  # discarded; a start in the foreground says why, if it fails too

    def _prepare(self, commit: str) -> _Standby:
        """A scratch worktree of ``commit`` with a sandbox started over it (the worker's job).

        The first one also has what dead processes left removed, after it: listing the
        engine's containers costs ~0.1 s that the first step's tests may be waiting for.
        """
        standby = self._start(commit)
        if not self._swept:
            self._swept = True
            with contextlib.suppress(RuntimeError):  # the pool is closing: the next one sweeps
                self._worker.submit(self._sweep)
        return standby

    def _sweep(self) -> None:
        with contextlib.suppress(SandboxError):  # the engine said why when the standby started, if it is down
            self.backend.reap(self.ws.root)
        for path, source in stale_worktrees(self.ws, self.repo):
            worktrees.remove_worktree(source, path)

    def _start(self, commit: str, exact: bool = False) -> _Standby:
        """A scratch worktree of ``commit`` and a sandbox started over it.

        The container starts (~0.3 s of engine work) while git writes the files: its spec,
        which names the test environment of the repo's declared requirements, is made from
        the commit's requirement files (read from git), and :meth:`_take` checks it against
        the checkout's before use. ``exact``: the files first, the spec from them (the
        fallback when the two differ, e.g. a symlinked requirements file).
        """
        path = scratch_worktree(self.ws, self.repo, commit, fill=exact)
        try:
            if exact:
                spec = self._spec(path)
                session = self.backend.start(spec)
                # starting changed the files' group and mode (their ctime): refresh git's view,
                # so that a move later rewrites only what differs
                gitops.run(path, "update-index", "-q", "--refresh", check=False)
            else:
                spec = self._spec(path, requirements_at(self.source, commit))
                # group-writable files (umask 002) in directories the backend shares first
                session = self.backend.start(spec, fill=lambda: worktrees.fill_worktree(path, commit, umask=0o002))
        except BaseException:
            worktrees.remove_worktree(self.source, path)
            raise
        return _Standby(path, commit, spec, session)

    def _spec(self, tree: Path, requirements: list[str] | None = None) -> SandboxSpec:
        return sandbox_spec(self.ws, self.repo, tree, "standby", self.cfg, self.backend, requirements)

    @staticmethod
    def _same(started: SandboxSpec, wanted: SandboxSpec) -> bool:
        return replace(started, labels={}) == replace(wanted, labels={})

    def _move(self, standby: _Standby, commit: str) -> None:
        """Check ``commit`` out in the standby's worktree: only the paths that differ are written.

        Group-writable files (umask 002) in the group's setgid directories: the sandbox's user
        may write what the checkout brings, as it may write the rest of the worktree.
        """
        if standby.commit == commit:
            return
        gitops.run(standby.path, "checkout", "--quiet", "--force", "--detach", commit, umask=0o002)
        standby.commit = commit

    def _retire(self, standby: _Standby) -> None:
        """Close the sandbox now (the engine removes the container); remove the worktree in the background."""
        standby.session.close()
        if self.closed:
            worktrees.remove_worktree(self.source, standby.path)
        else:
            self._worker.submit(worktrees.remove_worktree, self.source, standby.path)

    def _dispose(self, pending: Future[_Standby]) -> None:
        standby = _result(pending)
        if standby is not None:
            self._retire(standby)  # the pool is closed: the worktree goes now, in this (the worker's) thread


def _result(pending: Future[_Standby]) -> _Standby | None:
    """The standby a background start made, or None if it failed (a start in the foreground will say why)."""
    try:
        return pending.result()
    except (SandboxError, GitError, OSError):
        return None


@contextlib.contextmanager
def pool_for(
    ws: Workspace, repo: str, pool: SandboxPool | None = None, backend: SandboxBackend | None = None
) -> Iterator[SandboxPool]:
    """``pool`` when it serves ``repo``, else a pool of its own for the block."""
    if pool is not None and pool.repo == repo:
        yield pool
        return
    with SandboxPool(ws, repo, backend=backend) as own:
        yield own


@contextlib.contextmanager
def sandbox_at(
    ws: Workspace, repo: str, commit: str, pool: SandboxPool | None = None, backend: SandboxBackend | None = None
) -> Iterator[tuple[Path, Sandbox]]:
    """A fresh worktree of ``commit`` with a sandbox over it: ``pool``'s when it serves ``repo``, else its own pool."""
    with pool_for(ws, repo, pool, backend) as boxes, boxes.at(commit) as found:
        yield found
